"""The model factory: the network a run config asks for."""

import pytest
import torch

from ddlm.config import load_config
from ddlm.models.ar import ARTransformer
from ddlm.models.diffusion import DiffusionModel
from ddlm.models.factory import build_model


def _cfg(tmp_path, name, **over):
    base = [f"run_dir={tmp_path / name}", "data.block_size=16", "model.hidden=32", "model.blocks=1", "model.heads=2"]
    return load_config(None, base + [f"{k}={v}" for k, v in over.items()])


@pytest.mark.parametrize("process", ["mdm", "udm", "audm"])
def test_diffusion_runs_get_their_process(tmp_path, process):
    model = build_model(_cfg(tmp_path, process, process=process, schedule="cosine"), 10)
    assert isinstance(model, DiffusionModel) and model.process.name == process
    assert model.net.config.hidden == 32 and model.net.config.max_len == 16


def test_block_start_option_builds_the_ar_context(tmp_path):
    on = build_model(_cfg(tmp_path, "a", process="ar"), 10, start_id=9)
    off = build_model(_cfg(tmp_path, "b", process="ar", **{"model.block_start": "false"}), 10, start_id=9)
    assert (on.config.start_id, on.config.max_len) == (9, 17)  # BOS + a block of 16
    assert (off.config.start_id, off.config.max_len) == (None, 16)
    x = torch.randint(0, 9, (2, 16))
    assert on.block_losses(x).shape == (2, 16) and off.block_losses(x).shape == (2, 15)
    with pytest.raises(ValueError, match="needs start_id"):
        build_model(_cfg(tmp_path, "c", process="ar"), 10)
    assert isinstance(on, ARTransformer) and on.process is None
