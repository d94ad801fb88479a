"""D3PM's ancestral sampler: one step (and one skipped stretch) has the x0-parameterised kernel's law,
the whole chain has the exact law ``ddlm.exact.d3pm.sampler_law`` computes, and with the exact LOO
its total variation to p_0 falls to the Monte-Carlo level as the steps grow (docs/maths.md §9)."""

import pytest
import torch

import ddlm
from ddlm import exact
from ddlm.processes import D3PM
from ddlm.sampling.d3pm import d3pm_step

X = exact.d3pm
M = 200_000
LIN = ddlm.LinearSchedule(eps=0.0)


def _empirical(tokens, k):
    counts = torch.stack([torch.bincount(tokens[:, i], minlength=k) for i in range(tokens.shape[1])])
    return counts.double() / tokens.shape[0]


@pytest.mark.parametrize("make", [lambda: D3PM.uniform(4, 10), lambda: D3PM.absorbing(4, 10),
                                  lambda: D3PM.gaussian(4, 10), lambda: D3PM.band(4, 10, 2)],
                         ids=["uniform", "absorbing", "gaussian", "band"])
@pytest.mark.parametrize("n_t,n_s", [(6, 5), (9, 2), (3, 0)])
def test_one_step_has_the_kernel_law(make, n_t, n_s):
    p = make()
    g = torch.Generator().manual_seed(n_t)
    xt = torch.tensor([0, 2, p.family.states - 1])
    logits = torch.randn(3, 4, generator=g, dtype=torch.float64)
    want = p.reverse(logits, xt, n_t, n_s).exp()
    draws = d3pm_step(p, xt.expand(M, -1).contiguous(), logits.expand(M, -1, -1), n_t, n_s, g)
    assert torch.allclose(_empirical(draws, p.family.states), want, atol=0.004)
    assert torch.equal(d3pm_step(p, xt[None], logits[None], n_t, n_t, g), xt[None])  # no step, no move


def _sample(law, p, prediction, nfe, n=30_000, seed=0):
    model = exact.model(law, p, prediction)
    return ddlm.sample(model, p, n, law.length, nfe, generator=torch.Generator().manual_seed(seed))


def _floor(law, n=30_000):
    return exact.tv_distance(law, law.sample(n, generator=torch.Generator().manual_seed(99)))


@pytest.mark.parametrize("make", [lambda: D3PM.uniform(3, 16), lambda: D3PM.absorbing(3, 16),
                                  lambda: D3PM.gaussian(3, 16)], ids=["uniform", "absorbing", "gaussian"])
def test_the_sampler_has_the_exact_chain_law(make):
    p = make()
    law = exact.random_law(3, 2, seed=3)
    for nfe in (3, 16):
        grid = p.step_of(torch.linspace(1.0, 0.0, nfe + 1, dtype=torch.float64))
        want = X.sampler_law(law, p, "loo", grid).exp()
        got = torch.bincount(law.index(_sample(law, p, "loo", nfe)), minlength=law.num_states).double() / 30_000
        assert 0.5 * float((got - want).abs().sum()) < 0.02, nfe


@pytest.mark.slow
@pytest.mark.parametrize("make,prediction", [(lambda: D3PM.uniform(3, 256), "loo"),
                                             (lambda: D3PM.uniform(3, 256, schedule=LIN), "denoiser"),
                                             (lambda: D3PM.absorbing(3, 256), "loo"),
                                             (lambda: D3PM.gaussian(3, 256), "loo"),
                                             (lambda: D3PM.band(3, 256), "denoiser")],
                         ids=["uniform", "uniform-denoiser-net", "absorbing", "gaussian", "band-denoiser-net"])
def test_tv_falls_to_the_monte_carlo_level_as_steps_grow(make, prediction):
    p = make()
    law = exact.random_law(3, 3, seed=7)
    tvs = [exact.tv_distance(law, _sample(law, p, prediction, nfe)) for nfe in (1, 4, 256)]
    floor = _floor(law)
    assert tvs[0] > 0.1 and tvs[1] > tvs[2] + 0.02
    assert tvs[2] < floor + 0.012, (tvs, floor)
    # the exact law of the 256-step chain is within 1/T of p_0 (the factorised kernel's gap)
    exact_tv = 0.5 * float((X.sampler_law(law, p, "loo").exp() - law.p0).abs().sum())
    assert exact_tv < 0.01
