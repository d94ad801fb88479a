"""Tests of the diffusion transformer backbone (ddlm.models.DiT)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ddlm.models import DiT, DiTConfig
from ddlm.models._layers import apply_rotary, rotary

K, MASK, L = 10, 10, 12  # data tokens, mask id, sequence length


def make(**overrides) -> DiT:
    """A very small DiT (input vocab K+1 with mask id K, K output logits)."""
    torch.manual_seed(0)
    cfg = dict(vocab_size=K + 1, output_size=K, hidden=32, blocks=2, heads=2, max_len=16, cond_dim=16)
    return DiT(DiTConfig(**(cfg | overrides)))


def randomise(model: torch.nn.Module, std: float = 0.2) -> torch.nn.Module:
    """Overwrite every parameter (including the zero-initialised adaLN/output layers) with noise."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    return model


def batch(b: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return torch.randint(0, K + 1, (b, L), generator=g), torch.rand(b, generator=g) * 3


def test_preset_shapes_dtype_and_size() -> None:
    model = DiT(DiTConfig.preset("tiny", vocab_size=71, output_size=70, max_len=64))
    assert (model.config.hidden, model.config.blocks, model.config.heads) == (256, 4, 4)
    xt = torch.randint(0, 71, (2, 20))
    out = model(xt, torch.rand(2))
    assert out.shape == (2, 20, 70) and out.dtype == torch.float32
    assert 1_000_000 <= model.num_parameters() <= 4_500_000


def test_small_and_medium_preset_parameter_counts() -> None:
    with torch.device("meta"):
        small = DiT(DiTConfig.preset("small", vocab_size=50_258, output_size=50_257, max_len=1024))
        medium = DiT(DiTConfig.preset("medium", vocab_size=50_258, output_size=50_257, max_len=1024))
    # trunk: 12 blocks x 12*768^2 ~ 85M + adaLN ~ 7M; two 768 x 50k vocabulary matrices ~ 77M.
    assert 85e6 <= small.num_parameters(exclude_embeddings=True) <= 100e6
    assert 160e6 <= small.num_parameters() <= 180e6
    assert 300e6 <= medium.num_parameters(exclude_embeddings=True) <= 340e6
    assert (medium.config.hidden, medium.config.blocks, medium.config.heads) == (1024, 24, 16)


def test_unknown_preset_raises() -> None:
    with pytest.raises(ValueError, match="'huge'.*tiny"):
        DiTConfig.preset("huge", vocab_size=11, output_size=10, max_len=8)


def test_bad_config_raises() -> None:
    with pytest.raises(ValueError, match="heads=3"):
        make(heads=3)


def test_adaln_zero_initialisation_gives_zero_logits() -> None:
    model = make()
    xt, sigma = batch()
    assert torch.equal(model(xt, sigma), torch.zeros(3, L, K))
    assert all(torch.equal(b.modulation.weight, torch.zeros_like(b.modulation.weight)) for b in model.blocks)


def test_attention_is_bidirectional() -> None:
    model = randomise(make()).eval()
    xt, sigma = batch()
    changed = xt.clone()
    changed[:, -1] = (xt[:, -1] + 1) % (K + 1)
    first, first_changed = model(xt, sigma)[:, 0], model(changed, sigma)[:, 0]
    assert (first - first_changed).abs().amax(dim=-1).min() > 1e-4


def test_rope_breaks_permutation_equivariance() -> None:
    model = randomise(make()).eval()
    xt, sigma = batch()
    perm = torch.randperm(L, generator=torch.Generator().manual_seed(3))
    assert not torch.allclose(model(xt[:, perm], sigma), model(xt, sigma)[:, perm], atol=1e-4)


def test_rotary_scores_depend_only_on_relative_position() -> None:
    q, k = torch.randn(1, 1, 1, 8).expand(1, 1, 20, 8), torch.randn(1, 1, 1, 8).expand(1, 1, 20, 8)
    cos, sin = rotary(20, 8, torch.device("cpu"))
    scores = apply_rotary(q, cos, sin)[0, 0] @ apply_rotary(k, cos, sin)[0, 0].T  # (20, 20)
    torch.testing.assert_close(scores[5, 2], scores[15, 12])
    torch.testing.assert_close(scores[3, 9], scores[10, 16])
    assert not torch.allclose(scores[5, 2], scores[5, 3])


@pytest.mark.parametrize("time_conditioning", [True, False])
def test_time_conditioning(time_conditioning: bool) -> None:
    model = randomise(make(time_conditioning=time_conditioning)).eval()
    xt, _ = batch()
    a, b = model(xt, torch.full((3,), 0.1)), model(xt, torch.full((3,), 2.5))
    if time_conditioning:
        assert (a - b).abs().max() > 1e-3
    else:
        assert torch.equal(a, b)
        assert torch.equal(a, model(xt, torch.full((3,), float("inf"))))


def test_audm_uses_noise_tokens_and_active_flag() -> None:
    model = randomise(make(audm=True)).eval()
    xt, sigma = batch()
    xt = xt % K
    noise, other = (xt + 1) % K, (xt + 2) % K  # both differ from xt everywhere: only the noise table differs
    assert (model(xt, sigma, noise) - model(xt, sigma, other)).abs().max() > 1e-3
    # with the noise table silenced, the only path left is the learned embedding of xt == noise
    with torch.no_grad():
        model.noise_embed.weight.zero_()
    assert (model(xt, sigma, xt) - model(xt, sigma, (xt + 1) % K)).abs().max() > 1e-3
    with pytest.raises(ValueError, match="noise"):
        model(xt, sigma)
    with pytest.raises(ValueError, match=r"noise holds token id 10, expected ids in \[0, 9\]"):
        model(xt, sigma, torch.full_like(xt, K))
    with pytest.raises(ValueError, match="noise shape"):
        model(xt, sigma, noise[:, :-1])


def test_noise_without_audm_raises() -> None:
    xt, sigma = batch()
    with pytest.raises(ValueError, match="noise.*audm=False"):
        make()(xt, sigma, torch.zeros_like(xt))


@pytest.mark.parametrize(
    ("xt", "sigma", "match"),
    [
        (torch.zeros(2, 5), torch.zeros(2), r"xt must be .*int64.*got dtype torch.float32"),
        (torch.zeros(5, dtype=torch.long), torch.zeros(1), r"xt must be .*2-D.*shape \(5,\)"),
        (torch.full((2, 5), K + 1), torch.zeros(2), r"xt holds token id 11, expected ids in \[0, 10\]"),
        (torch.full((2, 5), -1), torch.zeros(2), r"xt holds token id -1, expected ids in \[0, 10\]"),
        (torch.zeros(2, 17, dtype=torch.long), torch.zeros(2), r"L=17 .*max_len=16"),
        (torch.zeros(2, 5, dtype=torch.long), torch.zeros(3), r"sigma .*shape \(2,\).*got .*shape \(3,\)"),
        (torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, dtype=torch.long), r"sigma .*floating.*int64"),
        (torch.zeros(2, 5, dtype=torch.long), torch.tensor([0.0, float("inf")]), r"sigma must be finite"),
    ],
)
def test_bad_inputs_raise(xt: torch.Tensor, sigma: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()(xt, sigma)


def masked_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    x0 = torch.randint(0, K, (8, L), generator=g)
    masked = torch.rand(8, L, generator=g) < 0.5
    return x0, torch.where(masked, MASK, x0), masked


def test_overfits_one_batch() -> None:
    model = make(hidden=64, heads=4)
    x0, xt, masked = masked_batch()
    sigma = torch.full((8,), 0.7)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(50):
        loss = F.cross_entropy(model(xt, sigma)[masked], x0[masked])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("randomised", [False, True])
def test_gradients_are_finite_and_reach_every_parameter(randomised: bool) -> None:
    model = make(audm=True)
    if randomised:
        randomise(model)
    x0, xt, masked = masked_batch()
    noise = torch.randint(0, K, x0.shape, generator=torch.Generator().manual_seed(6))
    loss = F.cross_entropy(model(xt, torch.rand(8) * 5, noise)[masked], x0[masked])
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if randomised:
            assert p.grad.abs().sum() > 0, name
