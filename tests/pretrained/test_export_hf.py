"""``ddlm export RUN OUT --format hf`` writes a ddlm run in the released checkpoints' layout, and the
importer reads it back bit-identically: the same weights, the same outputs."""

import json

import pytest
import torch
from safetensors.torch import load_file

import ddlm
from ddlm.checkpoint import save_checkpoint
from ddlm.cli import main
from ddlm.config import load_config
from ddlm.data.tokenizers import CharTokenizer
from ddlm.models.factory import build_model
from ddlm.pretrained.export_hf import export_hf


def _ckpt(tmp_path, name, *overrides):
    """A ddlm checkpoint folder with random raw and EMA weights (different, and far from the zero init)."""
    cfg = load_config(None, ["data.block_size=12", "model.hidden=32", "model.blocks=2", "model.heads=2", *overrides])
    tok = CharTokenizer.from_text("abcdefgh ")
    model = build_model(cfg, tok.vocab_size, tok.bos_id)
    g = torch.Generator().manual_seed(0)
    raw = {k: torch.randn(v.shape, generator=g) * 0.2 for k, v in model.state_dict().items()}
    ema = {k: torch.randn(v.shape, generator=g) * 0.2 for k, v in model.state_dict().items()}
    return save_checkpoint(tmp_path / name, step=7, config=cfg.to_dict(), tokenizer=tok.to_dict(), model=raw, ema=ema)


RUNS = {"mdm": ["process=mdm"], "mdm-untimed": ["process=mdm", "model.time_conditioning=false"],
        "udm-loo": ["process=udm"], "udm-denoiser": ["process=udm", "model.output=denoiser", "schedule=cosine"],
        "audm": ["process=audm"], "mdm-score": ["process=mdm", "model.output=score", "model.score_scaling=noise_level"],
        "udm-score": ["process=udm", "model.output=score"]}


@torch.no_grad()
@pytest.mark.parametrize("name", list(RUNS))
def test_round_trip_is_bit_identical(tmp_path, name):
    ckpt = _ckpt(tmp_path, name, *RUNS[name])
    out = export_hf(ckpt, tmp_path / "hf")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "ddlm_tokenizer.json", "model.safetensors"]
    ours, process, tok = ddlm.load(ckpt)
    back, process2, tok2 = ddlm.load(out)
    assert type(process2) is type(process) and process2.vocab_size == process.vocab_size
    assert repr(process2.schedule) == repr(process.schedule) and back.prediction == ours.prediction
    assert tok2.to_dict() == tok.to_dict() and back.time_conditioned == ours.time_conditioned
    # the weights, key by key, in the released layout
    saved = load_file(str(out / "model.safetensors"))
    assert all(k.startswith("backbone.") for k in saved)
    sd = ours.net.state_dict()
    assert torch.equal(saved["backbone.vocab_embed.embedding"], sd["embed.weight"])
    assert torch.equal(saved["backbone.blocks.1.attn_qkv.weight"], sd["blocks.1.qkv.weight"])
    assert torch.equal(saved["backbone.output_layer.linear.bias"], sd["head.bias"])
    assert torch.equal(back.net.blocks[1].mlp[2].weight, sd["blocks.1.mlp.fc2.weight"])
    # the outputs, bitwise, at several times (t = 1 included)
    g = torch.Generator().manual_seed(1)
    xt = torch.randint(process.input_vocab_size, (4, 12), generator=g)
    noise = torch.randint(process.vocab_size, (4, 12), generator=g) if process.has_noise else None
    if noise is not None:
        xt[:, :6] = noise[:, :6]  # some active positions
    for t in (torch.tensor([0.0, 0.3, 0.77, 1.0]), torch.rand(4, generator=g, dtype=torch.float64)):
        a, b = ours(xt, t, noise), back(xt, t, noise)
        assert torch.equal(a, b) and a.abs().max() > 0.1
    # the config states the conventions
    cfg = json.loads((out / "config.json").read_text())
    d = cfg["ddlm"]
    assert cfg["model_type"] == "ddlm_dit" and d["process"] == process.name and d["prediction"] == ours.prediction
    assert d["process_vocab_size"] == process.vocab_size and d["weights"] == "ema" and d["step"] == 7
    assert d["noise_fusion"] == ("additive" if process.has_noise else None)
    assert d["mask_id"] == (process.vocab_size if process.extra_input_ids else None)
    assert back.conventions["family"] == "ddlm" and back.conventions["weights"].startswith("the folder's only set")


def test_exported_weights_are_the_ema_ones_and_the_dtype_option(tmp_path):
    ckpt = _ckpt(tmp_path, "r", "process=udm")
    out = export_hf(ckpt, tmp_path / "hf", dtype="bfloat16")
    ema, _, _ = ddlm.load(ckpt)
    raw, _, _ = ddlm.load(ckpt, "raw")
    back, _, _ = ddlm.load(out)
    w = back.net.vocab_embed.embedding
    assert torch.equal(w, ema.net.embed.weight.to(torch.bfloat16).float())
    assert not torch.equal(w, raw.net.embed.weight.to(torch.bfloat16).float())
    assert load_file(str(out / "model.safetensors"))["backbone.vocab_embed.embedding"].dtype == torch.bfloat16


def test_command_line_and_refusals(tmp_path, capsys):
    ckpt = _ckpt(tmp_path, "c", "process=mdm")
    assert main(["export", str(ckpt), str(tmp_path / "hf"), "--format", "hf"]) == 0
    assert "exported" in capsys.readouterr().out and (tmp_path / "hf" / "config.json").is_file()
    assert main(["export", str(ckpt), str(tmp_path / "hf"), "--format", "hf"]) == 2  # never overwrites
    assert "already exists" in capsys.readouterr().err
    assert main(["export", str(ckpt), str(tmp_path / "plain")]) == 0  # the default format is ddlm's own
    assert (tmp_path / "plain" / "meta.json").is_file()
    ar = _ckpt(tmp_path, "ar", "process=ar")
    with pytest.raises(ValueError, match="autoregressive baseline"):
        export_hf(ar, tmp_path / "ar-hf")
    conv = _ckpt(tmp_path, "conv", "process=mdm", "model.backbone=conv", "model.heads=null")
    with pytest.raises(ValueError, match="exports DiT runs only"):
        export_hf(conv, tmp_path / "conv-hf")
    d3pm = _ckpt(tmp_path, "d3pm", "process=d3pm", "t_min=0", "objective=d3pm_hybrid", "d3pm.steps=10")
    with pytest.raises(ValueError, match="discrete-time process 'd3pm'"):
        export_hf(d3pm, tmp_path / "d3pm-hf")
    assert not any((tmp_path / f"{n}-hf").exists() for n in ("ar", "conv", "d3pm"))
