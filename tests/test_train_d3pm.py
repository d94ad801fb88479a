"""D3PM through the whole library: train, checkpoint, load (the process rebuilt), sample, eval, resume."""

import json

import pytest
import torch

import ddlm
from ddlm.config import load_config
from ddlm.evaluate.bound import nll_bound
from ddlm.runs import load
from ddlm.train import train

TEXT = ("the quick brown fox jumps over the lazy dog. " * 40 + "\n\n") * 3


def _cfg(tmp_path, name, *over):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    base = [f"run_dir={tmp_path / name}", f"data.corpus={corpus}", "data.block_size=16", "model.hidden=32",
            "model.blocks=1", "model.heads=2", "batch_size=8", "max_steps=4", "eval_every=2", "save_every=2",
            "eval_batches=2", "optim.warmup_steps=2", "log_every=1", "process=d3pm", "t_min=0", "d3pm.steps=40",
            "sample_nfe=8"]
    return load_config(None, base + list(over))


@pytest.mark.parametrize("kind,objective", [("uniform", "d3pm_hybrid"), ("absorbing", "d3pm_elbo"),
                                            ("gaussian", "d3pm_cross_entropy")])
def test_train_load_sample_eval(tmp_path, kind, objective):
    cfg = _cfg(tmp_path, kind, f"d3pm.kind={kind}", f"objective={objective}", "d3pm.hybrid_lambda=0.2")
    metrics = train(cfg, progress=False, log=lambda *_: None)
    assert metrics["step"] == 4 and metrics["val_nll"] > 0
    samples = [json.loads(s) for s in (tmp_path / kind / "samples.jsonl").read_text().splitlines()]
    assert len(samples[-1]["samples"]) == 2
    model, proc, tok = load(tmp_path / kind)
    assert isinstance(proc, ddlm.D3PM) and proc.steps == 40 and proc.hybrid_lambda == 0.2
    assert proc.kind == (kind if kind != "gaussian" else "dense")
    x = ddlm.sample(model, proc, 2, 16, 5, generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 16) and int(x.max()) < tok.vocab_size
    result = nll_bound(tmp_path / kind, num_batches=2, batch_size=4)
    assert result["estimator"] == "elbo" and result["nats_per_token"] > 0


def test_resume_refuses_another_d3pm_section(tmp_path):
    train(_cfg(tmp_path, "run"), progress=False, log=lambda *_: None, stop_at=2)
    with pytest.raises(ValueError, match="config key 'd3pm.kind' is 'absorbing' now but 'uniform'"):
        train(_cfg(tmp_path, "run", "d3pm.kind=absorbing"), progress=False, log=lambda *_: None)


def test_eval_estimates_the_discrete_bound_with_its_prior_term():
    """``ddlm eval``'s estimator (antithetic t, n = ceil(t T), T w(n) vb + prior) is unbiased for the exact
    D3PM bound prior_kl + sum_t E[d3pm_vb], here with a prior term that is not zero."""
    from ddlm import exact
    from ddlm.evaluate.bound import CallableModel, model_bound

    law = exact.random_law(3, 3, seed=2)
    p = ddlm.D3PM.uniform(3, 12, schedule=ddlm.CosineSchedule(eps=0.5))
    model = CallableModel(exact.model(law, p, "loo"), p, "loo")
    blocks = law.sample(40_000, generator=torch.Generator().manual_seed(0))
    r = model_bound(model, blocks, batch_size=1000, num_batches=40, seed=3, t_min=0.0)
    terms = exact.d3pm.bound_terms(law, p, "loo")
    want = float((terms.sum(0) * law.p0).sum()) / 3
    assert float((terms[0] * law.p0).sum()) > 0.5  # the prior term counts (alphabar_T = 0.5): 40 SE per token
    assert abs(r["nats_per_token"] - want) < 4 * r["se"], (r["nats_per_token"], want, r["se"])


def test_runs_saved_before_the_d3pm_section_still_resume(tmp_path):
    from ddlm.train import check_resumable

    cfg = load_config(None, ["process=mdm"])
    old = cfg.to_dict()
    del old["d3pm"]  # a config.json written before the section existed
    check_resumable(cfg, old, tmp_path)
    old["d3pm"] = {**old.get("d3pm", {}), "kind": "absorbing"}
    with pytest.raises(ValueError, match="config key 'd3pm.kind' is 'uniform' now but 'absorbing'"):
        check_resumable(cfg, old, tmp_path)
