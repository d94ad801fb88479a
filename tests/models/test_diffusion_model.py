import pytest
import torch

import ddlm
from ddlm.models.diffusion import DiffusionModel


@pytest.mark.parametrize("process,output",
                         [("mdm", "denoiser"), ("udm", "loo"), ("udm", "denoiser"), ("audm", "posterior")])
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
