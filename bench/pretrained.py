"""Forward-pass speed of an imported released-checkpoint DiT against ddlm's own DiT of the same size, on CPU.

Both networks compute the same function: ddlm's DiT (the ``small`` preset: 768 hidden, 12 blocks, 12
heads, cond_dim 128) with random weights is written in the released checkpoints' layout
(``ddlm.pretrained.export_hf``'s mapping) and loaded into ``ddlm.models.imported_dit.ImportedDiT``;
the script first checks that the two outputs are bitwise equal, then times forward passes alternately
(warm-up excluded) and reports medians. Rows:

- "ddlm DiT": ``DiffusionModel`` (sigma from t, the DiT);
- "imported DiT (ddlm convention)": the ``ImportedModel`` of that export (the same computation through
  the importer's backbone);
- "imported DiT (MDLM convention)": the same backbone with MDLM's conventions (50,258 rows, zeroed time
  conditioning, the ddlm view a log-softmax over the first 50,257 rows): what the model that
  ``ddlm.load(mdlm.ckpt)`` returns runs per forward pass.

    .venv/bin/python bench/pretrained.py                       # GPT-2 vocabulary, L = 256, batch 2, 1 thread
    .venv/bin/python bench/pretrained.py --length 1024 --batch 1 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def build(vocab: int, length: int, seed: int = 0):
    from ddlm.models.diffusion import DiffusionModel
    from ddlm.models.imported_dit import ImportedDiT, ImportedDiTConfig
    from ddlm.pretrained.export_hf import _backbone_state
    from ddlm.pretrained.families import FAMILIES
    from ddlm.pretrained.model import ImportedModel
    from ddlm.pretrained.resolve import Spec

    ours = DiffusionModel.build("mdm", vocab, length, preset="small", time_conditioning=False)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ours.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    cfg = ours.net.config
    spec = dict(rows=vocab + 1, hidden=cfg.hidden, blocks=cfg.blocks, heads=cfg.heads, mlp_ratio=cfg.mlp_ratio,
                cond_dim=cfg.cond_dim, freq_dim=256, length=length, eps=1e-3, t_min=1e-3, time_conditioning=False)

    def imported(family: str, output_rows: int, state: dict):
        net = ImportedDiT(ImportedDiTConfig(vocab_size=vocab + 1, output_size=output_rows, hidden=cfg.hidden,
                                            blocks=cfg.blocks, heads=cfg.heads, mlp_ratio=cfg.mlp_ratio,
                                            cond_dim=cfg.cond_dim, max_len=length, time_conditioning=False))
        net.load_state_dict(state)
        s = Spec(family=FAMILIES[family], process="mdm", vocab_size=vocab, output_rows=output_rows,
                 prediction="denoiser", mask_id=vocab, **spec)
        return ImportedModel(net, ours.process, s, {}).eval()

    state = _backbone_state(ours.net)
    same = imported("ddlm", vocab, state)
    mdlm_state = dict(state)  # MDLM's output layer has a MASK row too
    mdlm_state["output_layer.linear.weight"] = torch.cat([state["output_layer.linear.weight"],
                                                          torch.zeros(1, cfg.hidden)])
    mdlm_state["output_layer.linear.bias"] = torch.cat([state["output_layer.linear.bias"], torch.zeros(1)])
    mdlm = imported("mdlm", vocab + 1, mdlm_state)
    return ours.eval(), same, mdlm


@torch.no_grad()
def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=50257, help="K data tokens (GPT-2: 50257)")
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7, help="timed passes per model (alternating)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    ours, same, mdlm = build(args.vocab, args.length)
    g = torch.Generator().manual_seed(1)
    xt = torch.randint(args.vocab + 1, (args.batch, args.length), generator=g)
    t = torch.full((args.batch,), 0.5, dtype=torch.float64)
    a, b = ours(xt, t), same(xt, t)
    assert torch.equal(a, b), "the imported backbone must compute ddlm's DiT bit for bit"
    models = {"ddlm DiT": ours, "imported DiT (ddlm convention)": same, "imported DiT (MDLM convention)": mdlm}
    for m in models.values():  # warm-up
        m(xt, t)
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(args.repeats):
        for name, m in models.items():
            start = time.perf_counter()
            m(xt, t)
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["ddlm DiT"])
    params = sum(p.numel() for p in ours.parameters())
    print(f"DiT small ({params / 1e6:.1f}M parameters), vocabulary {args.vocab}, batch {args.batch} x L {args.length}, "
          f"{args.threads} thread(s), {args.repeats} alternating passes (median)")
    print(f"{'model':34s} {'median s':>9s} {'min s':>8s} {'vs ddlm':>8s}")
    rows = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        rows[name] = {"median_s": med, "min_s": min(ts), "ratio": med / base}
        print(f"{name:34s} {med:9.3f} {min(ts):8.3f} {med / base:8.3f}")
    return {"args": vars(args), "parameters": params, "rows": rows}


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
