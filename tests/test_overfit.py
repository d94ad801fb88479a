"""Each (network output, objective) pair can drive its loss to its floor (0) on one memorised block."""

import pytest
import torch

from ddlm import losses
from ddlm.models.diffusion import DiffusionModel

pytestmark = pytest.mark.slow  # 7 trainings of 400 steps: about 3 s each

PAIRS = [
    ("mdm", "denoiser", "mdm_elbo"),
    ("mdm", "denoiser", "cross_entropy"),
    ("udm", "loo", "udm_elbo"),
    ("udm", "denoiser", "udm_elbo"),
    ("udm", "loo", "cross_entropy"),
    ("udm", "denoiser", "max_coupling_elbo"),
    ("audm", "posterior", "audm_elbo"),
]


@pytest.mark.parametrize("process,output,objective", PAIRS, ids=[f"{p}-{o}-{j}" for p, o, j in PAIRS])
def test_one_block_overfit(process, output, objective):
    torch.manual_seed(0)
    k, length, batch = 6, 12, 16
    model = DiffusionModel.build(process, k, length, output=output, hidden=64, blocks=2, heads=4, eps=1e-3)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(k, (1, length), generator=g).expand(batch, -1)
    history = []
    steps = 400
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 - i / steps)
    for step in range(steps):
        t = (torch.rand((), generator=g, dtype=torch.float64) + torch.arange(batch) / batch) % 1.0 * 0.999 + 0.001
        state = model.process.corrupt(x0, t, generator=g)
        xt, noise = (state.xt, state.noise) if process == "audm" else (state, None)
        logits = model(xt, t, noise)
        a = model.process.alpha(t).unsqueeze(-1).float()
        da = model.process.dalpha(t).unsqueeze(-1).float()
        loss = losses.compute(objective, logits, output=output, x0=x0, xt=xt, alpha=a, dalpha=da, noise=noise).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        history.append(loss.item())
    start, end = sum(history[:10]) / 10, sum(history[-20:]) / 20
    assert end < 0.1 * start, (start, end)  # the floor is 0: the block is memorised
