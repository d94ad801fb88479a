"""The restricted reader of torch.save archives: tensors and plain data come back, every other global
becomes an inert record that is reported, and nothing named by the file is ever imported or called."""

import io
import os
import pickle
import zipfile

import pytest
import torch
from _fixtures import ROOT

from ddlm.pretrained.safe_unpickle import (
    CheckpointFormatError,
    Opaque,
    TensorStub,
    UnsafeCheckpointError,
    opaque_to_plain,
    read_torch_archive,
)


class CreatesFile:
    """Unpickling this object calls ``builtins.open(path, "w")``: the file appears iff code from the
    pickle ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class RunsShell:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _lightning_like(path, evil, where="hyper_parameters"):
    ckpt = {"state_dict": {"backbone.vocab_embed.embedding": torch.randn(4, 2)}, "global_step": 7,
            "hyper_parameters": {"config": {"model": {"n_heads": 2}}}}
    if where == "hyper_parameters":
        ckpt["hyper_parameters"]["evil"] = evil
    else:
        ckpt["state_dict"]["backbone.sigma_map.mlp.0.weight"] = evil
    torch.save(ckpt, path)


@pytest.mark.parametrize("cls", [CreatesFile, RunsShell])
def test_a_malicious_object_is_skipped_and_no_code_runs(tmp_path, cls):
    target = tmp_path / "pwned"
    ckpt = tmp_path / "evil.ckpt"
    _lightning_like(ckpt, cls(target))
    assert not target.exists()
    contents = read_torch_archive(ckpt)
    assert not target.exists()  # the reduce was not called
    evil = contents.obj["hyper_parameters"]["evil"]
    assert isinstance(evil, Opaque) and evil.qualname in ("io.open", "posix.system", "os.system")
    assert evil.args[0] == str(target) or str(target) in evil.args[0]  # kept as data, never called
    assert evil.qualname in contents.skipped  # reported by name
    assert contents.obj["state_dict"]["backbone.vocab_embed.embedding"].shape == (4, 2)


def test_the_fixture_is_really_malicious(tmp_path):
    """Control: plain pickle.loads of the object creates the file (so the test above can fail)."""
    target = tmp_path / "pwned"
    pickle.loads(pickle.dumps(CreatesFile(target)))
    assert target.exists()


def test_ddlm_load_refuses_an_arbitrary_object_where_a_tensor_is_needed(tmp_path):
    import ddlm

    target = tmp_path / "pwned"
    ckpt = tmp_path / "evil.ckpt"
    _lightning_like(ckpt, CreatesFile(target), where="state_dict")
    with pytest.raises(UnsafeCheckpointError, match=r"sigma_map.mlp.0.weight.*io.open.*nothing from the file"):
        ddlm.load(ckpt)
    assert not target.exists()


def test_ddlm_load_of_a_real_checkpoint_with_a_malicious_extra_runs_nothing(tmp_path):
    """A genuine MDLM checkpoint with an extra pickled payload loads, warns about what it skipped, and
    the payload never runs."""
    import ddlm
    from ddlm.pretrained import SkippedObjectsWarning

    target = tmp_path / "pwned"
    contents = read_torch_archive(ROOT / "mdlm" / "last.ckpt")
    ckpt = tmp_path / "mdlm_evil.ckpt"
    obj = contents.obj
    # rebuild a plain checkpoint from the safe read (records -> their plain config) plus the payload
    torch.save({"state_dict": obj["state_dict"], "ema": obj["ema"], "global_step": 3,
                "hyper_parameters": {"config": opaque_to_plain(obj["hyper_parameters"]["config"]),
                                     "evil": CreatesFile(target)}}, ckpt)
    with pytest.warns(SkippedObjectsWarning, match="io.open"):
        model, process, tok = ddlm.load(ckpt)
    assert not target.exists()
    assert model.conventions["skipped_globals"] == {"io.open": 1}
    assert process.vocab_size == 37 and tok is None


def test_tensors_plain_data_and_records():
    contents = read_torch_archive(ROOT / "mdlm" / "last.ckpt")
    obj = contents.obj
    assert obj["global_step"] == 0 and obj["pytorch-lightning_version"] == "2.6.6"
    emb = obj["state_dict"]["backbone.vocab_embed.embedding"]
    assert isinstance(emb, torch.Tensor) and emb.shape == (38, 64) and emb.dtype == torch.float32
    assert len(obj["ema"]["shadow_params"]) == 30
    cfg = opaque_to_plain(obj["hyper_parameters"]["config"])
    assert cfg["model"]["n_heads"] == 4 and cfg["parameterization"] == "subs"
    assert "omegaconf.dictconfig.DictConfig" in contents.skipped
    assert "transformers.tokenization_utils_tokenizers.TokenizersBackend" in contents.skipped
    stub = read_torch_archive(ROOT / "mdlm" / "last.ckpt", load_tensors=False).obj
    assert stub["state_dict"]["backbone.vocab_embed.embedding"] == TensorStub((38, 64), torch.float32)


def test_views_share_storage_and_offsets_are_honoured(tmp_path):
    base = torch.arange(12.0)
    torch.save({"a": base[2:8].view(2, 3), "b": base}, tmp_path / "v.pt")
    obj = read_torch_archive(tmp_path / "v.pt").obj
    assert torch.equal(obj["a"], base[2:8].view(2, 3)) and torch.equal(obj["b"], base)


def test_format_errors_are_named(tmp_path):
    legacy = tmp_path / "legacy.ckpt"
    torch.save({"x": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointFormatError, match="legacy torch.save format"):
        read_torch_archive(legacy)
    notorch = tmp_path / "z.ckpt"
    with zipfile.ZipFile(notorch, "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(CheckpointFormatError, match="not a torch.save archive"):
        read_torch_archive(notorch)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_torch_archive(tmp_path / "missing.ckpt")
    # a storage whose bytes do not match its declared size
    good = tmp_path / "g.pt"
    torch.save({"x": torch.zeros(4)}, good)
    bad = tmp_path / "bad.pt"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            zout.writestr(item, data[:8] if item.filename.endswith("/data/0") else data)
    with pytest.raises(CheckpointFormatError, match="holds 8 bytes, expected 4 x 4"):
        read_torch_archive(bad)


def test_codecs_encode_is_latin1_only(tmp_path):
    """protocol 2 pickles bytes through _codecs.encode(s, 'latin1'); any other codec (a module lookup) is refused."""

    class Enc:
        def __reduce__(self):
            import codecs

            return (codecs.encode, ("x", "rot13"))

    data = io.BytesIO()
    torch.save({"e": Enc()}, data)
    path = tmp_path / "enc.pt"
    path.write_bytes(data.getvalue())
    with pytest.raises((UnsafeCheckpointError, CheckpointFormatError), match="latin-1"):
        read_torch_archive(path)
