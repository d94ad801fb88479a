"""Score entropy (SEDD's DWDSE, ddlm.losses.score_entropy) against the exact oracle (docs/maths.md §10)."""

import functools
import math

import pytest
import torch

from ddlm import conversions as C
from ddlm import exact, losses
from ddlm.processes import AbsorbingUniformDiffusion, MaskedDiffusion, State, UniformDiffusion
from ddlm.schedules import CosineSchedule, LinearSchedule
from ddlm.score_entropy import score_entropy_by_definition

SCH = LinearSchedule(eps=0.0)
PROCS = {"udm": UniformDiffusion, "mdm": MaskedDiffusion}


def _se(proc):
    return functools.partial(losses.score_entropy, process=proc)


def _odds(a):
    return torch.log(a) - torch.log1p(-a)


# ---- tightness with the exact concrete score ---------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 3), (3, 2), (3, 3), pytest.param((4, 3), marks=pytest.mark.slow)],
                         ids=lambda s: f"K{s[0]}L{s[1]}")
@pytest.mark.parametrize("name", ["udm", "mdm"])
def test_integrated_score_entropy_of_the_exact_score_is_minus_log_p0(shape, name):
    law = exact.random_law(*shape, seed=100 * shape[0] + shape[1], concentration=0.7)
    proc = PROCS[name](law.vocab_size, SCH)
    bound = exact.elbo(law, proc, _se(proc), "score")
    assert torch.allclose(bound, -law.p0.log(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["udm", "mdm"])
def test_tight_under_the_cosine_schedule(name):
    law = exact.random_law(3, 2, seed=9)
    proc = PROCS[name](3, CosineSchedule(eps=0.0))
    assert torch.allclose(exact.elbo(law, proc, _se(proc), "score"), -law.p0.log(), atol=1e-6, rtol=0)


def test_the_wrong_graph_is_not_tight():
    """Control: the masked score fed to the uniform graph's rates (and vice versa) is no bound."""
    law = exact.random_law(3, 2, seed=4)
    udm, mdm = UniformDiffusion(3, SCH), MaskedDiffusion(3, SCH)
    wrong = exact.elbo(law, udm, _se(udm), exact.predictor(law, udm, "denoiser"))  # denoiser read as a score
    assert float((wrong + law.p0.log()).abs().max()) > 0.05
    assert float((exact.elbo(law, mdm, _se(mdm), "denoiser") + law.p0.log()).abs().max()) > 0.05


# ---- the same bound in two parameterisations -----------------------------------------------------

def _perturbed(law, proc, prediction, scale=0.7):
    """A deterministic 'model': the exact prediction plus a fixed smooth perturbation of (x_t, alpha, y)."""
    f = exact.predictor(law, proc, prediction)

    def model(x, a, u=None):
        a = torch.as_tensor(a, dtype=torch.float64).reshape(-1)
        y = torch.arange(law.vocab_size, dtype=torch.float64)
        pos = torch.arange(x.shape[-1], dtype=torch.float64)[:, None]
        wiggle = torch.sin(1.3 * x.unsqueeze(-1) + 2.1 * y + 3.0 * a[:, None, None] + pos)
        return torch.log_softmax(f(x, a) + scale * wiggle, dim=-1)

    return model


def test_udm_score_entropy_of_loo_to_score_is_the_plugin_elbo_term_by_term():
    g = torch.Generator().manual_seed(0)
    for k in (2, 5, 40):
        logr = torch.randn(200, 3, k, generator=g, dtype=torch.float64)
        xt, x0 = torch.randint(k, (200, 3), generator=g), torch.randint(k, (200, 3), generator=g)
        x0[:50] = xt[:50]
        a = torch.rand(200, 1, generator=g, dtype=torch.float64) * 0.998 + 0.001
        da = -torch.rand(200, 1, generator=g, dtype=torch.float64) - 0.1
        proc = UniformDiffusion(k)
        se = losses.score_entropy(C.loo_to_score(logr, xt, a), x0, xt, a, da, proc)
        assert torch.allclose(se, losses.udm_elbo(logr, x0, xt, a, da), rtol=1e-9, atol=1e-12)


def test_mdm_score_entropy_of_the_scaled_denoiser_is_the_mdm_elbo_term_by_term():
    g = torch.Generator().manual_seed(1)
    for k in (2, 5, 40):
        logd = torch.log_softmax(torch.randn(200, 3, k, generator=g, dtype=torch.float64), -1)
        xt, x0 = torch.randint(k + 1, (200, 3), generator=g), torch.randint(k, (200, 3), generator=g)
        a = torch.rand(200, 1, generator=g, dtype=torch.float64) * 0.998 + 0.001
        da = -torch.rand(200, 1, generator=g, dtype=torch.float64) - 0.1
        proc = MaskedDiffusion(k)
        se = losses.score_entropy(logd + _odds(a).unsqueeze(-1), x0, xt, a, da, proc)
        assert torch.allclose(se, losses.mdm_elbo(logd, x0, xt, a, da), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("shape", [(3, 2), (2, 3)])
def test_integrated_over_x_t_the_two_parameterisations_agree_for_a_wrong_model(shape):
    """For a model that is not the truth, the integrated score entropy of its score equals the UDM
    plug-in ELBO of its LOO (and the MDM ELBO of its denoiser) for every x_0, and exceeds -log p_0 on
    average (it is a bound, not tight)."""
    law = exact.random_law(*shape, seed=11)
    udm, mdm = UniformDiffusion(shape[0], SCH), MaskedDiffusion(shape[0], SCH)
    r = _perturbed(law, udm, "loo")
    plugin = exact.elbo(law, udm, losses.udm_elbo, r)
    se = exact.elbo(law, udm, _se(udm), lambda x, a, u=None: C.loo_to_score(r(x, a), x, a.reshape(-1, 1)))
    assert torch.allclose(se, plugin, atol=1e-9, rtol=0)
    assert float((law.p0 * plugin).sum()) > law.entropy() + 1e-3
    d = _perturbed(law, mdm, "denoiser")
    elbo = exact.elbo(law, mdm, losses.mdm_elbo, d)
    se = exact.elbo(law, mdm, _se(mdm), lambda x, a, u=None: d(x, a) + _odds(a).reshape(-1, 1, 1))
    assert torch.allclose(se, elbo, atol=1e-9, rtol=0)
    assert float((law.p0 * elbo).sum()) > law.entropy() + 1e-3


def test_mdm_score_entropy_of_any_score_is_the_elbo_of_its_normalisation_plus_a_mass_penalty():
    """l = lambda [phi(log S - log c) - log d(x_0)], d = s / S normalised, c = alpha/(1 - alpha) (§10.2)."""
    g = torch.Generator().manual_seed(2)
    k = 6
    ls = 2 * torch.randn(300, 4, k, generator=g, dtype=torch.float64)
    xt, x0 = torch.randint(k + 1, (300, 4), generator=g), torch.randint(k, (300, 4), generator=g)
    a = torch.rand(300, 1, generator=g, dtype=torch.float64) * 0.99 + 0.005
    da = torch.full_like(a, -1.0)
    got = losses.score_entropy(ls, x0, xt, a, da, MaskedDiffusion(k))
    u = ls.logsumexp(-1) - _odds(a)
    lam = -da / (1 - a)
    want = losses.mdm_elbo(ls, x0, xt, a, da) + torch.where(xt == k, lam * (torch.expm1(u) - u), 0.0)
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-12)


# ---- minimiser -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["udm", "mdm"])
@pytest.mark.parametrize("alpha", [0.2, 0.7])
def test_minimised_over_free_log_scores_by_the_exact_score(name, alpha):
    law = exact.random_law(3, 2, seed=5)
    proc = PROCS[name](3, SCH)
    xt = proc.exact_states(2).xt
    a = torch.full((xt.shape[0],), alpha, dtype=torch.float64)
    # E_{x_0 | x_t}: weights p_0(x_0) q_t(x_t | x_0) over all x_0 (rows: x_t)
    w = torch.softmax(law.p0.log()[None] + proc.token_loglik(xt, law.sequences, a).sum(-1), dim=-1)
    n0, ns = law.num_states, xt.shape[0]
    ls = torch.zeros(ns, 2, 3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([ls], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def objective():
        opt.zero_grad()
        big = ls[None].expand(n0, ns, 2, 3)
        loss = losses.score_entropy(big, law.sequences[:, None].expand(n0, ns, 2), xt[None].expand(n0, ns, 2),
                                    alpha, -1.0, proc).sum(-1)
        total = (w.T * loss).sum()
        total.backward()
        return total

    opt.step(objective)
    truth = exact.score(law, xt, alpha, proc)
    # only the entries the loss sees: y != x^i at data tokens (UDM), masked positions (MDM)
    seen = torch.ones_like(truth, dtype=torch.bool)
    if name == "udm":
        seen.scatter_(-1, xt.unsqueeze(-1), False)
    else:
        seen &= (xt == 3).unsqueeze(-1)
    assert torch.allclose(ls.detach()[seen], truth[seen], atol=1e-5)


# ---- the fused kernel ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["udm", "mdm"])
@pytest.mark.parametrize("k", [2, 5, 40])
@pytest.mark.parametrize("alpha", [1e-3, 0.3, 0.9, 0.999])
def test_fused_value_and_gradient_equal_the_definition(name, k, alpha, monkeypatch):
    import ddlm.score_entropy as S

    monkeypatch.setattr(S, "_CHUNK_ELEMENTS", 3 * k)  # several chunks
    g = torch.Generator().manual_seed(k)
    proc = PROCS[name](k)
    xt = torch.randint(proc.input_vocab_size, (6, 5), generator=g)
    x0 = torch.randint(k, (6, 5), generator=g)
    x0[:2] = xt[:2].clamp(max=k - 1)
    ls = (1.5 * torch.randn(6, 5, k, generator=g, dtype=torch.float64)).requires_grad_()
    da = torch.linspace(-2.0, -0.5, 6, dtype=torch.float64).unsqueeze(-1)
    got = losses.score_entropy(ls, x0, xt, alpha, da, proc)
    (g1,) = torch.autograd.grad(got.sum(), ls)
    want = score_entropy_by_definition(ls, x0, xt, alpha, da, proc)
    (g2,) = torch.autograd.grad(want.sum(), ls)
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)
    assert torch.allclose(g1, g2, rtol=1e-9, atol=1e-12)
    assert bool((got >= 0).all())


@pytest.mark.parametrize("name", ["udm", "mdm"])
def test_the_value_at_the_current_token_and_at_clean_positions_is_ignored(name):
    g = torch.Generator().manual_seed(3)
    k = 5
    proc = PROCS[name](k)
    xt = torch.randint(proc.input_vocab_size, (8, 6), generator=g)
    x0 = torch.randint(k, (8, 6), generator=g)
    ls = torch.randn(8, 6, k, generator=g, dtype=torch.float64)
    base = losses.score_entropy(ls, x0, xt, 0.4, -1.0, proc)
    data = xt < k
    moved = ls.clone()
    moved.scatter_add_(-1, xt.clamp(max=k - 1).unsqueeze(-1), torch.where(data, 5.0, 0.0).unsqueeze(-1).double())
    assert torch.allclose(losses.score_entropy(moved, x0, xt, 0.4, -1.0, proc), base, rtol=1e-12)
    if name == "mdm":
        assert bool((base[data] == 0).all()) and bool((base[~data] > 0).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("alpha", [1e-6, 1e-3, 0.5, 1 - 1e-3, 1 - 1e-6])
def test_low_precision_is_finite_and_tracks_float64(dtype, alpha):
    g = torch.Generator().manual_seed(4)
    for name in ("udm", "mdm"):
        proc = PROCS[name](50)
        xt = torch.randint(proc.input_vocab_size, (4, 8), generator=g)
        x0 = torch.randint(50, (4, 8), generator=g)
        ls64 = torch.randn(4, 8, 50, generator=g, dtype=torch.float64)
        ls = ls64.to(dtype).requires_grad_()
        a = float(torch.tensor(alpha, dtype=torch.float32))  # the time weights are float32 at least
        out = losses.score_entropy(ls, x0, xt, a, -1.0, proc)
        out.sum().backward()
        assert out.dtype == torch.float32 and bool(torch.isfinite(out).all()) and bool(torch.isfinite(ls.grad).all())
        ref = losses.score_entropy(ls.detach().double(), x0, xt, a, -1.0, proc)
        assert torch.allclose(out.double(), ref, rtol=1e-5, atol=1e-6)


# ---- errors and the compute path -------------------------------------------------------------------

def test_named_errors():
    proc = UniformDiffusion(4)
    xt = torch.zeros(2, 3, dtype=torch.long)
    ls = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError,
                       match=r"log_score has shape \(2, 3, 5\): K = 5 columns, expected process.vocab_size = 4"):
        losses.score_entropy(torch.zeros(2, 3, 5), xt, xt, 0.5, -1.0, proc)
    with pytest.raises(ValueError, match=r"log_score has shape \(2, 2, 4\) but xt has shape \(2, 3\)"):
        losses.score_entropy(torch.zeros(2, 2, 4), xt, xt, 0.5, -1.0, proc)
    with pytest.raises(TypeError, match="log_score must be a floating-point tensor"):
        losses.score_entropy(torch.zeros(2, 3, 4, dtype=torch.long), xt, xt, 0.5, -1.0, proc)
    with pytest.raises(ValueError, match="process AUDM has no concrete-score graph"):
        losses.score_entropy(ls, xt, xt, 0.5, -1.0, AbsorbingUniformDiffusion(4))
    with pytest.raises(ValueError, match=r"xt holds token id 4, expected ids in \[0, 3\]"):
        losses.score_entropy(ls, xt, torch.full((2, 3), 4), 0.5, -1.0, proc)
    with pytest.raises(ValueError, match=r"x0 has shape \(2, 2\), expected the shape of xt"):
        losses.score_entropy(ls, xt[:, :2], xt, 0.5, -1.0, proc)
    with pytest.raises(ValueError, match="alpha must lie in"):
        losses.score_entropy(ls, xt, xt, 1.5, -1.0, proc)
    with pytest.raises(ValueError, match="dalpha must be <= 0"):
        losses.score_entropy(ls, xt, xt, 0.5, 1.0, proc)
    # the mask id is a valid x_t for MDM only
    assert losses.score_entropy(ls, xt, torch.full((2, 3), 4), 0.5, -1.0, MaskedDiffusion(4)).shape == (2, 3)


@pytest.mark.parametrize("name", ["udm", "mdm"])
def test_compute_with_a_score_output_equals_converting_first(name):
    g = torch.Generator().manual_seed(6)
    k = 5
    proc = PROCS[name](k)
    xt = torch.randint(proc.input_vocab_size, (4, 6), generator=g)
    x0 = torch.randint(k, (4, 6), generator=g)
    logits = torch.randn(4, 6, k, generator=g, dtype=torch.float64)
    a, da = torch.full((4, 1), 0.35, dtype=torch.float64), torch.full((4, 1), -1.0, dtype=torch.float64)
    for objective in proc.objectives:
        fn, wants = losses.OBJECTIVES[objective]
        for output in proc.network_outputs:
            got = proc.loss(objective, logits, output, x0, State(xt), a, da)
            have, want = proc.view(output), proc.view(wants)
            conv = logits if have == want else proc.convert_view(logits, xt, a, have, want)
            args = (conv, x0) if objective == "cross_entropy" else (conv, x0, xt, a, da)
            ref = fn(*args, proc) if objective == "score_entropy" else fn(*args)
            if objective == "udm_elbo" and output == "denoiser":
                ref = losses.udm_elbo(C.denoiser_to_loo(logits, xt, a), x0, xt, a, da)
            assert torch.allclose(got, ref, atol=1e-12), (objective, output)
    # the output matters: a score read as the denoiser gives another loss
    assert not torch.allclose(proc.loss("score_entropy", logits, "score", x0, State(xt), a, da),
                              proc.loss("score_entropy", logits, proc.default_output, x0,
                                        State(xt), a, da))


def test_mdm_view_conversions():
    g = torch.Generator().manual_seed(7)
    proc = MaskedDiffusion(4)
    xt = torch.randint(5, (3, 5), generator=g)
    logits = torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    s = proc.convert_view(logits, xt, 0.3, "denoiser", "score")
    assert torch.allclose(s.logsumexp(-1), torch.full((3, 5), math.log(0.3 / 0.7), dtype=torch.float64))
    assert torch.allclose(proc.convert_view(s, xt, 0.3, "score", "denoiser"), logits.log_softmax(-1))
    # the exact masked score is the odds times the exact denoiser at masked positions
    law = exact.random_law(4, 5, seed=1)
    a = 0.3
    masked = xt == 4
    truth = exact.score(law, xt, a, proc)
    want = exact.mdm_denoiser(law, xt, a) + math.log(a / (1 - a))
    assert torch.allclose(truth[masked], want[masked], atol=1e-10)
    with pytest.raises(ValueError, match=r"target must be one of \['denoiser', 'score'\] for MDM, got 'loo'"):
        proc.convert_view(logits, xt, 0.3, "score", "loo")
    with pytest.raises(ValueError, match=r"source must be one of \['denoiser'\] for AUDM, got 'score'"):
        AbsorbingUniformDiffusion(4).convert_view(logits, xt.clamp(max=3), 0.3, "score", "denoiser")
