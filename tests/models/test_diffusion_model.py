import pytest
import torch

import ddlm
from ddlm.models.diffusion import DiffusionModel


@pytest.mark.parametrize("process,output", [("mdm", "denoiser"), ("udm", "loo"), ("udm", "denoiser"),
                                            ("audm", "posterior"), ("mdm", "score"), ("udm", "score")])
def test_build_forward_and_sample(process, output):
    torch.manual_seed(0)
    m = DiffusionModel.build(process, 7, 16, preset="tiny", output=output, hidden=32, blocks=1, heads=2)
    assert m.output == output and m.process.name == process
    for p in m.parameters():  # break adaLN-Zero so the output depends on the inputs
        torch.nn.init.normal_(p, std=0.05)
    xt = torch.randint(7, (3, 16))
    noise = torch.randint(7, (3, 16)) if process == "audm" else None
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    out = m(xt, t, noise)
    assert out.shape == (3, 16, 7) and out.dtype == torch.float32
    # the time input reaches the network through sigma = -log alpha_t
    assert not torch.allclose(out, m(xt, torch.full((3,), 0.7, dtype=torch.float64), noise))
    x = ddlm.sample(m, m.process, 2, 16, 4, prediction=m.prediction, generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 16) and int(x.max()) < 7


def test_defaults_and_errors():
    assert DiffusionModel.build("udm", 5, 8, hidden=32, blocks=1, heads=2).output == "loo"
    assert DiffusionModel.build("mdm", 5, 8, hidden=32, blocks=1, heads=2).output == "denoiser"
    with pytest.raises(ValueError, match="output must be one of"):
        DiffusionModel.build("mdm", 5, 8, output="loo", hidden=32, blocks=1, heads=2)


def test_score_scaling_noise_level_is_sedds_absorbing_scaling():
    """log s = output - log(e^sigma - 1) - log K: a zero output is the score of the uniform denoiser,
    whose mass is alpha / (1 - alpha); without the scaling the output is the log-score itself."""
    scaled = DiffusionModel.build("mdm", 6, 8, output="score", score_scaling="noise_level", hidden=16, blocks=1,
                                  heads=2)
    plain = DiffusionModel.build("mdm", 6, 8, output="score", hidden=16, blocks=1, heads=2)
    plain.load_state_dict(scaled.state_dict())
    assert plain.score_scaling == "none" and scaled.score_scaling == "noise_level"
    xt = torch.randint(7, (3, 8))
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    alpha = scaled.process.alpha(t)
    sigma = -torch.log(alpha)
    offset = -torch.log(torch.expm1(sigma)) - torch.log(torch.tensor(6.0, dtype=torch.float64))
    assert torch.allclose(scaled(xt, t), plain(xt, t) + offset.float()[:, None, None], atol=1e-5)
    for p in scaled.parameters():
        torch.nn.init.zeros_(p)
    mass = scaled(xt, t).double().logsumexp(-1)
    assert torch.allclose(mass, (torch.log(alpha) - torch.log1p(-alpha))[:, None].expand(3, 8), atol=1e-5)
    # a score-scaled network depends on t even when the DiT ignores time (no prediction caching)
    frozen = DiffusionModel.build("mdm", 6, 8, output="score", score_scaling="noise_level", time_conditioning=False,
                                  hidden=16, blocks=1, heads=2)
    assert frozen.time_conditioned and not DiffusionModel.build("mdm", 6, 8, time_conditioning=False, hidden=16,
                                                                blocks=1, heads=2).time_conditioned
    with pytest.raises(ValueError, match=r"score_scaling must be one of \('none',\) for UDM, got 'noise_level'"):
        DiffusionModel.build("udm", 6, 8, output="score", score_scaling="noise_level", hidden=16, blocks=1, heads=2)
    with pytest.raises(ValueError, match="score_scaling 'noise_level' applies to a 'score' output only"):
        DiffusionModel.build("mdm", 6, 8, score_scaling="noise_level", hidden=16, blocks=1, heads=2)
