"""Tests of the autoregressive transformer baseline (ddlm.models.ARTransformer)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ddlm.models import ARConfig, ARTransformer, DiT, DiTConfig
from ddlm.models._layers import Block

V, L = 10, 12


def make(**overrides) -> ARTransformer:
    """A very small causal transformer over V tokens."""
    torch.manual_seed(0)
    return ARTransformer(ARConfig(**(dict(vocab_size=V, hidden=32, blocks=2, heads=2, max_len=16) | overrides)))


def randomise(model: torch.nn.Module, std: float = 0.2) -> torch.nn.Module:
    """Overwrite every parameter with noise so that every path visibly affects the output."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    return model


def tokens(b: int = 3, length: int = L, seed: int = 2) -> torch.Tensor:
    return torch.randint(0, V, (b, length), generator=torch.Generator().manual_seed(seed))


def test_preset_shapes_dtype_and_size() -> None:
    model = ARTransformer(ARConfig.preset("tiny", vocab_size=70, max_len=64))
    assert (model.config.hidden, model.config.blocks, model.config.heads) == (256, 4, 4)
    out = model(torch.randint(0, 70, (2, 20)))
    assert out.shape == (2, 20, 70) and out.dtype == torch.float32
    assert 1_000_000 <= model.num_parameters() <= 4_000_000


def test_small_preset_parameter_count_and_shared_trunk() -> None:
    with torch.device("meta"):
        small = ARTransformer(ARConfig.preset("small", vocab_size=50_257, max_len=1024))
    assert 84e6 <= small.num_parameters(exclude_embeddings=True) <= 90e6  # 12 x 12 x 768^2 ~ 85M
    assert 155e6 <= small.num_parameters() <= 170e6  # + two 768 x 50,257 matrices
    assert all(type(b) is Block and b.causal and b.modulation is None for b in small.blocks)
    dit = DiT(DiTConfig(vocab_size=11, output_size=10, hidden=32, blocks=1, heads=2, max_len=8))
    assert type(dit.blocks[0]) is Block and not dit.blocks[0].causal  # same block class, bidirectional


def test_unknown_preset_raises() -> None:
    with pytest.raises(ValueError, match="'big'.*medium"):
        ARConfig.preset("big", vocab_size=10, max_len=8)


@pytest.mark.parametrize("j", [0, 4, L - 1])
def test_causality(j: int) -> None:
    model = randomise(make()).eval()
    x = tokens()
    changed = x.clone()
    changed[:, j] = (x[:, j] + 1) % V
    a, b = model(x), model(changed)
    assert torch.equal(a[:, :j], b[:, :j])
    assert (a[:, j:] - b[:, j:]).abs().max() > 1e-3
    assert (a[:, j] - b[:, j]).abs().amax(dim=-1).min() > 1e-4  # the changed token itself is seen


def test_nll_is_chain_rule_over_prefixes() -> None:
    model = randomise(make()).eval()
    x = tokens()
    expected = torch.zeros(3)
    for j in range(1, L):  # run every prefix separately: p(x_j | x_<j)
        expected -= model(x[:, :j])[:, -1].log_softmax(-1).gather(1, x[:, j : j + 1]).squeeze(1)
    torch.testing.assert_close(model.nll(x), expected, rtol=1e-5, atol=1e-4)
    assert torch.equal(model.nll(x[:, :1]), torch.zeros(3))


def test_block_losses_score_every_token_after_the_start_token() -> None:
    model = randomise(make(start_id=V - 1)).eval()
    x = tokens()
    losses = model.block_losses(x)
    assert losses.shape == (3, L)
    with_start = torch.cat([torch.full((3, 1), V - 1), x], dim=1)
    torch.testing.assert_close(losses.sum(-1), model.nll(with_start), rtol=1e-5, atol=1e-4)
    # the first token is scored given the start token alone
    first = -model(with_start[:, :1])[:, -1].log_softmax(-1).gather(1, x[:, :1]).squeeze(1)
    torch.testing.assert_close(losses[:, 0], first, rtol=1e-5, atol=1e-5)
    legacy = randomise(make()).eval()  # no start token: x[0] is context
    assert legacy.block_losses(x).shape == (3, L - 1)
    torch.testing.assert_close(legacy.block_losses(x).sum(-1), legacy.nll(x), rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match=r"start_id must be None or a token id in \[0, 10\); got 10"):
        make(start_id=V)


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (torch.zeros(2, 5), r"x must be .*int64.*got dtype torch.float32"),
        (torch.zeros(2, 5, 1, dtype=torch.long), r"x must be .*2-D.*shape \(2, 5, 1\)"),
        (torch.full((2, 5), V), r"x holds token id 10, expected ids in \[0, 9\]"),
        (torch.zeros(1, 17, dtype=torch.long), r"L=17 .*max_len=16"),
    ],
)
def test_bad_inputs_raise(x: torch.Tensor, match: str) -> None:
    model = make()
    with pytest.raises(ValueError, match=match):
        model(x)
    with pytest.raises(ValueError, match=match):
        model.nll(x)


def test_overfits_one_batch() -> None:
    model = make(hidden=64, heads=4)
    x = tokens(8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(50):
        loss = model.nll(x).mean() / (L - 1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_gradients_are_finite_and_reach_every_parameter() -> None:
    model = make(dropout=0.1).train()
    x = tokens(8)
    F.cross_entropy(model(x)[:, :-1].transpose(1, 2), x[:, 1:]).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_generate_keeps_prefix_and_is_seeded():
    from ddlm.models import ARConfig, ARTransformer

    torch.manual_seed(0)
    m = ARTransformer(ARConfig(vocab_size=11, hidden=32, blocks=1, heads=2, max_len=12))
    prefix = torch.tensor([[3, 4], [5, 6]])
    a = m.generate(prefix, 10, generator=torch.Generator().manual_seed(1))
    b = m.generate(prefix, 10, generator=torch.Generator().manual_seed(1))
    assert a.shape == (2, 10) and torch.equal(a[:, :2], prefix) and torch.equal(a, b)
    assert int(a.max()) < 11
    with pytest.raises(ValueError, match="max_len"):
        m.generate(prefix, 13)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        m.generate(prefix, 5, temperature=0.0)
