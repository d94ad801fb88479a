import pytest
import torch

from ddlm import conversions as C
from ddlm import exact, losses
from ddlm.schedules import CosineSchedule


def _nll(law):
    return -law.p0.log()


# ---- tightness and looseness of the integrated bounds ----------------------------------------

def test_udm_plugin_elbo_with_exact_loo_is_tight(law):
    bound = exact.elbo(law, "udm", losses.udm_elbo, prediction="loo")
    assert torch.allclose(bound, _nll(law), atol=1e-6, rtol=0)


def test_udm_plugin_elbo_tight_under_cosine_schedule():
    law = exact.random_law(3, 2, seed=9)
    bound = exact.elbo(law, "udm", losses.udm_elbo, schedule=CosineSchedule(eps=0.0))
    assert torch.allclose(bound, _nll(law), atol=1e-6, rtol=0)


def test_udm_plugin_elbo_with_exact_denoiser_is_strictly_looser(law):
    bound = exact.elbo(law, "udm", losses.udm_elbo, prediction="denoiser")
    gap = float((law.p0 * bound).sum()) - law.entropy()
    assert gap > 0.05  # strictly larger than H(p_0) in expectation
    # per sequence it can be on either side of -log p_0: it is not a bound for each x_0
    assert bool(((bound - _nll(law)) < 0).any())


def test_mdm_elbo_with_exact_denoiser_is_tight(law):
    bound = exact.elbo(law, "mdm", losses.mdm_elbo)
    assert torch.allclose(bound, _nll(law), atol=1e-6, rtol=0)


def test_max_coupling_elbo_is_valid_but_not_tight(law):
    bound = exact.elbo(law, "udm", losses.max_coupling_elbo, prediction="denoiser")
    assert float((law.p0 * bound).sum()) > law.entropy() + 0.05
    assert bool((bound > _nll(law)).all())


@pytest.mark.parametrize("shape", [(2, 3), (3, 2), (3, 3)])
def test_audm_elbo_averaged_over_noise_is_tight(shape):
    law = exact.random_law(*shape, seed=sum(shape))
    bound = exact.elbo(law, "audm", losses.audm_elbo)
    assert torch.allclose(bound, _nll(law), atol=1e-6, rtol=0)


# ---- minimisers over free logits ---------------------------------------------------------------

def _posterior_over_x0(law, xt, alpha, process="udm"):
    a = torch.tensor([alpha], dtype=torch.float64)
    ll = exact.token_loglik(process, xt[None], law.sequences, a, law.vocab_size).sum(-1)[0]
    w = law.p0.log() + ll
    return (w - torch.logsumexp(w, 0)).exp()  # (K^L,)


def _minimise(objective, law, xt, alpha, process="udm"):
    """argmin over free per-position logits of E_{x_0 | x_t} sum_i l(logits, x_0, x_t)."""
    post = _posterior_over_x0(law, xt, alpha, process)
    x0 = law.sequences
    n = x0.shape[0]
    theta = torch.zeros(law.length, law.vocab_size, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([theta], lr=1, max_iter=500, tolerance_grad=1e-14, tolerance_change=1e-16,
                            history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = theta[None].expand(n, -1, -1)
        loss = objective(logits, x0, xt[None].expand(n, -1)).sum(-1)
        f = (post * loss).sum()
        f.backward()
        return f

    for _ in range(3):
        opt.step(closure)
    return theta.detach().log_softmax(-1)


@pytest.mark.parametrize("alpha", [0.1, 0.5, 0.9])
def test_minimisers(alpha):
    law = exact.random_law(3, 3, seed=11)
    xt = torch.tensor([2, 0, 1])
    dalpha = -1.0
    r = exact.loo(law, xt[None], alpha)[0]
    d = exact.denoiser(law, xt[None], alpha)[0]
    got = _minimise(lambda lp, x0, x: losses.udm_elbo(lp, x0, x, alpha, dalpha), law, xt, alpha)
    assert torch.allclose(got.exp(), r.exp(), atol=1e-6), "plug-in ELBO is minimised by the LOO"
    assert not torch.allclose(got.exp(), d.exp(), atol=1e-2)
    got = _minimise(lambda lp, x0, x: losses.cross_entropy(lp, x0), law, xt, alpha)
    assert torch.allclose(got.exp(), d.exp(), atol=1e-6), "cross-entropy is minimised by the denoiser"
    got = _minimise(lambda lp, x0, x: losses.max_coupling_elbo(lp, x0, x, alpha, dalpha), law, xt, alpha)
    assert torch.allclose(got.exp(), d.exp(), atol=1e-6), "max-coupling ELBO is minimised by the denoiser"


def test_mdm_minimiser_is_the_denoiser_on_masked_positions():
    law = exact.random_law(3, 3, seed=12)
    xt = torch.tensor([3, 0, 3])
    got = _minimise(lambda lp, x0, x: losses.mdm_elbo(lp, x0, x, 0.4, -1.0), law, xt, 0.4, process="mdm")
    d = exact.mdm_denoiser(law, xt[None], 0.4)[0]
    for i in (0, 2):
        assert torch.allclose(got[i].exp(), d[i].exp(), atol=1e-6)


def test_masked_cross_entropy_is_the_unweighted_mdm_elbo_and_minimised_by_the_denoiser():
    law = exact.random_law(3, 3, seed=12)
    xt = torch.tensor([3, 0, 3])
    got = _minimise(lambda lp, x0, x: losses.masked_cross_entropy(lp, x0, x, 0.4, -1.0), law, xt, 0.4,
                    process="mdm")
    d = exact.mdm_denoiser(law, xt[None], 0.4)[0]
    for i in (0, 2):
        assert torch.allclose(got[i].exp(), d[i].exp(), atol=1e-6)
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 6, 4, generator=g, dtype=torch.float64)
    x0 = torch.randint(4, (5, 6), generator=g)
    x = torch.where(torch.rand(5, 6, generator=g) < 0.5, x0, torch.full_like(x0, 4))
    a, da = 0.3, -0.9
    mce = losses.masked_cross_entropy(logits, x0, x, a, da)
    assert torch.allclose(mce * (-da / (1 - a)), losses.mdm_elbo(logits, x0, x, a, da), atol=1e-12)
    assert bool((mce[x != 4] == 0).all()) and bool((mce[x == 4] > 0).all())
    via = losses.compute("masked_cross_entropy", logits, output="denoiser", x0=x0, xt=x, alpha=a, dalpha=da)
    assert torch.equal(via, mce)


# ---- parameterisation x objective through the conversions ------------------------------------

def test_compute_converts_between_parameterisations():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 6, generator=g, dtype=torch.float64)
    x0 = torch.randint(6, (3, 4), generator=g)
    xt = torch.randint(6, (3, 4), generator=g)
    alpha, dalpha = torch.full((3, 1), 0.3, dtype=torch.float64), -0.999
    as_den = C.loo_to_denoiser(logits, xt, alpha)
    as_loo = C.denoiser_to_loo(logits, xt, alpha)
    cases = [
        ("cross_entropy", "loo", losses.cross_entropy(as_den, x0)),
        ("cross_entropy", "denoiser", losses.cross_entropy(logits, x0)),
        ("udm_elbo", "denoiser", losses.udm_elbo(as_loo, x0, xt, alpha, dalpha)),
        ("udm_elbo", "loo", losses.udm_elbo(logits, x0, xt, alpha, dalpha)),
        ("max_coupling_elbo", "loo", losses.max_coupling_elbo(as_den, x0, xt, alpha, dalpha)),
    ]
    for objective, output, want in cases:
        got = losses.compute(objective, logits, output=output, x0=x0, xt=xt, alpha=alpha, dalpha=dalpha)
        assert torch.allclose(got, want, atol=1e-12), (objective, output)
    # the conversion matters: the LOO-output CE differs from feeding the logits directly
    ce_loo = losses.compute("cross_entropy", logits, output="loo", x0=x0, xt=xt, alpha=alpha, dalpha=dalpha)
    assert not torch.allclose(ce_loo, losses.cross_entropy(logits, x0))
    with pytest.raises(ValueError, match="output 'loo' cannot be trained with objective 'audm_elbo'"):
        losses.compute("audm_elbo", logits, output="loo", x0=x0, xt=xt, alpha=alpha, dalpha=dalpha, noise=xt)
    with pytest.raises(ValueError, match="objective must be one of"):
        losses.compute("no_such_objective", logits, output="loo", x0=x0, xt=xt, alpha=alpha, dalpha=dalpha)
    with pytest.raises(ValueError, match="process is required for objective 'score_entropy' with output 'loo'"):
        losses.compute("score_entropy", logits, output="loo", x0=x0, xt=xt, alpha=alpha, dalpha=dalpha)


# ---- numerics -------------------------------------------------------------------------------

def _all_losses(logits, x0, xt, noise, alpha, dalpha, k):
    xt_m = torch.where(noise % 2 == 0, torch.full_like(xt, k), x0)
    return {
        "udm": losses.udm_elbo(logits, x0, xt, alpha, dalpha),
        "mdm": losses.mdm_elbo(logits, x0, xt_m, alpha, dalpha),
        "mc": losses.max_coupling_elbo(logits, x0, xt, alpha, dalpha),
        "audm": losses.audm_elbo(logits, x0, torch.where(noise % 3 == 0, noise, x0), noise, alpha, dalpha),
        "ce": losses.cross_entropy(logits, x0),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("alpha", [1e-6, 1e-3, 0.5, 1 - 1e-3, 1 - 1e-6])
def test_finite_nonnegative_with_finite_gradients(dtype, alpha):
    k = 30
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(8, 16, k, generator=g)).to(dtype).requires_grad_(True)
    x0, xt, noise = (torch.randint(k, (8, 16), generator=g) for _ in range(3))
    a = torch.full((8, 1), alpha, dtype=dtype)
    out = _all_losses(logits, x0, xt, noise, a, torch.tensor(-1.0, dtype=dtype), k)
    total = 0
    for name, loss in out.items():
        assert loss.dtype == dtype and loss.shape == (8, 16), name
        assert torch.isfinite(loss).all() and (loss >= 0).all(), name
        total = total + loss.sum()
    total.backward()
    assert torch.isfinite(logits.grad).all()


def test_udm_elbo_is_zero_at_the_truth_when_clean():
    """With r_theta = one-hot x_0 (smoothed) and x_t = x_0 the integrand vanishes as r_theta -> e_x0."""
    k = 5
    x0 = torch.tensor([[1, 3]])
    logits = torch.full((1, 2, k), -60.0, dtype=torch.float64).scatter(-1, x0[..., None], 0.0)
    assert losses.udm_elbo(logits, x0, x0, 0.5, -1.0).max().item() < 1e-20


def test_bad_inputs():
    logp = torch.zeros(2, 3, 4)
    x = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"x0 has shape \(2, 2\), expected the shape of xt \(2, 3\)"):
        losses.udm_elbo(logp, x[:, :2], x, 0.5, -1.0)
    with pytest.raises(ValueError, match=r"x0 holds token id 4, expected ids in \[0, 3\]"):
        losses.max_coupling_elbo(logp, x + 4, x, 0.5, -1.0)
    with pytest.raises(ValueError, match=r"xt holds token id 5, expected ids in \[0, 4\]"):
        losses.mdm_elbo(logp, x, x + 5, 0.5, -1.0)  # mask id 4 is allowed, 5 is not
    with pytest.raises(ValueError, match="alpha must lie in"):
        losses.udm_elbo(logp, x, x, -0.5, -1.0)
    with pytest.raises(ValueError, match="dalpha must be <= 0"):
        losses.udm_elbo(logp, x, x, 0.5, 1.0)
    with pytest.raises(ValueError, match="noise has shape"):
        losses.audm_elbo(logp, x, x, x[:, :1], 0.5, -1.0)
    with pytest.raises(ValueError, match="logp has shape"):
        losses.cross_entropy(logp, x[:, :2])


def _plugin_elbo_by_definition(logr, x0, xt, alpha, dalpha):
    """docs/maths.md §4.1 written out literally over the vocabulary (float64 reference)."""
    logr = torch.log_softmax(logr.double(), -1)
    k = logr.shape[-1]
    a = torch.broadcast_to(torch.as_tensor(alpha, dtype=torch.float64), xt.shape).unsqueeze(-1)
    xbar_th = k * a * logr.exp() + 1 - a
    r_th = xbar_th / xbar_th.gather(-1, xt.unsqueeze(-1))
    xbar = k * a * torch.nn.functional.one_hot(x0, k).double() + 1 - a
    r = xbar / xbar.gather(-1, xt.unsqueeze(-1))
    term = (r_th - r - r * torch.log(r_th / r)).masked_fill(torch.nn.functional.one_hot(xt, k).bool(), 0.0)
    return -dalpha / a.squeeze(-1) * term.sum(-1) / k


@pytest.mark.parametrize("output", ["loo", "denoiser"])
@pytest.mark.parametrize("k", [2, 5, 40])
@pytest.mark.parametrize("alpha", [1e-3, 0.3, 0.9, 0.999])
def test_fused_plugin_elbo_and_gradient_equal_the_definition(output, k, alpha, monkeypatch):
    """The fused kernel (one pass over the vocabulary, analytic gradient) equals the formula written
    out over every y, values and gradients, for both network outputs; small chunks cross row blocks."""
    monkeypatch.setattr(losses, "_CHUNK_ELEMENTS", 3 * k)  # 3 rows per chunk
    g = torch.Generator().manual_seed(k)
    logits = (2 * torch.randn(3, 7, k, generator=g, dtype=torch.float64)).requires_grad_(True)
    x0 = torch.randint(k, (3, 7), generator=g)
    xt = torch.where(torch.rand(3, 7, generator=g) < 0.5, x0, torch.randint(k, (3, 7), generator=g))
    a = torch.full((3, 1), alpha, dtype=torch.float64)
    got = losses.compute("udm_elbo", logits, output=output, x0=x0, xt=xt, alpha=a, dalpha=-1.3)
    logr = logits if output == "loo" else C.denoiser_to_loo(logits, xt, a)
    ref = _plugin_elbo_by_definition(logr, x0, xt, a, -1.3)
    scale = ref.abs().max().item()
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-10 * max(1.0, scale))
    g_got, = torch.autograd.grad((got * torch.arange(21.0).view(3, 7)).sum(), logits)
    g_ref, = torch.autograd.grad((ref * torch.arange(21.0).view(3, 7)).sum(), logits)
    torch.testing.assert_close(g_got, g_ref, rtol=1e-9, atol=1e-11 * max(1.0, g_ref.abs().max().item()))


def test_fused_plugin_elbo_float32_and_bfloat16_track_float64():
    k = 300
    g = torch.Generator().manual_seed(1)
    logits = 2 * torch.randn(4, 16, k, generator=g, dtype=torch.float64)
    x0 = torch.randint(k, (4, 16), generator=g)
    xt = torch.where(torch.rand(4, 16, generator=g) < 0.5, x0, torch.randint(k, (4, 16), generator=g))
    a = torch.tensor([[0.05], [0.4], [0.8], [0.99]], dtype=torch.float64)
    ref = losses.udm_elbo(logits, x0, xt, a, -1.0)
    f32 = losses.udm_elbo(logits.float(), x0, xt, a.float(), -1.0)
    assert f32.dtype == torch.float32
    torch.testing.assert_close(f32.double(), ref, rtol=1e-4, atol=1e-5)
    bf16 = losses.udm_elbo(logits.bfloat16(), x0, xt, a.float(), -1.0)  # upcast inside: float32 result
    assert bf16.dtype == torch.float32
    ref_bf = losses.udm_elbo(logits.bfloat16().double(), x0, xt, a, -1.0)
    torch.testing.assert_close(bf16.double(), ref_bf, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("alpha", [1e-6, 1e-3, 0.5, 0.999, 1 - 1e-9])
def test_fused_loo_cross_entropy_equals_converting_first(alpha):
    k = 6
    g = torch.Generator().manual_seed(3)
    logits = (3 * torch.randn(4, 9, k, generator=g, dtype=torch.float64)).requires_grad_(True)
    x0 = torch.randint(k, (4, 9), generator=g)
    xt = torch.where(torch.rand(4, 9, generator=g) < 0.5, x0, torch.randint(k, (4, 9), generator=g))
    got = losses.compute("cross_entropy", logits, output="loo", x0=x0, xt=xt, alpha=alpha, dalpha=-1.0)
    ref = losses.cross_entropy(C.loo_to_denoiser(logits, xt, alpha), x0)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    g1, = torch.autograd.grad(got.sum(), logits)
    g2, = torch.autograd.grad(ref.sum(), logits)
    torch.testing.assert_close(g1, g2, rtol=1e-8, atol=1e-10)


def _plugin_elbo_exact(logits, x0, xt, alpha: float, dalpha: float) -> list[list[float]]:
    """docs/maths.md §4.1 in 60-digit decimal arithmetic (logits and alpha taken exactly as given)."""
    from decimal import Decimal, localcontext

    with localcontext() as ctx:
        ctx.prec = 60
        a, k = Decimal(alpha), logits.shape[-1]
        out = []
        for row_l, row_x0, row_xt in zip(logits.tolist(), x0.tolist(), xt.tolist(), strict=True):
            out.append([])
            for lg, z, x in zip(row_l, row_x0, row_xt, strict=True):
                e = [Decimal(v).exp() for v in lg]
                r = [v / sum(e) for v in e]
                xbar_th = [k * a * v + 1 - a for v in r]
                xbar = [k * a * (1 if y == z else 0) + 1 - a for y in range(k)]
                total = Decimal(0)
                for y in range(k):
                    if y == x:
                        continue
                    rt, rr = xbar_th[y] / xbar_th[x], xbar[y] / xbar[x]
                    total += rt - rr - rr * (rt / rr).ln()
                out[-1].append(float(-Decimal(dalpha) / a * total / k))
        return out


@pytest.mark.parametrize("alpha", [1 - 1e-6, 1 - 1e-9])
def test_udm_elbo_near_alpha_one_matches_the_exact_formula(alpha):
    k = 5
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(2, 4, k, generator=g, dtype=torch.float64)
    x0 = torch.tensor([[0, 1, 2, 3], [4, 0, 1, 2]])
    xt = torch.tensor([[0, 2, 2, 1], [4, 3, 1, 0]])  # both x_t = x_0 and x_t != x_0
    got = losses.udm_elbo(logits, x0, xt, alpha, -1.3)
    ref = torch.tensor(_plugin_elbo_exact(logits, x0, xt, alpha, -1.3), dtype=torch.float64)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=0.0)
    assert ref[xt != x0].min() > 1e6  # the x_t != x_0 terms grow without bound as alpha -> 1


def test_udm_elbo_at_alpha_one():
    """x_t = x_0: the finite limit (beta / K) (1 - r(x)) / r(x); x_t != x_0 (probability 0 under q,
    the integrand diverges): refused with a named error, in float64 and where float32 rounds to 1."""
    k = 5
    g = torch.Generator().manual_seed(12)
    logits = torch.randn(2, 4, k, generator=g, dtype=torch.float64, requires_grad=True)
    x0 = torch.tensor([[0, 1, 2, 3], [4, 0, 1, 2]])
    got = losses.udm_elbo(logits, x0, x0, 1.0, -1.3)
    r_x = torch.softmax(logits.detach(), -1).gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(got.detach(), 1.3 / k * (1 - r_x) / r_x, rtol=1e-12, atol=0.0)
    # and the limit is continuous: 1 - 1e-9 is within 1e-7 (relative) of it
    near = torch.tensor(_plugin_elbo_exact(logits.detach(), x0, x0, 1 - 1e-9, -1.3), dtype=torch.float64)
    torch.testing.assert_close(got.detach(), near, rtol=1e-7, atol=0.0)
    got.sum().backward()
    assert torch.isfinite(logits.grad).all()
    xt = x0.clone()
    xt[1, 2] = 3
    with pytest.raises(ValueError, match=r"alpha is 1 \(in torch.float64\) at a position where xt != x0"):
        losses.udm_elbo(logits, x0, xt, 1.0, -1.3)
    with pytest.raises(ValueError, match=r"alpha is 1 \(in torch.float32\) at a position where xt != x0"):
        losses.udm_elbo(logits.float(), x0, xt, 1 - 1e-12, -1.3)
    with pytest.raises(ValueError, match="alpha is 1"):  # the fused path of losses.compute, both outputs
        losses.compute("udm_elbo", logits, output="denoiser", x0=x0, xt=xt, alpha=1.0, dalpha=-1.3)
    # a per-row alpha: only the row at alpha = 1 with x_t != x_0 matters
    a = torch.tensor([[1.0], [0.5]], dtype=torch.float64)
    xt_row0 = x0.clone()
    xt_row0[1, 2] = 3  # x_t != x_0 in the row at alpha 0.5 only
    assert torch.isfinite(losses.udm_elbo(logits, x0, xt_row0, a, -1.3)).all()
