import pytest
import torch

from ddlm import conversions as C
from ddlm.sampling import prediction as P
from ddlm.sampling.prediction import Prediction


@pytest.fixture
def case():
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(4, 6, 11, generator=g, dtype=torch.float64)
    x = torch.randint(11, (4, 6), generator=g)
    return logits, x


@pytest.mark.parametrize("alpha", [1e-4, 0.3, 0.9, 1 - 1e-4])
@pytest.mark.parametrize("temperature", [1.0, 0.5, 1.7])
def test_lazy_views_equal_the_conversions(case, alpha, temperature, monkeypatch):
    monkeypatch.setattr(P, "_CHUNK", 25)  # several chunks, with a partial last one
    logits, x = case
    d = Prediction(logits, x)
    r = d.convert("denoiser", "loo", alpha)
    want_r = C.denoiser_to_loo(logits, x, alpha)
    assert torch.allclose(r.log_probs(), want_r, atol=1e-10)
    # temper the LOO, back to a denoiser
    rt = r.temper(temperature).convert("loo", "denoiser", alpha)
    want = C.loo_to_denoiser(torch.log_softmax(want_r / temperature, -1), x, alpha)
    full = rt.log_probs()
    assert torch.allclose(full, want, atol=1e-9)
    # O(B L) evaluations agree with the materialised distribution
    y = (x + 3) % 11
    assert torch.allclose(rt.log_prob_at(y), full.gather(-1, y[..., None]).squeeze(-1), atol=1e-9)
    assert torch.allclose(rt.log_prob_at(x), full.gather(-1, x[..., None]).squeeze(-1), atol=1e-9)
    best, best_lp, other_lp = rt.top2()
    assert torch.equal(best, full.argmax(-1))
    assert torch.allclose(best_lp, full.max(-1).values, atol=1e-9)
    masked_x = full.scatter(-1, x[..., None], float("-inf"))
    assert torch.allclose(other_lp, masked_x.max(-1).values, atol=1e-9)
    where = torch.zeros_like(x, dtype=torch.bool)
    where[0, 1] = where[3, 5] = True
    assert torch.allclose(rt.rows(where.nonzero(as_tuple=True)).log_softmax(-1), full[where], atol=1e-9)


def test_float32_extremes_are_finite():
    g = torch.Generator().manual_seed(1)
    logits = 10 * torch.randn(2, 64, 5000, generator=g)
    x = torch.randint(5000, (2, 64), generator=g)
    for alpha in (1e-6, 1 - 1e-6):
        r = Prediction(logits, x).convert("denoiser", "loo", alpha).temper(0.7)
        assert torch.isfinite(r.log_z()).all() and torch.isfinite(r.log_prob_at(x)).all()
        ref = C.denoiser_to_loo(logits.double(), x, alpha)
        assert torch.allclose(r.convert("loo", "loo", alpha).temper(1 / 0.7).log_prob_at(x),
                              ref.gather(-1, x[..., None]).squeeze(-1), atol=1e-4)


def test_mask_positions_have_no_offset():
    logits = torch.randn(1, 3, 4, dtype=torch.float64)
    x = torch.tensor([[4, 1, 4]])  # mask id 4
    p = Prediction(logits, x).convert("denoiser", "loo", 0.5)
    lp = p.log_probs()
    assert torch.allclose(lp[0, 0], logits[0, 0].log_softmax(-1))
    assert not torch.allclose(lp[0, 1], logits[0, 1].log_softmax(-1))


def test_draws_follow_the_view():
    logits = torch.log(torch.tensor([[[0.1, 0.6, 0.3]]], dtype=torch.float64)).expand(200_000, 1, 3)
    x = torch.zeros(200_000, 1, dtype=torch.long)
    view = Prediction(logits, x).convert("denoiser", "loo", 0.5)
    tokens = view.draw(torch.ones_like(x, dtype=torch.bool), torch.Generator().manual_seed(0))
    freq = torch.bincount(tokens.flatten(), minlength=3).double() / tokens.numel()
    assert torch.allclose(freq, view.log_probs()[0, 0].exp(), atol=4e-3)


def test_bad_conversion():
    p = Prediction(torch.zeros(1, 1, 3), torch.zeros(1, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="can only convert between 'denoiser' and 'loo'"):
        p.convert("score", "loo", 0.5)
