"""The fast plug-in ELBO kernel (ddlm._plugin_kernel) against the log-domain term-by-term path of
ddlm.losses (itself checked against the definition and the oracle in test_losses.py), in every regime:
alpha from 1e-7 to 1 - 1e-12, sharp and flat logits, x = x_0 and x != x_0, float64 and float32."""

import pytest
import torch

from ddlm import losses
from ddlm._plugin_kernel import plugin_rows, workspace


def _rows(k, n, alpha, scale, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = (scale * torch.randn(n, k, generator=g, dtype=torch.float64)).to(dtype)
    x0 = torch.randint(k, (n,), generator=g)
    x = torch.where(torch.rand(n, generator=g) < 0.5, x0, torch.randint(k, (n,), generator=g))
    # sharpen some rows on x or x_0, as trained models do
    logits[::3, :] += 0
    logits[1::3].scatter_(1, x[1::3, None], 25.0 if scale > 1 else 3.0)
    a = torch.full((n,), alpha, dtype=torch.float64)
    shift = torch.where(torch.arange(n) % 2 == 0, 0.0, losses.self_evidence(a, k)).to(torch.float64)
    return logits, x, x0, shift, a


@pytest.mark.parametrize("k", [7, 300])
@pytest.mark.parametrize("alpha", [1e-7, 1e-3, 0.3, 0.9, 0.999, 1 - 1e-9, 1 - 1e-12])
@pytest.mark.parametrize("scale", [0.05, 3.0, 30.0])
def test_fast_rows_equal_the_careful_path(k, alpha, scale):
    logits, x, x0, shift, a = _rows(k, 24, alpha, scale, seed=k)
    grad = torch.empty_like(logits)
    total, ok = plugin_rows(logits, x, x0, shift, a, workspace(24, k, torch.float64, "cpu"), grad)
    assert bool(ok.all())  # every regime here takes the fast path
    ref = losses._careful_total(logits.clone(), x, x0, shift, a)
    ref_grad = losses._careful_grad(logits.clone(), x, x0, shift, a)
    assert torch.isfinite(total).all() and (total >= 0).all()
    torch.testing.assert_close(total, ref, rtol=1e-9, atol=1e-12 * max(1.0, ref.abs().max().item()))
    torch.testing.assert_close(grad, ref_grad, rtol=1e-8, atol=1e-10 * max(1.0, ref_grad.abs().max().item()))


@pytest.mark.parametrize("alpha", [1e-3, 0.5, 0.999, 1 - 1e-6])
def test_fast_rows_in_float32_track_float64(alpha):
    logits, x, x0, shift, a = _rows(2000, 16, alpha, 3.0, seed=3)
    logits, shift, a = logits.float(), shift.float(), a.float()  # the float64 reference sees the same inputs
    f32 = plugin_rows(logits, x, x0, shift, a, workspace(16, 2000, torch.float32, "cpu"), None)[0]
    ref = losses._careful_total(logits.double(), x, x0, shift.double(), a.double())
    old = losses._careful_total(logits.clone(), x, x0, shift, a)  # the log-domain path in float32
    torch.testing.assert_close(f32.double(), ref, rtol=2e-4, atol=1e-5)
    assert (f32.double() - ref).abs().max() <= 2 * (old.double() - ref).abs().max() + 1e-6 * ref.abs().max()


def test_alpha_one_takes_the_careful_path():
    logits, x, x0, shift, a = _rows(50, 6, 1.0, 3.0, seed=1)
    total, ok = plugin_rows(logits, x, x0, shift, a, workspace(6, 50, torch.float64, "cpu"), None)
    assert not bool(ok.any())
    k = 50
    z = logits.clone().requires_grad_(True)
    out = losses._PlugInSum.apply(z, x, x0, shift, a)  # falls back row by row, values and gradient
    ref = losses._careful_total(logits.clone(), x, x0, shift, a)
    assert torch.equal(torch.isfinite(out), torch.isfinite(ref))
    fin = torch.isfinite(ref)
    torch.testing.assert_close(out[fin], ref[fin])
    out[fin].sum().backward()
    assert z.grad.shape == (6, k)


def test_backward_scales_the_kept_gradient_once():
    logits, x, x0, shift, a = _rows(40, 9, 0.4, 2.0, seed=5)
    z = logits.clone().requires_grad_(True)
    out = losses._PlugInSum.apply(z, x, x0, shift, a)
    weights = torch.arange(9.0, dtype=torch.float64)
    (out * weights).sum().backward(retain_graph=True)
    expected = losses._careful_grad(logits.clone(), x, x0, shift, a) * weights[:, None]
    torch.testing.assert_close(z.grad, expected, rtol=1e-9, atol=1e-12)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()  # a second backward through the same graph is refused, not wrong
    with torch.no_grad():  # evaluation: values only, no gradient is made
        assert torch.allclose(losses._PlugInSum.apply(logits, x, x0, shift, a), out.detach())
