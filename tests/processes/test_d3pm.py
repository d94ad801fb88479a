"""D3PM as a process: schedules, closed forms against the brute-force matrices of ``ddlm.exact.d3pm``,
validation of user matrices, the time <-> step map, corruption, the prior and conversions."""

import math

import pytest
import torch

import ddlm
from ddlm import exact
from ddlm.processes import D3PM, TransitionError, get_process
from ddlm.processes import d3pm_matrices as dm
from ddlm.processes import d3pm_transitions as dt

X = exact.d3pm


def _random_q(t, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.rand(t, k, k, generator=g, dtype=torch.float64) + 0.2 * torch.eye(k, dtype=torch.float64)
    return q / q.sum(-1, keepdim=True)


def _processes():
    return [D3PM.uniform(4, 6), D3PM.absorbing(4, 6), D3PM.uniform(3, 5, schedule=ddlm.CosineSchedule(eps=0.01)),
            D3PM.absorbing(3, 5, schedule=ddlm.LinearSchedule(eps=0.0)), D3PM.gaussian(5, 6), D3PM.band(5, 6, 2),
            D3PM(_random_q(4, 4)), D3PM(_random_q(5, 5, seed=1), mask=True)]


# ---- schedules -------------------------------------------------------------------------------------

def test_uniform_default_is_d3pm_cosine_schedule():
    t_steps = 50
    p = D3PM.uniform(7, t_steps)
    f = [math.cos((n / t_steps + 0.008) / 1.008 * math.pi / 2) for n in range(t_steps + 1)]
    beta = [min(1 - f[n] / f[n - 1], 0.999) for n in range(1, t_steps + 1)]
    q = p.family.dense()
    for n in (1, 10, 49, 50):  # Q_n = (1 - beta) I + beta/K
        assert float(q[n - 1, 0, 1]) == pytest.approx(beta[n - 1] / 7, rel=1e-12)
        assert float(q[n - 1, 3, 3]) == pytest.approx(1 - beta[n - 1] + beta[n - 1] / 7, rel=1e-12)
    assert beta[-1] == 0.999  # the clipped last step
    assert float(p.alphas[-1]) == pytest.approx(math.prod(1 - b for b in beta), rel=1e-10)


def test_absorbing_default_is_one_over_remaining_steps():
    t_steps = 20
    p = D3PM.absorbing(5, t_steps)
    q = p.family.dense()
    for n in (1, 7, 20):
        assert float(q[n - 1, 2, 5]) == pytest.approx(1 / (t_steps - n + 1), rel=1e-12)  # to the mask
        assert float(q[n - 1, 5, 5]) == 1.0  # the mask is absorbing
    assert torch.allclose(p.alphas, 1 - torch.arange(t_steps + 1, dtype=torch.float64) / t_steps, atol=1e-15)
    assert p.mask_id == 5 and p.input_vocab_size == 6 and p.vocab_size == 5
    assert bool((p.prior((3, 4)).xt == 5).all())  # alphabar_T = 0: all masks


def test_matched_schedule_is_the_continuous_alpha_on_the_grid():
    sch = ddlm.CosineSchedule(eps=0.01)
    for p in (D3PM.uniform(4, 8, schedule=sch), D3PM.absorbing(4, 8, schedule=sch)):
        grid = torch.arange(9, dtype=torch.float64) / 8
        assert torch.allclose(p.alphas, sch.alpha(grid), atol=1e-15)


# ---- closed forms and dense matrices against the brute-force oracle ---------------------------------

@pytest.mark.parametrize("idx", range(8))
def test_forward_posterior_reverse_and_products_equal_the_brute_force(idx):
    p = _processes()[idx]
    g = torch.Generator().manual_seed(idx)
    qbar = X.cumulative(p)
    kp, t_steps = p.family.states, p.steps
    x0 = torch.randint(p.vocab_size, (40,), generator=g)
    xt = torch.randint(kp, (40,), generator=g)
    for t in (1, t_steps // 2, t_steps):
        assert torch.allclose(p.forward(x0, t).exp(), qbar[t][x0], atol=1e-12)
        possible = qbar[t][x0, xt] > 0
        got = p.posterior(x0[possible], xt[possible], t).exp()
        assert torch.allclose(got, X.posterior(p, x0[possible], xt[possible], t).exp(), atol=1e-12)
    for s, t in ((0, 1), (1, t_steps), (2, 4), (t_steps - 1, t_steps)):
        want = torch.eye(kp, dtype=torch.float64)
        for n in range(s, t):
            want = want @ p.family.dense()[n]
        assert torch.allclose(p.cumulative(t, s), want, atol=1e-12)
        # the x0-parameterised reverse kernel, written with the products
        logits = torch.randn(40, p.vocab_size, generator=g, dtype=torch.float64)
        r = logits.softmax(-1)
        w = (r @ qbar[s][: p.vocab_size]) * want[:, xt].T
        ok = w.sum(-1) > 0
        got = p.reverse(logits, xt, t, s).exp()
        assert torch.allclose(got[ok], (w / w.sum(-1, keepdim=True))[ok], atol=1e-12)


def test_cumulative_products_of_a_user_matrix_and_their_rows():
    q = _random_q(3, 4, seed=3)
    p = D3PM(q)
    assert torch.allclose(p.cumulative(3), q[0] @ q[1] @ q[2], atol=1e-14)
    assert torch.allclose(p.cumulative(2, 1), q[1], atol=1e-14)
    assert torch.allclose(p.cumulative(1, 1), torch.eye(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="0 <= s <= t <= T = 3"):
        p.cumulative(2, 3)


# ---- user matrices ------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad,match", [
    (torch.eye(3).expand(2, 3, 3).long(), "floating-point tensor"),
    ([[[1.0, 0.0], [0.0, 1.0]]], "floating-point tensor"),
    (torch.eye(3), r"shape \(T, K', K'\)"),
    (torch.ones(2, 3, 4) / 4, r"shape \(T, K', K'\)"),
    (torch.ones(1, 1, 1), r"K' >= 2"),
    (torch.tensor([[[1.2, -0.2], [0.5, 0.5]]]), r"transitions\[0\] \(Q_1\) has entry \[0, 1\] = -0.2"),
    (torch.tensor([[[1.0, 0.0], [0.5, 0.5]], [[0.9, 0.0], [0.5, 0.5]]]), r"transitions\[1\] \(Q_2\) row 0 sums to 0.9"),
    (torch.tensor([[[float("nan"), 1.0], [0.5, 0.5]]]), "non-finite"),
])
def test_bad_transition_matrices_get_named_errors(bad, match):
    with pytest.raises(TransitionError, match=match):
        D3PM(bad)


def test_mask_state_is_inferred_and_can_be_overridden():
    q = D3PM.absorbing(3, 4).family.dense()
    inferred = D3PM(q)
    assert inferred.mask_id == 3 and inferred.vocab_size == 3 and inferred.input_vocab_size == 4
    plain = D3PM(q, mask=False)  # the last state is then a fourth data token
    assert plain.mask_id is None and plain.vocab_size == 4 and plain.input_vocab_size == 4
    assert D3PM(_random_q(2, 4)).mask_id is None
    with pytest.raises(TransitionError, match="K' >= 3"):
        D3PM(torch.eye(2, dtype=torch.float64).expand(2, 2, 2), mask=True)


def test_options_are_validated(monkeypatch):
    q = _random_q(3, 4)
    with pytest.raises(TransitionError, match="prior must be a finite vector of 4"):
        D3PM(q, prior=torch.ones(3) / 3)
    with pytest.raises(TransitionError, match="prior must be non-negative and sum to 1"):
        D3PM(q, prior=torch.tensor([0.5, 0.5, 0.5, -0.5]))
    with pytest.raises(TransitionError, match="step_probs must be positive"):
        D3PM(q, step_probs=torch.tensor([1.0, 0.0, 0.0]))
    with pytest.raises(TransitionError, match="alphas must make alphabar_n strictly decreasing"):
        D3PM(q, alphas=torch.tensor([1.0, 0.5, 0.5, 0.1]))
    with pytest.raises(TransitionError, match="alphas applies to dense transitions only"):
        D3PM.uniform(4, 3, alphas=torch.tensor([1.0, 0.5, 0.2, 0.1]))
    with pytest.raises(ValueError, match="hybrid_lambda must be a finite number >= 0"):
        D3PM(q, hybrid_lambda=-1.0)
    with pytest.raises(TransitionError, match="strictly decreasing"):
        D3PM.uniform(4, 3, schedule=ddlm.LinearSchedule(eps=0.0)).family.__class__(4, torch.log(torch.tensor(
            [1.0, 0.5, 0.5, 0.0], dtype=torch.float64)))
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        D3PM.uniform(4, 0)
    with pytest.raises(ValueError, match="bandwidth must be an integer in"):
        D3PM.band(4, 3, bandwidth=4)
    with pytest.raises(TransitionError, match="connected graph"):
        D3PM.nearest_neighbour(torch.zeros(3, 3), 3)
    monkeypatch.setattr(dt, "DENSE_LIMIT", 100)
    with pytest.raises(TransitionError, match="above the dense limit 100; use D3PM.uniform or D3PM.absorbing"):
        D3PM(_random_q(7, 4))


def test_user_alphas_condition_the_network():
    q = _random_q(3, 4)
    code = torch.tensor([1.0, 0.6, 0.3, 0.05], dtype=torch.float64)
    p = D3PM(q, alphas=code)
    assert torch.equal(p.alpha(torch.tensor([0.0, 0.2, 0.5, 1.0], dtype=torch.float64)), code[[0, 1, 2, 3]])
    default = D3PM(q)  # 1 - (1 - 1e-3) n/T
    assert float(default.alpha(1.0)) == pytest.approx(1e-3, abs=1e-15)


# ---- structured constructors ----------------------------------------------------------------------------

def test_gaussian_matrices_are_d3pm_discretised_gaussians():
    k, t_steps = 6, 4
    p = D3PM.gaussian(k, t_steps)
    q = p.family.dense()
    betas = torch.linspace(0.02, 1.0, t_steps, dtype=torch.float64)
    for n in range(t_steps):
        z = sum(math.exp(-4 * d * d / ((k - 1) ** 2 * float(betas[n]))) for d in range(-(k - 1), k))
        assert float(q[n, 1, 3]) == pytest.approx(math.exp(-4 * 4 / ((k - 1) ** 2 * float(betas[n]))) / z, rel=1e-12)
        assert torch.allclose(q[n], q[n].T) and torch.allclose(q[n].sum(-1), torch.ones(k, dtype=torch.float64))
        off = q[n, 0, 1:]
        assert bool((off[1:] < off[:-1]).all())  # decays with |i - j|
    custom = D3PM.gaussian(k, t_steps, betas=torch.full((t_steps,), 0.5))
    assert not torch.allclose(custom.family.dense(), q)
    assert p.mask_id is None and p.kind == "dense"


def test_band_and_nearest_neighbour_transitions():
    narrow, wide = D3PM.band(6, 10, bandwidth=1), D3PM.band(6, 10, bandwidth=2)
    for p in (narrow, wide):
        q = p.family.dense()
        assert torch.allclose(q.sum(-1), torch.ones(10, 6, dtype=torch.float64)) and float(q.min()) >= 0
        assert torch.allclose(q, q.transpose(1, 2), atol=1e-12)
    # the bandwidth is used: two tokens apart is one move with bandwidth 2, two with bandwidth 1
    assert float(wide.cumulative(1)[0, 2]) > 5 * float(narrow.cumulative(1)[0, 2])
    # the slowest mode follows the cosine alphabar: Qbar_T is nearly uniform
    assert torch.allclose(narrow.cumulative(10), torch.full((6, 6), 1 / 6, dtype=torch.float64), atol=1e-4)
    same = D3PM.nearest_neighbour(dm.band_adjacency(6, 2), 10)
    assert torch.allclose(same.family.dense(), wide.family.dense(), atol=1e-14)


def test_from_options_builds_every_kind():
    sch = ddlm.LinearSchedule(eps=0.0)
    for kind in D3PM.KINDS:
        p = get_process("d3pm", 5, sch, kind=kind, steps=7, hybrid_lambda=0.5)
        assert p.steps == 7 and p.hybrid_lambda == 0.5 and p.vocab_size == 5
    assert get_process("d3pm", 5, sch, kind="absorbing", steps=4).mask_id == 5
    default = get_process("d3pm", 5, sch, kind="uniform", steps=8)
    matched = get_process("d3pm", 5, sch, kind="uniform", steps=8, noise_schedule="matched")
    assert torch.allclose(matched.alphas, 1 - torch.arange(9, dtype=torch.float64) / 8)
    assert not torch.allclose(default.alphas, matched.alphas)
    band2 = get_process("d3pm", 5, sch, kind="band", steps=8, bandwidth=2)
    assert not torch.allclose(band2.family.dense(), get_process("d3pm", 5, sch, kind="band", steps=8).family.dense())
    with pytest.raises(ValueError, match="kind must be one of"):
        get_process("d3pm", 5, sch, kind="zigzag")
    with pytest.raises(ValueError, match="'matched' applies to kinds 'uniform' and 'absorbing'"):
        get_process("d3pm", 5, sch, kind="gaussian", noise_schedule="matched")
    with pytest.raises(ValueError, match="process 'udm' takes no options"):
        get_process("udm", 5, sch, kind="uniform")


# ---- time <-> steps ----------------------------------------------------------------------------------

@pytest.mark.parametrize("t_steps,nfe", [(1000, 1000), (1000, 64), (7, 7), (10, 3), (12, 5)])
def test_sampling_grid_lands_on_the_steps(t_steps, nfe):
    p = D3PM.uniform(3, t_steps)
    grid = torch.linspace(1.0, 0.0, nfe + 1, dtype=torch.float64)
    want = torch.tensor([math.ceil(round((nfe - j) * t_steps / nfe, 9)) for j in range(nfe + 1)])
    assert torch.equal(p.step_of(grid), want)
    assert torch.equal(p.step_of(grid.float()), want)  # float32 grid points too
    assert torch.equal(p.step_of_alpha(p.alpha(grid)), want)


def test_uniform_times_give_uniform_steps_and_step_probs_reweight_them():
    g = torch.Generator().manual_seed(0)
    u = torch.rand(400_000, generator=g, dtype=torch.float64)
    p = D3PM.uniform(3, 8)
    counts = torch.bincount(p.step_of(u), minlength=9).double() / u.numel()
    assert counts[0] == 0 and torch.allclose(counts[1:], torch.full((8,), 1 / 8, dtype=torch.float64), atol=0.003)
    probs = torch.tensor([0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05], dtype=torch.float64)
    q = D3PM.uniform(3, 8, step_probs=probs)
    counts = torch.bincount(q.step_of(u), minlength=9).double() / u.numel()
    assert torch.allclose(counts[1:], probs, atol=0.003)
    assert torch.allclose(q.step_weights[1:], 1 / probs) and torch.allclose(p.step_weights[1:], torch.full((8,), 8.0,
                                                                                                             dtype=torch.float64))


def test_out_of_range_times_and_codes_get_named_errors():
    p = D3PM.uniform(3, 10)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        p.step_of(1.5)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        p.corrupt(torch.zeros(2, 3, dtype=torch.long), -0.1)
    with pytest.raises(ValueError, match="alpha 0.5 is not one of D3PM's step codes"):
        p.step_of_alpha(0.5)
    with pytest.raises(ValueError, match=r"t holds step 11, expected integer steps in \[1, 10\]"):
        p.posterior(torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), 11)
    with pytest.raises(TypeError, match="t must hold integer steps"):
        p.forward(torch.zeros(3, dtype=torch.long), 0.5)


# ---- corruption, prior -----------------------------------------------------------------------------

@pytest.mark.parametrize("idx", [0, 1, 4, 5, 7])
def test_corruption_follows_the_forward_marginal(idx):
    p = _processes()[idx]
    g = torch.Generator().manual_seed(idx)
    n = 200_000
    x0 = torch.randint(p.vocab_size, (n // 4, 4), generator=g)
    t = 0.55
    step = int(p.step_of(t))
    xt = p.corrupt(x0, t, generator=g).xt
    want = p.forward(torch.arange(p.vocab_size), step).exp()
    for y in range(p.vocab_size):
        emp = torch.bincount(xt[x0 == y], minlength=p.family.states).double()
        assert torch.allclose(emp / emp.sum(), want[y], atol=0.01)
    st = p.corrupt(x0[:2], torch.tensor([0.0, 1.0]), generator=g)  # one time per sequence; t = 0 is x_0
    assert torch.equal(st.xt[0], x0[0])


@pytest.mark.parametrize("idx", range(8))
def test_prior_and_its_kl(idx):
    p = _processes()[idx]
    qbar_t = X.cumulative(p)[p.steps][: p.vocab_size]
    want_prior = qbar_t.mean(0)  # the T-step marginal of a uniform x_0
    assert torch.allclose(p.log_prior.exp(), want_prior, atol=1e-12)
    x0 = torch.arange(p.vocab_size)
    kl = (torch.where(qbar_t > 0, qbar_t * (qbar_t.log() - want_prior.log()), torch.zeros_like(qbar_t))).sum(-1)
    assert torch.allclose(p.prior_kl(x0), kl.clamp_min(0), atol=1e-12)
    custom = torch.linspace(1, 2, p.family.states, dtype=torch.float64)
    custom = custom / custom.sum()
    if p.kind != "dense":
        q = D3PM(p.family, prior=custom)
    else:
        q = D3PM(p.family.q, prior=custom, mask=p.mask_id is not None)
    kl2 = (torch.where(qbar_t > 0, qbar_t * (qbar_t.log() - custom.log()), torch.zeros_like(qbar_t))).sum(-1)
    assert torch.allclose(q.prior_kl(x0), kl2, atol=1e-12) and not torch.allclose(kl2, kl)
    draws = q.prior((50_000, 4), generator=torch.Generator().manual_seed(1)).xt
    emp = torch.bincount(draws.flatten(), minlength=p.family.states).double() / draws.numel()
    assert torch.allclose(emp, custom, atol=0.006)


# ---- conversions and the loss entry point ------------------------------------------------------------

@pytest.mark.parametrize("idx", [0, 1, 4, 7])
def test_conversion_maps_the_exact_loo_to_the_exact_denoiser(idx):
    p = _processes()[idx]
    law = exact.random_law(p.vocab_size, 2, seed=idx)
    xs = p.exact_states(2).xt
    for t in (1, 3, p.steps):
        a = p.alphas[t].expand(xs.shape[0])
        d = exact.posterior(law, p, xs, a)
        r = exact.posterior(law, p, xs, a, leave_one_out=True)
        ok = torch.isfinite(d).all(-1)  # (states impossible at step t have no posterior)
        assert ok.any()
        assert torch.allclose(p.convert(r, xs, t, "loo", "denoiser")[ok], d[ok], atol=1e-10)
        back = p.convert(d, xs, t, "denoiser", "loo").exp()
        if p.mask_id is not None:  # absorbing: the LOO is not identified at unmasked positions
            ok = ok & (xs == p.mask_id)
        assert torch.allclose(back[ok], r.exp()[ok], atol=1e-10)


def test_loss_needs_t_and_converts_a_denoiser_output():
    p = D3PM.gaussian(4, 6)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(4, (3, 5), generator=g)
    t = torch.tensor([0.2, 0.6, 1.0], dtype=torch.float64)
    st = p.corrupt(x0, t, generator=g)
    logits = torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    with pytest.raises(ValueError, match="t is required for D3PM"):
        p.loss("d3pm_elbo", logits, "loo", x0, st, 0.5, -1.0)
    n = p.step_of(t)[:, None]
    got = p.loss("d3pm_elbo", logits, "denoiser", x0, st, 0.5, -1.0, t=t)
    want = ddlm.losses.d3pm_elbo(p.convert(logits, st.xt, n, "denoiser", "loo"), x0, st.xt, n, p)
    assert torch.allclose(got, want, atol=1e-12)
    assert not torch.allclose(got, p.loss("d3pm_elbo", logits, "loo", x0, st, 0.5, -1.0, t=t))
    with pytest.raises(ValueError, match="objective must be one of"):
        p.loss("udm_elbo", logits, "loo", x0, st, 0.5, -1.0, t=t)
    with pytest.raises(ValueError, match="is per integer step"):
        ddlm.losses.compute("d3pm_elbo", logits, output="loo", x0=x0, xt=st.xt, alpha=0.5, dalpha=-1.0)
