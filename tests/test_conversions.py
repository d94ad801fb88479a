import pytest
import torch

from conftest import ALPHAS, random_noisy
from ddlm import conversions as C
from ddlm import exact

TOL = 1e-9


@pytest.mark.parametrize("alpha", ALPHAS)
def test_each_conversion_matches_the_oracle(law, alpha):
    xt = random_noisy(law, 12, seed=int(alpha * 1e4))
    d, r, s = exact.denoiser(law, xt, alpha), exact.loo(law, xt, alpha), exact.score(law, xt, alpha)
    pairs = {
        C.loo_to_denoiser: (r, d), C.denoiser_to_loo: (d, r), C.loo_to_score: (r, s),
        C.score_to_loo: (s, r), C.denoiser_to_score: (d, s), C.score_to_denoiser: (s, d),
    }
    for f, (src, dst) in pairs.items():
        got = f(src, xt, alpha)
        assert got.dtype == torch.float64
        assert torch.allclose(got, dst, atol=TOL, rtol=0), f.__name__


@pytest.mark.parametrize("alpha", ALPHAS)
def test_round_trips_are_identity(law, alpha):
    g = torch.Generator().manual_seed(1)
    xt = random_noisy(law, 8, seed=2)
    logr = torch.randn(8, law.length, law.vocab_size, generator=g, dtype=torch.float64).log_softmax(-1)
    assert torch.allclose(C.denoiser_to_loo(C.loo_to_denoiser(logr, xt, alpha), xt, alpha), logr, atol=TOL, rtol=0)
    assert torch.allclose(C.score_to_loo(C.loo_to_score(logr, xt, alpha), xt, alpha), logr, atol=TOL, rtol=0)
    logd = C.loo_to_denoiser(logr, xt, alpha)
    assert torch.allclose(C.score_to_denoiser(C.denoiser_to_score(logd, xt, alpha), xt, alpha), logd, atol=TOL, rtol=0)
    for src in C.VIEWS:
        for dst in C.VIEWS:
            start = {"loo": logr, "denoiser": logd, "score": C.loo_to_score(logr, xt, alpha)}[src]
            back = C.convert(C.convert(start, xt, alpha, src, dst), xt, alpha, dst, src)
            assert torch.allclose(back, start, atol=TOL, rtol=0), (src, dst)


def test_score_is_zero_at_current_token(law):
    xt = random_noisy(law, 6)
    s = C.loo_to_score(exact.loo(law, xt, 0.4), xt, 0.4)
    assert torch.equal(s.gather(-1, xt.unsqueeze(-1)), torch.zeros(6, law.length, 1, dtype=torch.float64))


def test_loo_is_invariant_to_own_token(law):
    """The exact LOO, and the LOO recovered from the exact denoiser, ignore x^i itself."""
    alpha = 0.6
    xt = random_noisy(law, 5, seed=3)
    for i in range(law.length):
        for y in range(law.vocab_size):
            changed = xt.clone()
            changed[:, i] = y
            for f in (lambda x: exact.loo(law, x, alpha),
                      lambda x: C.denoiser_to_loo(exact.denoiser(law, x, alpha), x, alpha)):
                assert torch.allclose(f(changed)[:, i], f(xt)[:, i], atol=TOL, rtol=0)
    # the denoiser, by contrast, does depend on it
    changed = xt.clone()
    changed[:, 0] = (xt[:, 0] + 1) % law.vocab_size
    assert not torch.allclose(exact.denoiser(law, changed, alpha)[:, 0], exact.denoiser(law, xt, alpha)[:, 0],
                              atol=1e-3)


def test_unnormalised_logits_are_normalised():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, 5, generator=g, dtype=torch.float64)
    xt = torch.randint(5, (4, 3), generator=g)
    assert torch.allclose(C.loo_to_denoiser(logits + 7.0, xt, 0.3), C.loo_to_denoiser(logits.log_softmax(-1), xt, 0.3),
                          atol=1e-12)


def test_tensor_alpha_broadcasts_per_sequence(law):
    xt = random_noisy(law, 4)
    alpha = torch.tensor([[0.1], [0.3], [0.5], [0.9]], dtype=torch.float64)
    r = exact.loo(law, xt, alpha.squeeze(-1))
    d = exact.denoiser(law, xt, alpha.squeeze(-1))
    assert torch.allclose(C.loo_to_denoiser(r, xt, alpha), d, atol=TOL)


@pytest.mark.parametrize("alpha", [1e-6, 1e-3, 0.5, 1 - 1e-3, 1 - 1e-6])
def test_float32_finite_and_close(alpha):
    g = torch.Generator().manual_seed(0)
    logr = torch.randn(16, 8, 50, generator=g).log_softmax(-1)
    xt = torch.randint(50, (16, 8), generator=g)
    for f in (C.loo_to_denoiser, C.denoiser_to_loo, C.loo_to_score, C.score_to_loo, C.denoiser_to_score,
              C.score_to_denoiser):
        out = f(logr, xt, alpha)
        assert out.dtype == torch.float32
        assert not torch.isnan(out).any() and not torch.isinf(out).any(), f.__name__
    a32 = float(torch.tensor(alpha, dtype=torch.float32))  # compare at the same (rounded) alpha
    ref = C.loo_to_denoiser(logr.double(), xt, a32)
    assert torch.allclose(C.loo_to_denoiser(logr, xt, a32).double(), ref, atol=1e-4)


def test_gradients_finite():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 5, 7, generator=g, requires_grad=True)
    xt = torch.randint(7, (4, 5), generator=g)
    out = C.score_to_denoiser(C.loo_to_score(logits, xt, 0.999), xt, 0.999) + C.denoiser_to_loo(logits, xt, 1e-5)
    out.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_bad_inputs():
    logp = torch.zeros(2, 3, 4)
    xt = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"logp has shape \(2, 3, 4\) but xt has shape \(2, 2\)"):
        C.loo_to_denoiser(logp, xt[:, :2], 0.5)
    with pytest.raises(ValueError, match=r"xt holds token id 4, expected ids in \[0, 3\]"):
        C.loo_to_denoiser(logp, xt + 4, 0.5)
    with pytest.raises(ValueError, match="alpha must lie in \\[0, 1\\], got 1.5"):
        C.denoiser_to_loo(logp, xt, 1.5)
    with pytest.raises(ValueError, match="alpha must lie in \\[0, 1\\], got -0.1"):
        C.loo_to_score(logp, xt, torch.tensor([[-0.1], [0.2]]))
    with pytest.raises(ValueError, match="alpha has shape"):
        C.loo_to_score(logp, xt, torch.ones(5))
    with pytest.raises(ValueError, match="K >= 2"):
        C.loo_to_score(torch.zeros(2, 3, 1), xt, 0.5)
    with pytest.raises(TypeError, match="xt must hold integer token ids"):
        C.loo_to_score(logp, xt.float(), 0.5)
    with pytest.raises(ValueError, match="target must be one of"):
        C.convert(logp, xt, 0.5, "loo", "logits")
