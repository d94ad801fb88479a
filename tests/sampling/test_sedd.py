"""SEDD's Euler and Tweedie samplers (ddlm.sampling.sedd) and the score view they consume, against the
exact oracle (docs/maths.md §10.4)."""

import math

import pytest
import torch

import ddlm
from ddlm import conversions as C
from ddlm import exact
from ddlm.processes import MaskedDiffusion, State, UniformDiffusion
from ddlm.sampling.loop import _view
from ddlm.sampling.prediction import Score
from ddlm.sampling.registry import Step
from ddlm.sampling.sedd import absorbing_euler, absorbing_tweedie, uniform_euler, uniform_tweedie

SCH = ddlm.LinearSchedule(eps=0.0)
N = 30_000


def _step_law(fn, x, score_logits, at, as_, k, n=200_000, seed=0):
    """Empirical law of one step from the single position x (shape (1, 1)) over ids 0..k."""
    xs = x.expand(n, 1)
    out = fn(xs, Score(score_logits.expand(n, 1, -1).clone(), xs), at, as_, torch.Generator().manual_seed(seed))
    return torch.bincount(out.flatten(), minlength=k + 1).double() / n


# ---- the score view ---------------------------------------------------------------------------------

def test_score_view_masses_and_draws():
    g = torch.Generator().manual_seed(0)
    k = 5
    ls = torch.randn(3, 4, k, generator=g, dtype=torch.float64)
    x = torch.tensor([[0, 1, 5, 4], [2, 2, 5, 5], [4, 3, 0, 1]])  # 5: a mask (not a data token)
    sc = Score(ls, x)
    data = x < k
    s = ls.exp().clone()
    s[data] = s[data].scatter(-1, x[data].unsqueeze(-1), 1.0)  # s(x^i) = 1 whatever the network says
    total = s.sum(-1)
    assert torch.allclose(sc.log_total(), total.log())
    assert torch.allclose(sc.log_jump(), torch.where(data, (total - 1).log(), total.log()))
    assert torch.allclose(sc.log_at(torch.zeros_like(x)), s[..., 0].log())
    # draws over y != x^i (any y at a mask), proportional to s
    n = 100_000
    xs = torch.full((n, 1), 2)
    one = Score(ls[0, 0].expand(n, 1, k).clone(), xs)
    out = one.draw(torch.ones(n, 1, dtype=torch.bool), torch.Generator().manual_seed(1)).flatten()
    want = ls[0, 0].exp().clone()
    want[2] = 0
    assert torch.allclose(torch.bincount(out, minlength=k).double() / n, want / want.sum(), atol=4e-3)


def test_loop_views_of_a_score_network():
    """A score network read by LOO/denoiser kernels is converted by the process; a score kernel gets
    the score as it is (tempering goes through the temperature view)."""
    law = exact.random_law(3, 3, seed=2)
    udm, mdm = UniformDiffusion(3, SCH), MaskedDiffusion(3, SCH)
    x = torch.randint(3, (6, 3), generator=torch.Generator().manual_seed(0))
    s = exact.score(law, x, 0.4)
    assert torch.allclose(_view(s, x, 0.4, "score", "loo", 1.0, "loo", 1.0, udm).log_probs(), exact.loo(law, x, 0.4),
                          atol=1e-10)
    assert torch.allclose(_view(s, x, 0.4, "score", "denoiser", 1.0, "loo", 1.0, udm).log_probs(),
                          exact.denoiser(law, x, 0.4), atol=1e-10)
    assert _view(s, x, 0.4, "score", "score", 1.0, "loo", 1.0, udm).log_score is s
    logr = exact.loo(law, x, 0.4)
    assert torch.allclose(_view(logr, x, 0.4, "loo", "score", 1.0, "loo", 1.0, udm).log_score, s, atol=1e-10)
    tempered = _view(s, x, 0.4, "score", "score", 0.5, "loo", 1.0, udm).log_score
    assert torch.allclose(tempered, C.loo_to_score((logr / 0.5).log_softmax(-1), x, 0.4), atol=1e-10)
    assert not torch.allclose(tempered, s, atol=1e-3)  # temperature is not ignored
    xm = torch.tensor([[3, 0, 3], [3, 3, 3]])
    sm = exact.score(law, xm, 0.4, mdm)
    d = _view(sm, xm, 0.4, "score", "denoiser", 1.0, "denoiser", 1.0, mdm).log_probs()
    masked = xm == 3
    assert torch.allclose(d[masked], exact.mdm_denoiser(law, xm, 0.4)[masked], atol=1e-10)
    with pytest.raises(ValueError, match="top_p must be 1 for sampler 'sedd_euler'"):
        ddlm.sample(exact.model(law, udm, "score"), udm, 4, 3, 4, sampler="sedd_euler", top_p=0.9)


# ---- one step with the exact score is the exact per-position reverse step --------------------------

@pytest.mark.parametrize("at,as_", [(0.2, 0.5), (0.6, 0.65), (0.3, 1.0)])
def test_uniform_tweedie_with_the_exact_score_is_the_plugin_bridge(at, as_):
    k = 4
    logr = torch.log_softmax(torch.tensor([0.3, -1.0, 0.8, 0.1], dtype=torch.float64), -1)
    x = torch.tensor([[2]])
    s = C.loo_to_score(logr.view(1, 1, k), x, at)
    emp = _step_law(uniform_tweedie, x, s, at, as_, k)[:k]
    rho = at / as_
    r = logr.exp()
    w = (as_ - at) * r + (1 - rho) * (1 - as_) / k
    w[2] += k * at * r[2] + rho - at
    assert torch.allclose(emp, w / w.sum(), atol=4e-3), (emp, w / w.sum())


@pytest.mark.parametrize("at,as_", [(0.2, 0.5), (0.6, 0.65), (0.3, 1.0)])
def test_absorbing_tweedie_with_the_exact_score_is_the_mdm_ancestral_step(at, as_):
    k = 4
    logd = torch.log_softmax(torch.tensor([0.3, -1.0, 0.8, 0.1], dtype=torch.float64), -1)
    s = (logd + math.log(at / (1 - at))).view(1, 1, k)
    emp = _step_law(absorbing_tweedie, torch.tensor([[k]]), s, at, as_, k)
    p = (as_ - at) / (1 - at)
    want = torch.cat([p * logd.exp(), torch.tensor([1 - p], dtype=torch.float64)])
    assert torch.allclose(emp, want, atol=4e-3), (emp, want)


def test_euler_steps_follow_the_rates_held_at_t():
    k, at, as_ = 4, 0.5, 0.55
    dsigma = math.log(as_ / at)
    ls = torch.tensor([0.4, -0.2, 0.0, 1.1], dtype=torch.float64)  # uniform graph: s(x = 2) is 1 anyway
    emp = _step_law(uniform_euler, torch.tensor([[2]]), ls.view(1, 1, k), at, as_, k)[:k]
    want = dsigma / k * ls.exp()
    want[2] = 1 - (want.sum() - want[2])
    assert torch.allclose(emp, want, atol=3e-3), (emp, want)
    emp = _step_law(absorbing_euler, torch.tensor([[k]]), ls.view(1, 1, k), at, as_, k)
    want = torch.cat([dsigma * ls.exp(), torch.tensor([1 - dsigma * ls.exp().sum()], dtype=torch.float64)])
    assert torch.allclose(emp, want, atol=3e-3), (emp, want)


def test_learned_scores_are_clipped_renormalised_and_the_last_step_is_clean():
    k = 4
    # uniform Tweedie: s(z) below (1 - rho) S / K gets weight 0 (clipped)
    ls = torch.tensor([3.0, -4.0, 0.0, 2.0], dtype=torch.float64).view(1, 1, k)
    emp = _step_law(uniform_tweedie, torch.tensor([[2]]), ls, 0.2, 0.3, k, n=50_000)
    assert emp[1] == 0 and emp[0] > 0 and emp[3] > 0
    # absorbing: a score whose mass is too large unmasks surely (renormalised), and at alpha_s = 1 every
    # mask resolves whatever the mass
    big = torch.full((1, 1, k), 5.0, dtype=torch.float64)
    assert _step_law(absorbing_euler, torch.tensor([[k]]), big, 0.2, 0.3, k, n=10_000)[k] == 0
    small = torch.full((1, 1, k), -20.0, dtype=torch.float64)
    for fn in (absorbing_euler, absorbing_tweedie):
        assert _step_law(fn, torch.tensor([[k]]), small, 0.2, 0.3, k, n=10_000)[k] == 1  # mass e^-20: stays
        assert _step_law(fn, torch.tensor([[k]]), small, 0.2, 1.0, k, n=10_000)[k] == 0  # last step: clean


def test_a_single_step_from_alpha_0_is_refused():
    law = exact.random_law(3, 2, seed=0)
    for cls in (UniformDiffusion, MaskedDiffusion):
        proc = cls(3, SCH)
        for sampler in ("sedd_euler", "sedd_tweedie"):
            with pytest.raises(ValueError, match="a SEDD step from alpha_t = 0 to alpha_s = 1 is undefined"):
                ddlm.sample(exact.model(law, proc, "score"), proc, 4, 2, 1, sampler=sampler)


def test_kernels_through_the_registry():
    law = exact.random_law(3, 2, seed=1)
    for cls in (UniformDiffusion, MaskedDiffusion):
        proc = cls(3, ddlm.LinearSchedule(eps=1e-3))
        for sampler in ("sedd_euler", "sedd_tweedie"):
            assert proc.kernels[sampler].consumes == "score"
            a = ddlm.sample(exact.model(law, proc, "score"), proc, 16, 2, 5, sampler=sampler,
                            generator=torch.Generator().manual_seed(3))
            b = ddlm.sample(exact.model(law, proc, "score"), proc, 16, 2, 5, sampler=sampler,
                            generator=torch.Generator().manual_seed(3))
            assert torch.equal(a, b) and int(a.max()) < 3
        fn = proc.kernels["sedd_tweedie"].fn
        st = fn(State(proc.prior((2, 2)).xt), Score(torch.zeros(2, 2, 3), proc.prior((2, 2)).xt),
                Step(t=1.0, alpha_t=0.5, alpha_s=1.0, free=torch.ones(2, 2, dtype=torch.bool)), None)
        assert isinstance(st, State) and int(st.xt.max()) < 3


# ---- convergence to p_0 ------------------------------------------------------------------------------

def _tv(law, proc, prediction, sampler, nfe, seed=0):
    x = ddlm.sample(exact.model(law, proc, prediction), proc, N, law.length, nfe, sampler=sampler,
                    generator=torch.Generator().manual_seed(seed))
    return exact.tv_distance(law, x)


CASES = [(UniformDiffusion, "score"), (UniformDiffusion, "loo"), (MaskedDiffusion, "score"),
         (MaskedDiffusion, "denoiser")]


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["sedd_euler", "sedd_tweedie"])
@pytest.mark.parametrize("cls,prediction", CASES, ids=[f"{c.__name__}-{p}" for c, p in CASES])
def test_tv_falls_to_the_monte_carlo_level_as_steps_grow(cls, prediction, sampler):
    law = exact.random_law(3, 3, seed=7)
    proc = cls(3, SCH)
    tvs = [_tv(law, proc, prediction, sampler, nfe) for nfe in (2, 8, 64)]
    floor = exact.tv_distance(law, law.sample(N, generator=torch.Generator().manual_seed(99)))
    assert tvs[0] > 0.1
    assert tvs[0] > tvs[1] + 0.02 and tvs[1] > tvs[2] + 0.02
    assert tvs[2] < floor + 0.012, (tvs, floor)


def test_tv_falls_with_steps_fast():
    """The fast-tier version: uniform and masked Tweedie with the exact score, 2 vs 32 steps."""
    law = exact.random_law(3, 2, seed=7)
    floor = exact.tv_distance(law, law.sample(N, generator=torch.Generator().manual_seed(99)))
    for cls in (UniformDiffusion, MaskedDiffusion):
        proc = cls(3, SCH)
        coarse, fine = (_tv(law, proc, "score", "sedd_tweedie", nfe) for nfe in (2, 32))
        assert coarse > fine + 0.05 and fine < floor + 0.015, (cls, coarse, fine, floor)
