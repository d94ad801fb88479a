"""D3PM's discrete-time bound against the exact oracle on random toy laws (docs/maths.md §9): tight with
the exact reverse kernel, valid and O(1/T)-tight with the x0-parameterisation fed the LOO, strictly
looser fed the denoiser, and converging to the continuous-time UDM / MDM bound as T grows."""

import pytest
import torch

import ddlm
from ddlm import exact, losses
from ddlm.processes import D3PM

X = exact.d3pm
LIN = ddlm.LinearSchedule(eps=0.0)


def _random_q(t, k, seed, mask=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.rand(t, k, k, generator=g, dtype=torch.float64) + 0.3 * torch.eye(k, dtype=torch.float64)
    if mask:
        q[:, -1] = 0.0
        q[:, -1, -1] = 1.0
    return q / q.sum(-1, keepdim=True)


CASES = {  # name -> (process, law's K)
    "uniform-K3-T4": lambda: D3PM.uniform(3, 4),
    "uniform-K4-T9": lambda: D3PM.uniform(4, 9, schedule=ddlm.CosineSchedule(eps=0.1)),
    "absorbing-K3-T5": lambda: D3PM.absorbing(3, 5),
    "absorbing-K5-T3": lambda: D3PM.absorbing(5, 3, schedule=ddlm.LinearSchedule(eps=0.2)),
    "gaussian-K4-T6": lambda: D3PM.gaussian(4, 6),
    "band-K4-T5": lambda: D3PM.band(4, 5),
    "user-K4-T3": lambda: D3PM(_random_q(3, 4, seed=0)),
    "user-mask-K3-T4": lambda: D3PM(_random_q(4, 4, seed=1, mask=True)),
}


def _with_prior(p, prior):
    if p.kind != "dense":
        return D3PM(p.family, prior=prior)
    return D3PM(p.family.q, prior=prior, mask=p.mask_id is not None)


@pytest.mark.parametrize("name", sorted(CASES))
def test_single_token_bound_is_exact_with_the_exact_prior(name):
    p = CASES[name]()
    law = exact.random_law(p.vocab_size, 1, seed=3)
    exact_prior = X.log_marginal(law, p, p.steps).exp()
    p = _with_prior(p, exact_prior)
    h = -law.p0.log()
    # the x0-parameterisation fed the exact LOO (for L = 1: p_0 itself) is the exact reverse kernel
    assert torch.allclose(X.bound(law, p, "loo"), h, atol=1e-10)
    assert torch.allclose(X.bound(law, p, reverse_kernel="exact", prior="exact"), h, atol=1e-10)
    assert torch.allclose(exact.elbo(law, p, losses.d3pm_elbo, "loo"), h, atol=1e-10)
    terms = X.bound_terms(law, p, "loo")
    assert float(terms.min()) > -1e-12  # every term is a KL


@pytest.mark.parametrize("name", sorted(CASES))
def test_exact_reverse_kernel_makes_the_bound_tight_for_sequences(name):
    p = CASES[name]()
    law = exact.random_law(p.vocab_size, 2, seed=4)
    assert torch.allclose(X.bound(law, p, reverse_kernel="exact", prior="exact"), -law.p0.log(), atol=1e-10)


@pytest.mark.parametrize("name", sorted(CASES))
def test_x0_bound_fed_the_loo_is_a_valid_bound(name):
    p = CASES[name]()
    law = exact.random_law(p.vocab_size, 2, seed=5)
    b = X.bound(law, p, "loo")
    # it bounds the model's own marginal p_theta(x_0) (the law of the T-step ancestral sampler) per sequence
    model = X.sampler_law(law, p, "loo")
    assert float(model.exp().sum()) == pytest.approx(1.0, abs=1e-10)
    assert float((b + model).min()) > -1e-10
    # and -log p_0 on average (the best factorised kernel is not the exact one for L > 1)
    assert float(((b + law.p0.log()) * law.p0).sum()) > 1e-6
    assert torch.allclose(exact.elbo(law, p, losses.d3pm_elbo, "loo"), b, atol=1e-10)


@pytest.mark.parametrize("make", [lambda t: D3PM.uniform(3, t, schedule=LIN), lambda t: D3PM.absorbing(3, t),
                                  lambda t: D3PM.uniform(4, t, schedule=ddlm.CosineSchedule(eps=0.0))],
                         ids=["uniform-linear", "absorbing", "uniform-cosine"])
def test_the_gap_of_the_loo_fed_bound_halves_each_time_t_doubles(make):
    law = exact.random_law(3 if make(2).vocab_size == 3 else 4, 2, seed=6)
    h = -law.p0.log()
    gaps = []
    for t_steps in (2, 4, 8, 16, 32):  # nested grids: alphabar_n = alpha(n / T) of a fixed schedule
        gaps.append(float(((X.bound(law, make(t_steps), "loo") - h) * law.p0).sum()))
    assert all(g > 0 for g in gaps)
    ratios = [b / a for a, b in zip(gaps[:-1], gaps[1:], strict=True)]
    assert all(0.4 < r < 0.62 for r in ratios), ratios  # like 1/T


def test_fed_the_denoiser_it_is_strictly_looser():
    law = exact.random_law(3, 2, seed=7)
    for p in (D3PM.uniform(3, 8), D3PM.gaussian(3, 8), D3PM(_random_q(6, 3, seed=2))):
        loo, den = X.bound(law, p, "loo"), X.bound(law, p, "denoiser")
        assert float(((den - loo) * law.p0).sum()) > 0.01, p
    # absorbing Q: at a masked position the denoiser is the LOO, and unmasked positions do not move
    p = D3PM.absorbing(3, 8)
    assert torch.allclose(X.bound(law, p, "loo"), X.bound(law, p, "denoiser"), atol=1e-12)


@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
def test_d3pm_bound_converges_to_the_continuous_bound_like_one_over_t(kind):
    law, other = exact.random_law(3, 2, seed=1), exact.random_law(3, 2, seed=5)
    if kind == "uniform":
        cont = ddlm.UniformDiffusion(3, LIN)
        f = lambda x, a, u=None: exact.posterior(other, cont, x, a, leave_one_out=True)  # noqa: E731
        target = exact.elbo(law, cont, losses.udm_elbo, f, level=7)
        make = lambda t: D3PM.uniform(3, t, schedule=LIN)  # noqa: E731
    else:
        cont = ddlm.MaskedDiffusion(3, LIN)
        f = lambda x, a, u=None: exact.posterior(other, cont, x, a)  # noqa: E731
        target = exact.elbo(law, cont, losses.mdm_elbo, f, level=7)
        make = lambda t: D3PM.absorbing(3, t)  # noqa: E731 (alphabar_n = 1 - n/T: the linear schedule)
    diffs = [float((X.bound(law, make(t), f) - target).abs().max()) for t in (8, 16, 32, 64)]
    ratios = [b / a for a, b in zip(diffs[:-1], diffs[1:], strict=True)]
    assert diffs[-1] < 0.1 and all(0.4 < r < 0.6 for r in ratios), (diffs, ratios)
    # with the exact LOO the continuous bound is -log p_0, and the D3PM bound approaches it
    assert float(((X.bound(law, make(64), "loo") + law.p0.log()) * law.p0).sum()) < 0.005


def test_oracle_pieces_are_consistent():
    p = D3PM.gaussian(3, 5)
    law = exact.random_law(3, 2, seed=8)
    for t in (0, 2, 5):
        assert float(X.log_marginal(law, p, t).exp().sum()) == pytest.approx(1.0, abs=1e-12)
    xs = p.exact_states(2).xt
    rev = X.reverse(law, p, xs, 4, 1).exp()
    assert torch.allclose(rev.sum(-1), torch.ones(xs.shape[0], dtype=torch.float64))
    # Bayes: q(x_1 | x_4) q_4(x_4) = q_1(x_1) q(x_4 | x_1)
    m1, m4 = X.log_marginal(law, p, 1).exp(), X.log_marginal(law, p, 4).exp()
    skip = p.cumulative(4, 1)
    fwd = skip[xs[:, None, :], xs[None, :, :]].prod(-1)  # (x_1, x_4)
    assert torch.allclose(rev * m4[:, None], (m1[:, None] * fwd).T, atol=1e-12)
    with pytest.raises(ValueError, match="prior must be 'process' or 'exact'"):
        X.bound(law, p, prior="uniform")
    with pytest.raises(ValueError, match="grid must decrease from T = 5 to 0"):
        X.sampler_law(law, p, "loo", [5, 2, 3, 0])
