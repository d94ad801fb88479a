"""``ddlm.sample`` with default arguments only: the model's declared prediction is used, never a
silent default that contradicts it (docs/maths.md §3, §5)."""

import pytest
import torch

import ddlm
from ddlm import exact

LAW = exact.random_law(3, 3, seed=0)
N = 20_000

CASES = [  # (process, prediction the oracle declares, or None for the process's default)
    (ddlm.MaskedDiffusion(3), None),
    (ddlm.UniformDiffusion(3), None),  # the LOO
    (ddlm.UniformDiffusion(3), "loo"),
    (ddlm.UniformDiffusion(3), "denoiser"),
    (ddlm.AbsorbingUniformDiffusion(3), None),
]


def _mc_level(n: int) -> float:
    """Typical TV between n draws of LAW and LAW itself (a seeded Monte-Carlo reference)."""
    return exact.tv_distance(LAW, LAW.sample(n, generator=torch.Generator().manual_seed(99)))


@pytest.mark.parametrize("process,prediction", CASES, ids=lambda c: getattr(c, "name", c))
def test_sample_with_default_arguments_matches_the_law(process, prediction):
    model = exact.model(LAW, process, prediction)
    x = ddlm.sample(model, process, N, 3, 64, generator=torch.Generator().manual_seed(1))
    tv = exact.tv_distance(LAW, x)
    # the exact oracle with 64 steps is at the Monte-Carlo level; the UDM LOO oracle read as a
    # denoiser (the old default) was at 0.25
    assert tv < 2.5 * _mc_level(N) + 0.01, tv


def test_bare_callable_uses_the_process_default():
    process = ddlm.UniformDiffusion(3)
    oracle = exact.model(LAW, process, "loo")
    bare = lambda xt, t: oracle(xt, t)  # declares nothing  # noqa: E731
    x = ddlm.sample(bare, process, N, 3, 64, generator=torch.Generator().manual_seed(1))
    assert exact.tv_distance(LAW, x) < 2.5 * _mc_level(N) + 0.01
    # the same callable, said to predict the denoiser, samples from the wrong law: the default matters
    y = ddlm.sample(bare, process, N, 3, 64, prediction="denoiser", generator=torch.Generator().manual_seed(1))
    assert exact.tv_distance(LAW, y) > 0.1


def test_a_contradicting_prediction_is_refused():
    process = ddlm.UniformDiffusion(3)
    model = exact.model(LAW, process)  # declares "loo"
    with pytest.raises(ValueError, match="prediction='denoiser' contradicts the model, which declares "
                                         "model.prediction = 'loo'"):
        ddlm.sample(model, process, 4, 3, 4, prediction="denoiser")
    # an explicit prediction equal to the declaration is fine
    ddlm.sample(model, process, 4, 3, 4, prediction="loo")
