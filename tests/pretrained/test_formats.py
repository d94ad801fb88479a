"""Which paths are released checkpoints, and the named errors of layouts ddlm cannot map: unknown
prefixes, missing and unexpected keys, shape mismatches and wrong vocabulary sizes."""

import json
import shutil

import pytest
import torch
from _fixtures import ROOT, load
from safetensors.torch import load_file, save_file

import ddlm
from ddlm.pretrained import PretrainedFormatError, is_pretrained
from ddlm.pretrained.formats import detect_format, read_source, split_prefix


def _hf_copy(tmp_path, family="mdlm", edit=None, config_edit=None):
    folder = tmp_path / f"{family}-hf"
    shutil.copytree(ROOT / family / "hf", folder)
    state = load_file(str(folder / "model.safetensors"))
    if edit is not None:
        state = edit(state)
        save_file(state, str(folder / "model.safetensors"))
    if config_edit is not None:
        cfg = json.loads((folder / "config.json").read_text())
        config_edit(cfg)
        (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_detect_format(tmp_path):
    assert detect_format(ROOT / "mdlm" / "hf") == "hf"
    assert detect_format(ROOT / "mdlm" / "last.ckpt") == "lightning"
    assert detect_format(ROOT / "sedd_absorb" / "run" / "checkpoints-meta" / "checkpoint.pth") == "sedd"
    assert detect_format(ROOT / "sedd_absorb" / "run") == "sedd"
    assert detect_format(ROOT / "mdlm") is None  # a folder of files, none of the layouts
    (tmp_path / "x.pth").write_bytes(b"")  # a .pth without its run's .hydra/config.yaml
    assert detect_format(tmp_path / "x.pth") is None
    # a ddlm checkpoint folder also holds config.json + model.safetensors, but meta.json makes it ddlm's
    ddlm_ckpt = tmp_path / "ckpt"
    shutil.copytree(ROOT / "mdlm" / "hf", ddlm_ckpt)
    (ddlm_ckpt / "meta.json").write_text("{}")
    assert not is_pretrained(ddlm_ckpt)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_source(tmp_path / "nothing.ckpt")


def test_the_sedd_run_folder_and_its_checkpoint_load_the_same():
    a, _, _ = load("sedd_absorb", "run")
    b, _, _ = load("sedd_absorb", "run/checkpoints-meta/checkpoint.pth")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_prefixes():
    state = {"diffusion.model.backbone.vocab_embed.embedding": 1, "diffusion.model.backbone.blocks.0.x": 2, "opt": 3}
    prefix, inside, other = split_prefix(state, "here")
    assert prefix == "diffusion.model.backbone." and set(inside) == {"vocab_embed.embedding", "blocks.0.x"}
    assert other == ["opt"]
    with pytest.raises(PretrainedFormatError, match=r"unknown key prefix 'net\.' \(key 'net.vocab_embed.embedding'\)"):
        split_prefix({"net.vocab_embed.embedding": 1}, "here")
    with pytest.raises(PretrainedFormatError, match="missing key 'vocab_embed.embedding'"):
        split_prefix({"backbone.embed.weight": 1}, "here")


def test_unknown_prefix_in_a_folder(tmp_path):
    folder = _hf_copy(tmp_path, edit=lambda s: {k.replace("backbone.", "encoder.", 1): v for k, v in s.items()})
    with pytest.raises(PretrainedFormatError, match=r"unknown key prefix 'encoder\.'.*encoder.vocab_embed.embedding"):
        ddlm.load(folder)


def test_missing_and_unexpected_keys_name_the_key_and_shape(tmp_path):
    folder = _hf_copy(tmp_path, edit=lambda s: {k: v for k, v in s.items() if "blocks.1.attn_out" not in k})
    with pytest.raises(PretrainedFormatError,
                       match=r"missing key 'backbone.blocks.1.attn_out.weight'; expected a tensor of shape \(64, 64\)"):
        ddlm.load(folder)
    folder = _hf_copy(tmp_path / "b", edit=lambda s: dict(s, **{"backbone.extra.weight": torch.zeros(3, 2)}))
    with pytest.raises(PretrainedFormatError, match=r"unexpected key 'backbone.extra.weight' with shape \(3, 2\)"):
        ddlm.load(folder)


def test_shape_mismatch_names_the_key_and_both_shapes(tmp_path):
    def grow(state):
        state["backbone.blocks.0.mlp.0.weight"] = torch.zeros(200, 64)
        return state

    with pytest.raises(PretrainedFormatError, match=r"key 'backbone.blocks.0.mlp.0.weight' has shape \(200, 64\), "
                                                    r"expected \(256, 64\)"):
        ddlm.load(_hf_copy(tmp_path, edit=grow))
    # a config that disagrees with the weights: the config's dimensions are the expected ones
    folder = _hf_copy(tmp_path / "c", config_edit=lambda c: c.update(hidden_dim=96, n_heads=4))
    with pytest.raises(PretrainedFormatError, match=r"key 'backbone.vocab_embed.embedding' has shape \(38, 64\), "
                                                    r"expected \(38, 96\)"):
        ddlm.load(folder)


def test_wrong_vocabulary_sizes(tmp_path):
    folder = _hf_copy(tmp_path, config_edit=lambda c: c.update(vocab_size=50))
    with pytest.raises(PretrainedFormatError,
                       match=r"vocab_embed.embedding' has shape \(38, 64\), expected \(50, 64\)"):
        ddlm.load(folder)
    sedd = tmp_path / "sedd"
    shutil.copytree(ROOT / "sedd_uniform" / "run", sedd)
    cfg = (sedd / ".hydra" / "config.yaml").read_text().replace("tokens: 37", "tokens: 40")
    (sedd / ".hydra" / "config.yaml").write_text(cfg)
    with pytest.raises(PretrainedFormatError,
                       match=r"'vocab_embed.embedding' has shape \(37, 64\), expected \(40, 64\)"):
        ddlm.load(sedd)
    # a tokenizer with more ids than the model has rows is not the model's
    with pytest.raises(ValueError, match="tokenizer has 38 ids but the model's vocab_embed.embedding has 37 rows"):
        load("sedd_uniform", "hf", tokenizer=ROOT / "gpt2_like_tokenizer.json")
    # nor one that cannot decode every state of the process (DUO's [PAD] is a uniform state)
    with pytest.raises(ValueError, match=r"tokenizer has 37 ids but the process samples K = 38 tokens \(duo"):
        load("duo", "last.ckpt", tokenizer=ROOT / "gpt2_like_tokenizer_37.json")


def test_ema_list_errors(tmp_path):
    from ddlm.pretrained.safe_unpickle import opaque_to_plain, read_torch_archive

    obj = read_torch_archive(ROOT / "duo" / "last.ckpt").obj
    base = {"state_dict": obj["state_dict"], "hyper_parameters": {"config": opaque_to_plain(obj["hyper_parameters"]
                                                                                          ["config"])}}
    short = tmp_path / "short.ckpt"
    torch.save(dict(base, ema={"shadow_params": obj["ema"]["shadow_params"][:-1]}), short)
    with pytest.raises(PretrainedFormatError, match="shadow_params holds 29 tensors, expected one per backbone "
                                                    r"parameter \(30\)"):
        ddlm.load(short)
    swapped = tmp_path / "swapped.ckpt"
    sp = list(obj["ema"]["shadow_params"])
    sp[0], sp[1] = sp[1], sp[0]
    torch.save(dict(base, ema={"shadow_params": sp}), swapped)
    with pytest.raises(PretrainedFormatError,
                       match=r"entry for 'backbone.vocab_embed.embedding' has shape \(32, 256\), expected \(38, 64\)"):
        ddlm.load(swapped)
    # raw weights of the same file still load, and a file without EMA says so
    model, _, _ = ddlm.load(swapped, "raw")
    assert model.conventions["weights"] == "raw"
    noema = tmp_path / "noema.ckpt"
    torch.save(base, noema)
    assert ddlm.load(noema)[0].conventions["weights"] == "raw (the file holds no EMA weights)"


def test_unknown_families_are_named(tmp_path):
    folder = _hf_copy(tmp_path, config_edit=lambda c: c.update(model_type="bd3lm"))
    with pytest.raises(PretrainedFormatError, match="model_type 'bd3lm' is not a family ddlm imports"):
        ddlm.load(folder)
    from ddlm.pretrained.safe_unpickle import opaque_to_plain, read_torch_archive

    obj = read_torch_archive(ROOT / "mdlm" / "last.ckpt").obj
    cfg = opaque_to_plain(obj["hyper_parameters"]["config"])
    cfg["parameterization"] = "ar"  # MDLM's autoregressive baseline: not a diffusion model
    odd = tmp_path / "odd.ckpt"
    torch.save({"state_dict": obj["state_dict"], "hyper_parameters": {"config": cfg}}, odd)
    with pytest.raises(PretrainedFormatError, match="cannot tell the family from its config"):
        ddlm.load(odd)
    # an MDLM release whose mask is its tokenizer's [MASK] (LM1B/BERT) is refused, not misread
    cfg["parameterization"] = "subs"
    cfg["data"]["tokenizer_name_or_path"] = "bert-base-uncased"
    bert = tmp_path / "bert.ckpt"
    torch.save({"state_dict": obj["state_dict"], "hyper_parameters": {"config": cfg}}, bert)
    with pytest.raises(PretrainedFormatError, match=r"\[MASK\] token .* not the last row"):
        ddlm.load(bert)


def test_weights_argument(tmp_path):
    with pytest.raises(ValueError, match="weights must be 'ema' or 'raw', got 'best'"):
        ddlm.load(ROOT / "mdlm" / "hf", "best")
    # a folder with one set ignores the choice
    a, _, _ = load("mdlm", "hf", "raw")
    b, _, _ = load("mdlm", "hf", "ema")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert "only set" in a.conventions["weights"]
    # the Lightning file holds both: they differ, and ema=False is the older spelling of weights="raw"
    raw, _, _ = load("mdlm", "last.ckpt", "raw")
    old, _, _ = load("mdlm", "last.ckpt", ema=False)
    ema, _, _ = load("mdlm", "last.ckpt")
    assert torch.equal(raw.net.vocab_embed.embedding, old.net.vocab_embed.embedding)
    assert not torch.equal(raw.net.vocab_embed.embedding, ema.net.vocab_embed.embedding)
    assert torch.equal(ema.net.vocab_embed.embedding, a.net.vocab_embed.embedding)  # hf/ holds the EMA weights
    assert raw.conventions["weights"] == "raw" and ema.conventions["weights"] == "ema"
    with pytest.raises(ValueError, match="contradicts"):
        ddlm.load(ROOT / "mdlm" / "last.ckpt", "raw", ema=True)


def test_only_the_weights_of_a_checkpoint_are_read(tmp_path):
    """Optimizer state (twice the weights in a real training checkpoint) is never read: corrupting its
    bytes does not matter to ddlm.load, while a full read of the archive would fail on them."""
    import zipfile

    from ddlm.pretrained.safe_unpickle import CheckpointFormatError, opaque_to_plain, read_torch_archive

    obj = read_torch_archive(ROOT / "duo" / "last.ckpt").obj
    full = tmp_path / "full.ckpt"
    torch.save({"state_dict": obj["state_dict"], "ema": obj["ema"], "optimizer_states": [{"m": torch.ones(1000)}],
                "hyper_parameters": {"config": opaque_to_plain(obj["hyper_parameters"]["config"])}}, full)
    stub = read_torch_archive(full, load_tensors=False).obj["optimizer_states"][0]["m"]
    cut = tmp_path / "cut.ckpt"
    with zipfile.ZipFile(full) as zin, zipfile.ZipFile(cut, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            zout.writestr(item, data[:10] if item.filename.endswith(f"/data/{stub.storage}") else data)
    with pytest.raises(CheckpointFormatError, match=f"storage '{stub.storage}' holds 10 bytes"):
        read_torch_archive(cut)
    model, process, _ = ddlm.load(cut)
    assert process.vocab_size == 38 and model.conventions["weights"] == "ema"


@torch.no_grad()
def test_pytorch_model_bin_and_sharded_safetensors_folders(tmp_path):
    """The other Hugging Face weight files: pytorch_model.bin (a torch.save pickle, read by the restricted
    reader) and a sharded model.safetensors.index.json give the same model as model.safetensors."""
    from _fixtures import io

    ref, _, _ = load("udlm", "hf")
    state = load_file(str(ROOT / "udlm" / "hf" / "model.safetensors"))
    binary = tmp_path / "bin"
    binary.mkdir()
    shutil.copy(ROOT / "udlm" / "hf" / "config.json", binary / "config.json")
    torch.save(state, binary / "pytorch_model.bin")
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    shutil.copy(ROOT / "udlm" / "hf" / "config.json", sharded / "config.json")
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[:10], "model-00002-of-00002.safetensors": keys[10:]}
    for name, part in shards.items():
        save_file({k: state[k] for k in part}, str(sharded / name))
    (sharded / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: name for name, part in shards.items() for k in part}}))
    d = io("udlm")
    want = ref.raw(d["x"], d["t"])
    for folder in (binary, sharded):
        assert detect_format(folder) == "hf"
        model, process, _ = ddlm.load(folder)
        assert torch.equal(model.raw(d["x"], d["t"]), want) and process.vocab_size == 41
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {keys[0]: "../x.safetensors"}}))
    with pytest.raises(PretrainedFormatError, match="is not a file name in the folder"):
        ddlm.load(sharded)
