"""Single reverse steps against exact per-position reverse kernels and invariants."""

import itertools

import pytest
import torch

from ddlm import LinearSchedule, exact
from ddlm.sampling import kernels as K
from ddlm.sampling.prediction import categorical
from ddlm.sampling.remasking import RemaskingSchedule, sigma_max

M = 200_000


def _empirical(tokens, k):
    """(L, k) per-position frequencies of (M, L) tokens."""
    counts = torch.stack([torch.bincount(tokens[:, i], minlength=k) for i in range(tokens.shape[1])])
    return counts.double() / tokens.shape[0]


def test_categorical_is_exact_for_tiny_probabilities():
    logp = torch.log(torch.tensor([[1 - 2e-3, 1e-3, 1e-3]], dtype=torch.float32)).expand(400_000, -1)
    draws = categorical(logp, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=3).double() / draws.numel()
    assert freq[1].item() == pytest.approx(1e-3, abs=2.5e-4) and freq[2].item() == pytest.approx(1e-3, abs=2.5e-4)
    # zero-probability tokens are never drawn
    logp = torch.tensor([[0.0, float("-inf"), 0.0]]).expand(10_000, -1)
    assert not bool((categorical(logp, torch.Generator().manual_seed(1)) == 1).any())


def _audm_exact_marginal(law, x, u, at, as_):
    """Exact p(x_s^i = z | x_t, u) per position by enumerating x_0 and the one-jump path law."""
    k, length = law.vocab_size, law.length
    post = exact.audm_posterior(law, x[None], u[None], at)[0]
    seq = law.sequences
    ll = exact.token_loglik("audm", x[None], seq, torch.tensor([at], dtype=torch.float64), k, noise=u[None]).sum(-1)[0]
    w = (law.p0.log() + ll).exp()
    w = w / w.sum()
    out = torch.zeros(length, k, dtype=torch.float64)
    stay = (1 - as_) / (1 - at)
    for n, x0 in enumerate(seq):
        for i in range(length):
            xi, ui, yi = int(x[i]), int(u[i]), int(x0[i])
            if xi != ui or yi == ui:  # clean and carried over, or clean and equal to u
                out[i, xi] += w[n]
            else:  # jumped by t: still jumped at s w.p. (1 - alpha_s)/(1 - alpha_t)
                out[i, ui] += w[n] * stay
                out[i, yi] += w[n] * (1 - stay)
    assert torch.allclose(post.exp().sum(-1), torch.ones(length, dtype=torch.float64))
    return out


def test_audm_carry_over_equals_exact_reverse_kernel():
    law = exact.random_law(3, 3, seed=4)
    x, u = torch.tensor([0, 2, 1]), torch.tensor([0, 1, 1])  # positions 0 and 2 active
    at, as_ = 0.3, 0.55
    logp = exact.audm_posterior(law, x[None], u[None], at).expand(M, -1, -1)
    xs, us = K.audm_carry_over(x.expand(M, -1), u.expand(M, -1), logp, at, as_, torch.Generator().manual_seed(0))
    assert torch.equal(us, u.expand(M, -1))
    assert torch.allclose(_empirical(xs, 3), _audm_exact_marginal(law, x, u, at, as_), atol=4e-3)


def _audm_joint(law, alpha):
    """Exact law of (x, u) under AUDM at alpha, over all K^L x K^L pairs, for L = 1."""
    k = law.vocab_size
    out = torch.zeros(k, k, dtype=torch.float64)
    for y, x, u in itertools.product(range(k), repeat=3):
        out[x, u] += law.p0[y] / k * (alpha * (x == y) + (1 - alpha) * (x == u))
    return out


@pytest.mark.parametrize("kernel", ["audm_carry_over", "reaudm"])
def test_audm_kernels_keep_the_audm_law(kernel):
    """From (x_t, u) ~ AUDM law at t, one exact step gives (x_s, u_s) ~ AUDM law at s (L = 1)."""
    law = exact.random_law(4, 1, seed=2)
    at, as_ = 0.2, 0.6
    g = torch.Generator().manual_seed(0)
    joint = _audm_joint(law, at).flatten()
    idx = torch.multinomial(joint, M, replacement=True, generator=g)
    x, u = (idx // 4)[:, None], (idx % 4)[:, None]
    logp = exact.audm_posterior(law, x, u, at)
    xs, us = getattr(K, kernel)(x, u, logp, at, as_, g)
    emp = torch.bincount((xs * 4 + us).flatten(), minlength=16).double() / M
    assert 0.5 * (emp - _audm_joint(law, as_).flatten()).abs().sum().item() < 0.01
    if kernel == "reaudm":  # renoising lets clean tokens change again
        assert bool(((x != u) & (xs != x)).any())


def test_udm_bridge_equals_exact_reverse_marginal():
    """Plug-in bridge with the exact LOO: per position, p(x_s^i | x_t) = sum_y d(y) q(x_s^i | x_t^i, y)."""
    law = exact.random_law(3, 3, seed=5)
    x = torch.tensor([1, 1, 0])
    at, as_ = 0.25, 0.6
    k = 3
    d = exact.denoiser(law, x[None], at)[0].exp()
    rho = at / as_
    want = torch.zeros(3, k, dtype=torch.float64)
    for i in range(3):
        for z in range(k):
            for y in range(k):
                q_ts = rho * (int(x[i]) == z) + (1 - rho) / k
                q_s = as_ * (z == y) + (1 - as_) / k
                q_t = at * (int(x[i]) == y) + (1 - at) / k
                want[i, z] += d[i, y] * q_ts * q_s / q_t
    logr = exact.loo(law, x[None], at).expand(M, -1, -1)
    xs = K.udm_bridge(x.expand(M, -1), logr, at, as_, torch.Generator().manual_seed(0))
    assert torch.allclose(_empirical(xs, k), want, atol=4e-3)
    # the D3PM x0-form with the denoiser is the same kernel
    logd = exact.denoiser(law, x[None], at).expand(M, -1, -1)
    xs = K.udm_x0(x.expand(M, -1), logd, at, as_, torch.Generator().manual_seed(1))
    assert torch.allclose(_empirical(xs, k), want, atol=4e-3)
    # the raw denoiser fed to the bridge is not
    xs = K.udm_bridge_raw_denoiser(x.expand(M, -1), logd, at, as_, torch.Generator().manual_seed(2))
    assert (_empirical(xs, k) - want).abs().max() > 0.02


def test_max_coupling_step():
    logd = torch.log(torch.tensor([0.2, 0.5, 0.3])).expand(M, 1, -1)
    x = torch.full((M, 1), 2)
    at, as_ = 0.3, 0.65
    xs = K.max_coupling(x, logd, at, as_, torch.Generator().manual_seed(0))
    stay = (1 - as_) / (1 - at)
    want = (torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64) * (1 - stay)
            + torch.tensor([0, 0, stay], dtype=torch.float64))
    assert torch.allclose(_empirical(xs, 3)[0], want, atol=4e-3)


def test_mdm_ancestral_step():
    logd = torch.log(torch.tensor([0.6, 0.4])).expand(M, 2, -1)
    x = torch.tensor([2, 1]).expand(M, -1)  # position 0 masked (id 2), position 1 unmasked
    xs = K.mdm_ancestral(x, logd, 0.2, 0.6, torch.Generator().manual_seed(0), mask_id=2)
    assert bool((xs[:, 1] == 1).all())
    p = (0.6 - 0.2) / 0.8
    assert torch.allclose(_empirical(xs, 3)[0], torch.tensor([0.6 * p, 0.4 * p, 1 - p], dtype=torch.float64), atol=4e-3)


@pytest.mark.parametrize("frac", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("at,as_", [(0.1, 0.3), (0.5, 0.6), (0.8, 0.95), (0.4, 0.4)])
def test_remdm_keeps_unmasked_fraction_at_alpha_s(at, as_, frac):
    """For every admissible sigma, P(unmasked after the step) = alpha_s (tokens start unmasked w.p. alpha_t)."""
    g = torch.Generator().manual_seed(0)
    sigma = frac * sigma_max(at, as_)
    x = torch.where(torch.rand(M, 4, generator=g) < at, torch.zeros(M, 4, dtype=torch.long), torch.full((M, 4), 3))
    logd = torch.zeros(M, 4, 3)
    xs = K.remdm(x, logd, at, as_, g, mask_id=3, sigma=sigma)
    assert (xs != 3).double().mean().item() == pytest.approx(as_, abs=3e-3)
    if sigma > 0.05:
        assert bool(((x != 3) & (xs == 3)).any())  # remasking happened


def test_remasking_schedules():
    cap = RemaskingSchedule("cap")
    assert cap.eta == 0.008 and cap.sigma(0.5, 0.5, 0.501) == pytest.approx(min(0.008, 0.499 / 0.5))
    assert cap.sigma(0.5, 0.99, 0.999) == pytest.approx(0.001 / 0.99)  # capped at sigma_max
    resc = RemaskingSchedule("rescale")
    assert resc.sigma(0.5, 0.6, 0.7) == pytest.approx(0.015 * 0.3 / 0.6)
    sw = RemaskingSchedule("cap", t_switch=0.3)
    assert sw.sigma(0.5, 0.4, 0.5) == 0.0 and sw.sigma(0.2, 0.4, 0.5) > 0
    loop = RemaskingSchedule("loop")
    sched = LinearSchedule()
    ts = torch.linspace(1, 0, 101, dtype=torch.float64)
    a = loop.alpha(ts, sched)
    assert bool((a[1:] >= a[:-1] - 1e-12).all())  # alpha never decreases along the sampling grid
    inside = (ts > 0.05) & (ts <= 0.55)
    assert torch.allclose(a[inside], torch.full_like(a[inside], 0.9))
    assert a[-1].item() == pytest.approx(1.0)
    assert a[0].item() == pytest.approx(sched.alpha(torch.tensor(1.0, dtype=torch.float64)).item())
    assert loop.sigma(0.3, 0.9, 0.9) == pytest.approx(0.02) and loop.sigma(0.8, 0.5, 0.6) == 0.0
    with pytest.raises(ValueError, match="kind must be one of"):
        RemaskingSchedule("linear")
    with pytest.raises(ValueError, match="eta must lie in"):
        RemaskingSchedule("cap", eta=2.0)


def test_confidence_sets_largest_margins_to_argmax():
    logd = torch.log(torch.tensor([[[0.9, 0.1], [0.5, 0.5], [0.2, 0.8], [0.45, 0.55]]]))
    x = torch.tensor([[1, 0, 0, 0]])
    eligible = torch.ones(1, 4, dtype=torch.bool)
    # margins: pos0 log(.9/.1), pos1 0, pos2 log(.8/.2), pos3 log(.55/.45): top 2 are 0 and 2
    out = K.confidence(x, logd, eligible, torch.tensor([2]))
    assert out.tolist() == [[0, 0, 1, 0]]
    # MDM: masked positions ranked by max probability
    out = K.confidence(torch.tensor([[2, 2, 2, 2]]), logd, eligible, torch.tensor([1]))
    assert out.tolist() == [[0, 2, 2, 2]]


def test_tau_leaping_converges_to_the_law_and_is_not_exact_at_few_steps():
    """The worked example of docs/extending.md: a registered kernel, picked up by ddlm.sample."""
    import ddlm
    from ddlm.sampling.registry import samplers

    law = exact.random_law(3, 3, seed=0)
    proc = ddlm.UniformDiffusion(3)
    assert "tau_leaping" in samplers(proc)
    model = exact.model(law, proc)
    n = 20_000
    floor = exact.tv_distance(law, law.sample(n, generator=torch.Generator().manual_seed(5)))

    def tv(nfe):
        return exact.tv_distance(law, ddlm.sample(model, proc, n, 3, nfe, sampler="tau_leaping",
                                                  generator=torch.Generator().manual_seed(0)))

    coarse, fine = tv(4), tv(256)
    assert coarse > 0.1  # Euler steps are biased when few
    assert fine < 2.0 * floor + 0.005, (fine, floor)  # and the bias vanishes as they shrink


def test_tau_leaping_step_probabilities_match_the_rates():
    """One step from a fixed state: the empirical jump law equals c xbar(y) for y != x."""
    from ddlm.processes import State
    from ddlm.sampling.prediction import Prediction
    from ddlm.sampling.registry import Step
    from ddlm.sampling.tau_leaping import tau_leaping

    k, n = 4, 200_000
    at, as_ = 0.5, 0.55
    logr = torch.log_softmax(torch.tensor([0.3, -1.0, 0.8, 0.1], dtype=torch.float64), -1)
    x = torch.full((n, 1), 2)
    pred = Prediction(logr.expand(n, 1, k).clone(), x)
    g = torch.Generator().manual_seed(0)
    step = Step(t=0.5, alpha_t=at, alpha_s=as_, free=torch.ones_like(x, dtype=torch.bool))
    out = tau_leaping(State(x), pred, step, g)
    emp = torch.bincount(out.xt.flatten(), minlength=k).double() / n
    r = logr.exp()
    xbar = k * at * r + 1 - at
    want = (as_ - at) / (at * k) * xbar / xbar[2]
    want[2] = 1 - (want.sum() - want[2])
    assert torch.allclose(emp, want, atol=4e-3), (emp, want)
