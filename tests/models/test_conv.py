"""The convolutional backbone (the worked backbone example of docs/extending.md)."""

import pytest
import torch

from ddlm.config import load_config
from ddlm.models.backbones import BACKBONES, get_backbone
from ddlm.models.conv import ConvConfig, ConvDenoiser
from ddlm.models.diffusion import DiffusionModel


def _net(**over):
    return ConvDenoiser(ConvConfig(**({"vocab_size": 7, "output_size": 6, "hidden": 32, "blocks": 3, "max_len": 20}
                                      | over)))


def test_registered_and_selected_by_the_config(tmp_path):
    assert get_backbone("conv") == (ConvDenoiser, ConvConfig) and "dit" in BACKBONES
    cfg = load_config(None, [f"run_dir={tmp_path}", "process=udm", "model.backbone=conv", "model.hidden=32",
                             "model.blocks=2", "data.block_size=16"])
    from ddlm.models.factory import build_model

    model = build_model(cfg, 10)
    assert isinstance(model.net, ConvDenoiser) and model.net.config.hidden == 32 and model.prediction == "loo"
    with pytest.raises(ValueError, match="model.backbone' is 'rnn'"):
        load_config(None, [f"run_dir={tmp_path}", "model.backbone=rnn"])
    with pytest.raises(ValueError, match="model.backbone' is 'conv'.*for process 'ar'"):
        load_config(None, [f"run_dir={tmp_path}", "process=ar", "model.backbone=conv"])
    with pytest.raises(ValueError, match="heads=2 does not apply to the conv backbone"):
        DiffusionModel.build("mdm", 5, 8, backbone="conv", hidden=32, blocks=1, heads=2)


def test_forward_shapes_noise_and_time_conditioning():
    torch.manual_seed(0)
    net = _net()
    for p in net.parameters():  # leave the zero initialisation so that every input matters
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randint(7, (3, 11))
    out = net(x, torch.tensor([0.1, 1.0, 3.0]))
    assert out.shape == (3, 11, 6) and out.dtype == torch.float32
    assert not torch.allclose(out, net(x, torch.tensor([2.0, 0.2, 0.5])))  # depends on sigma
    flat = _net(time_conditioning=False)
    for p in flat.parameters():
        torch.nn.init.normal_(p, std=0.3)
    assert torch.equal(flat(x, torch.tensor([0.1, 1.0, 3.0])), flat(x, torch.tensor([2.0, 0.2, 0.5])))
    # a token changes the logits of its neighbours within the receptive field only
    y = x.clone()
    y[:, 0] = (y[:, 0] + 1) % 7
    diff = (net(y, torch.ones(3)) - net(x, torch.ones(3))).abs().amax(dim=(0, 2))
    assert bool(diff[0] > 0) and bool(diff[1] > 0)
    audm = _net(audm=True, vocab_size=6)
    assert audm(x % 6, torch.ones(3), torch.randint(6, (3, 11))).shape == (3, 11, 6)
    with pytest.raises(ValueError, match="noise must be given"):
        audm(x % 6, torch.ones(3))
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        _net(kernel_size=4)


def test_trains_and_reloads_through_a_run(tmp_path):
    from ddlm.runs import load
    from ddlm.train import train

    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", "process=mdm", "model.backbone=conv", "model.hidden=32",
                             "model.blocks=2", "data.block_size=16", "batch_size=8", "max_steps=30", "eval_every=30",
                             "save_every=30", "log_every=10", "num_samples=1", "sample_nfe=4", "optim.warmup_steps=5"])
    metrics = train(cfg, progress=False, log=lambda *a, **k: None)
    assert metrics is not None
    model, process, _ = load(tmp_path / "run")
    assert isinstance(model.net, ConvDenoiser) and model.net.config.blocks == 2
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    import json

    losses = [json.loads(line)["loss"] for line in lines if "loss" in json.loads(line)]
    assert losses[-1] < losses[0]  # it learns
