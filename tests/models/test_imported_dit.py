"""The released checkpoints' DiT on PyTorch attention: input checks, the noise-token fusions, the zeroed
time conditioning, and the parameter order of the EMA lists."""

import pytest
import torch

from ddlm.models.imported_dit import ImportedDiT, ImportedDiTConfig


def _net(**kw):
    cfg = dict(vocab_size=11, output_size=11, hidden=16, blocks=2, heads=2, cond_dim=8, max_len=6) | kw
    net = ImportedDiT(ImportedDiTConfig(**cfg))
    g = torch.Generator().manual_seed(0)
    for p in net.parameters():
        p.data = torch.randn(p.shape, generator=g) * 0.3
    return net.eval()


def test_config_checks():
    with pytest.raises(ValueError, match="hidden must be a positive int"):
        ImportedDiTConfig(vocab_size=3, output_size=3, hidden=0, blocks=1, heads=1, cond_dim=2, max_len=2)
    with pytest.raises(ValueError, match="heads of even width"):
        ImportedDiTConfig(vocab_size=3, output_size=3, hidden=6, blocks=1, heads=2, cond_dim=2, max_len=2)
    with pytest.raises(ValueError, match="noise_fusion must be one of"):
        ImportedDiTConfig(vocab_size=3, output_size=3, hidden=4, blocks=1, heads=1, cond_dim=2, max_len=2,
                          noise_fusion="concat")


@torch.no_grad()
def test_inputs_are_checked_and_outputs_shaped():
    net = _net(output_size=9)
    x = torch.randint(11, (2, 5))
    out = net(x, torch.tensor([0.1, 2.0]))
    assert out.shape == (2, 5, 9) and out.dtype == torch.float32
    with pytest.raises(ValueError, match="sigma must be a floating tensor of shape \\(2,\\)"):
        net(x, torch.tensor([0.1]))
    with pytest.raises(ValueError, match="xt"):
        net(torch.full((2, 5), 11), torch.zeros(2))
    with pytest.raises(ValueError, match="noise was given"):
        net(x, torch.zeros(2), x)


@torch.no_grad()
@pytest.mark.parametrize("fusion", ["separate_linear", "shared_mlp", "additive"])
def test_noise_fusions_condition_on_the_noise_and_on_matches(fusion):
    net = _net(noise_fusion=fusion)
    x = torch.randint(11, (2, 5))
    u = (x + 1) % 11
    base = net(x, torch.ones(2), u)
    other = u.clone()
    other[:, 0] = (u[:, 0] + 3) % 11
    assert not torch.equal(net(x, torch.ones(2), other), base)  # another noise token
    same = u.clone()
    same[:, 1] = x[:, 1]
    assert not torch.equal(net(x, torch.ones(2), same), base)  # x_t == u at one more position
    with pytest.raises(ValueError, match="noise must be given"):
        net(x, torch.ones(2))
    with pytest.raises(ValueError, match="noise shape"):
        net(x, torch.ones(2), u[:, :4])
    keys = [k for k, _ in net.named_parameters()]
    assert keys.index("vocab_embed.embedding") == 0 and keys.index("sigma_map.mlp.0.weight") > 1  # families' order


@torch.no_grad()
def test_untimed_network_ignores_sigma():
    net = _net(time_conditioning=False)
    x = torch.randint(11, (2, 5))
    assert torch.equal(net(x, torch.tensor([0.1, 5.0])), net(x, torch.zeros(2)))
    timed = _net()
    assert not torch.equal(timed(x, torch.tensor([0.1, 5.0])), timed(x, torch.zeros(2)))


@torch.no_grad()
def test_bfloat16_autocast_on_cpu():
    net = _net()
    x = torch.randint(11, (2, 5))
    full = net(x, torch.ones(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = net(x, torch.ones(2))
    assert half.dtype == torch.float32 and not torch.equal(half, full)
    assert (half - full).abs().max() < 0.1 * full.abs().max()
