"""``ddlm probe``: the plot and the command line end to end (ddlm.evaluate.probe_cli)."""

import argparse
import json

import pytest
import torch

import ddlm
from ddlm import exact
from ddlm.config import load_config
from ddlm.evaluate import probe
from ddlm.evaluate import probe_cli as P
from ddlm.train import train

# ---- plot and command ---------------------------------------------------------------------------

def test_plot_writes_a_png(tmp_path):
    law, udm = exact.random_law(3, 3, seed=7, concentration=0.7), ddlm.UniformDiffusion(3)
    model = exact.model(law, udm, "denoiser")
    model.output = "loo"  # a denoiser posing as a LOO: a positive sensitivity
    g = torch.Generator().manual_seed(0)
    states = probe.trajectory(exact.model(law, udm, "loo"), udm, 12, 3, 6, prediction="loo", generator=g)
    res = probe.loo_sensitivity(model, udm, states, positions_per_sequence=2, generator=g)
    P.plot_probe({"denoiser as LOO": res, "exact": [dict(r, mean_tv=0.0, se_tv=0.0) for r in res]},
                 tmp_path / "a.png")
    P.plot_probe(res, tmp_path / "b.png")
    for name in ("a.png", "b.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    with pytest.raises(ValueError, match="non-empty list of dicts"):
        P.plot_probe({"x": []}, tmp_path / "c.png")


TEXT = ("the quick brown fox jumps over the lazy dog. " * 40 + "\n\n") * 3


def _tiny_run(tmp_path, name, process):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    over = [f"run_dir={tmp_path / name}", f"data.corpus={corpus}", "data.block_size=8", "model.hidden=32",
            "model.blocks=1", "model.heads=2", "batch_size=4", "max_steps=2", "eval_every=2", "save_every=2",
            "eval_batches=1", "optim.warmup_steps=1", "log_every=1", f"process={process}"]
    train(load_config(None, over), progress=False, log=lambda *_: None)
    return tmp_path / name


def _parser():
    parser = argparse.ArgumentParser(prog="ddlm")
    P.add_command(parser.add_subparsers(dest="command", required=True))
    return parser


def test_command_end_to_end(tmp_path, capsys):
    run = _tiny_run(tmp_path, "udm", "udm")
    out = tmp_path / "out"
    argv = ["probe", str(run), "--nfe", "3", "--num-samples", "3", "--positions", "2", "--seed", "5",
            "--out", str(out), "--no-progress"]
    args = _parser().parse_args(argv)
    assert args.func(args) == 0
    rec = json.loads((out / "probe.json").read_text())
    assert rec["settings"] == {"nfe": 3, "num_samples": 3, "positions_per_sequence": 2, "seed": 5,
                               "sampler": "ancestral", "length": None, "batch_size": 256, "device": "cpu"}
    (r,) = rec["runs"]
    assert r["run"] == str(run) and r["step"] == 2 and r["checkpoint"].endswith("step_000002")
    assert r["settings"]["length"] == 8 and r["settings"]["output"] == "loo" and r["settings"]["nfe"] == 3
    assert len(r["states"]) == 3 and all(s["num"] == 3 * 2 for s in r["states"])
    assert r["mean_tv"] > 0  # an untrained network is not an exact LOO
    assert (out / "probe.png").read_bytes()[:4] == b"\x89PNG"
    before = (out / "probe.json").read_bytes()
    args = _parser().parse_args(argv)
    with pytest.raises(FileExistsError, match=str(out / "probe.json")):
        args.func(args)
    assert (out / "probe.json").read_bytes() == before
    args = _parser().parse_args(argv[:-1] + ["--overwrite", "--no-progress", "--seed", "6"])
    assert args.func(args) == 0
    assert json.loads((out / "probe.json").read_text())["settings"]["seed"] == 6
    # a single run folder without --out writes to RUN/probe
    args = _parser().parse_args(["probe", str(run), "--nfe", "2", "--num-samples", "2", "--no-progress"])
    assert args.func(args) == 0 and json.loads((run / "probe" / "probe.json").read_text())["runs"][0]["step"] == 2
    args = _parser().parse_args(["probe", str(run), str(run), "--out", str(tmp_path / "o1")])
    with pytest.raises(ValueError, match="runs must be distinct"):
        args.func(args)
    # errors name the run
    args = _parser().parse_args(["probe", str(tmp_path / "missing"), "--out", str(tmp_path / "o2")])
    with pytest.raises(FileNotFoundError, match="missing"):
        args.func(args)
    mdm = _tiny_run(tmp_path, "mdm", "mdm")
    args = _parser().parse_args(["probe", str(mdm), "--out", str(tmp_path / "o3")])
    with pytest.raises(ValueError, match=f"run '{mdm}' has process MDM.*UDM\\) only"):
        args.func(args)
    assert not (tmp_path / "o3").exists()


@pytest.mark.filterwarnings("ignore::ddlm.pretrained.SkippedObjectsWarning")
def test_probe_of_released_uniform_checkpoints(tmp_path):
    from _pretrained import MDLM, SEDD_UNIFORM, UDM_LOO

    out = tmp_path / "out"
    argv = ["probe", str(UDM_LOO), str(SEDD_UNIFORM), "--nfe", "3", "--num-samples", "2", "--positions", "2",
            "--out", str(out), "--no-progress", "--weights", "raw"]
    args = _parser().parse_args(argv)
    assert args.func(args) == 0
    rec = json.loads((out / "probe.json").read_text())
    loo, sedd = rec["runs"]
    assert loo["weights"] == sedd["weights"] == "raw" and loo["run_info"]["imported"]["weights"] == "raw"
    assert loo["settings"]["output"] == "loo" and sedd["settings"]["output"] == "score"  # the probe converts
    assert loo["settings"]["length"] == 16 and loo["mean_tv"] > 0 and sedd["mean_tv"] > 0
    # a masked-diffusion checkpoint is refused before its weights are read
    args = _parser().parse_args(["probe", str(MDLM), "--out", str(tmp_path / "x"), "--no-progress"])
    with pytest.raises(ValueError, match="has process MDM"):
        args.func(args)
