"""The ``d3pm`` section of run configs: parsing, validation, and the process it builds."""

import pytest
import torch

from ddlm.config import load_config
from ddlm.models.factory import build_model


def _load(*over):
    return load_config(None, ["process=d3pm", "t_min=0", *over])


def test_the_section_builds_the_process():
    cfg = _load("d3pm.kind=absorbing", "d3pm.steps=50", "d3pm.hybrid_lambda=0.5", "objective=d3pm_hybrid",
                "model.hidden=32", "model.blocks=1", "model.heads=2", "data.block_size=8")
    assert cfg.process_options() == {"kind": "absorbing", "steps": 50, "noise_schedule": "d3pm", "hybrid_lambda": 0.5,
                                     "bandwidth": 1}
    model = build_model(cfg, 7)
    p = model.process
    assert (p.kind, p.steps, p.hybrid_lambda, p.mask_id, p.input_vocab_size) == ("absorbing", 50, 0.5, 7, 8)
    assert model.net.config.vocab_size == 8 and model.net.config.output_size == 7
    assert torch.allclose(p.alphas, 1 - torch.arange(51, dtype=torch.float64) / 50)  # D3PM's 1/(T - t + 1)
    matched = build_model(_load("d3pm.kind=uniform", "d3pm.steps=10", "d3pm.noise_schedule=matched", "schedule=cosine",
                                "eps=0.01", "model.hidden=32", "model.blocks=1", "model.heads=2"), 7).process
    assert float(matched.alphas[-1]) == pytest.approx(0.01, abs=1e-12)  # the run's cosine schedule, eps = 0.01
    band = build_model(_load("d3pm.kind=band", "d3pm.steps=5", "d3pm.bandwidth=2", "model.hidden=32",
                             "model.blocks=1", "model.heads=2"), 7).process
    one = build_model(_load("d3pm.kind=band", "d3pm.steps=5", "model.hidden=32", "model.blocks=1",
                            "model.heads=2"), 7).process
    assert not torch.allclose(band.family.dense(), one.family.dense())
    assert load_config(None, ["process=udm"]).process_options() == {}
    assert _load().resolved_objective == "d3pm_elbo"


@pytest.mark.parametrize("over,match", [
    (["d3pm.kind=zigzag"], "config key 'd3pm.kind' is 'zigzag', expected one of"),
    (["d3pm.steps=0"], "config key 'd3pm.steps' is 0, expected an integer >= 1"),
    (["d3pm.noise_schedule=cosine"], "config key 'd3pm.noise_schedule' is 'cosine'"),
    (["d3pm.kind=gaussian", "d3pm.noise_schedule=matched"], "'d3pm' for kind 'gaussian'"),
    (["d3pm.hybrid_lambda=-1"], "config key 'd3pm.hybrid_lambda' is -1.0, expected a number >= 0"),
    (["d3pm.bandwidth=0"], "config key 'd3pm.bandwidth' is 0"),
    (["t_min=0.001"], "config key 't_min' is 0.001, expected 0 for process 'd3pm'"),
    (["objective=udm_elbo"], "config key 'objective' is 'udm_elbo', expected one of"),
    (["d3pm.kindd=uniform"], "unknown config key 'd3pm.kindd'"),
])
def test_bad_sections_get_named_errors(over, match):
    with pytest.raises(ValueError, match=match):
        _load(*over)
