"""Loading runs for evaluation (ddlm.evaluate.results): released checkpoints wherever a run is taken,
with their conventions in the run description, the weights choice, and the tokenizer they need."""

import warnings

import pytest
import torch
from _pretrained import GPT2_LIKE, GPT2_LIKE_37, MDLM, SEDD_ABSORB_HF, SEDD_UNIFORM, UDM_LOO

from ddlm.evaluate.results import LoadedRun, load_run, run_info
from ddlm.pretrained import ImportedModel

pytestmark = pytest.mark.filterwarnings("ignore::ddlm.pretrained.SkippedObjectsWarning")


@pytest.mark.parametrize("path,process,output", [(MDLM, "mdm", "denoiser"), (UDM_LOO, "udm", "loo"),
                                                 (SEDD_UNIFORM, "udm", "score"), (SEDD_ABSORB_HF, "mdm", "score")])
def test_run_info_of_released_checkpoints(path, process, output):
    info = run_info(path)
    assert info["run"] == info["checkpoint"] == str(path) and info["config"] is None
    assert info["process"] == process and info["model_output"] == output
    assert info["imported"]["t_min"] == 1e-3 and info["step"] in (0, 1000, None)


def test_load_run_of_a_released_checkpoint():
    run = load_run(MDLM)
    assert isinstance(run, LoadedRun) and run.imported and not run.autoregressive
    assert run.block_size == run.sample_length == 16 and run.t_min == 1e-3 and run.eval_batch_size == 32
    assert run.info["weights"] == "ema" and run.info["imported"]["family"] == "mdlm"
    assert run.info["imported"]["weights"] == "ema" and run.tokenizer.bos_id == 36
    raw = load_run(MDLM, weights="raw")
    assert raw.info["weights"] == "raw" and raw.info["imported"]["weights"] == "raw"
    assert not torch.equal(raw.model.net.vocab_embed.embedding, run.model.net.vocab_embed.embedding)


def test_a_checkpoint_without_a_tokenizer_needs_one():
    with pytest.raises(ValueError, match=r"pass --tokenizer gpt2 or --tokenizer FILE.json"):
        load_run(UDM_LOO)
    run = load_run(UDM_LOO, tokenizer=GPT2_LIKE)
    assert run.tokenizer.encode("t4") == [4]
    sedd = load_run(SEDD_UNIFORM, tokenizer=GPT2_LIKE_37)
    assert isinstance(sedd.model, ImportedModel) and sedd.model.prediction == sedd.info["model_output"] == "score"


def test_ddlm_runs_still_load_and_refuse_a_tokenizer():
    import ddlm

    ref = ddlm.__path__[0] + "/reference/demo-mdm"
    run = load_run(ref)
    assert not run.imported and run.info["weights"] == "ema" and run.block_size == run.config.data.block_size
    with pytest.raises(ValueError, match="apply to imported checkpoints"):
        load_run(ref, tokenizer=GPT2_LIKE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a ddlm run is read without any pickle: nothing to warn about
        load_run(ref, weights="raw")


def test_default_eval_batch_of_long_imported_models():
    from types import SimpleNamespace

    def run(length):
        model = SimpleNamespace(net=SimpleNamespace(config=SimpleNamespace(max_len=length)), process=object())
        return LoadedRun(model, object(), None, None, {"imported": {"t_min": 1e-3}})

    assert [run(n).eval_batch_size for n in (16, 128, 1024, 20000)] == [32, 32, 8, 1]
