"""DDP vs FSDP under torchrun: the training state each process holds, its peak memory and step time.

    .venv/bin/python bench/parallel.py                          # DiT small (768 x 12), 2 processes, CPU
    .venv/bin/python bench/parallel.py --preset tiny --nproc 2 --steps 5

Each mode runs ``torchrun --nproc-per-node N`` on this script (gloo on CPU), builds the same MDM DiT
(character vocabulary, blocks of 64), wraps it with ``ddlm.parallel.Parallel`` exactly as
``ddlm.train`` does (EMA included) and takes AdamW steps on the MDM ELBO. Reported per process:
the bytes of training state it holds (weights + gradients + AdamW moments + EMA, counted from the
local tensors, so exact), the rise of its peak RSS over the run (VmHWM, reset after imports) and of
its RSS at the end (the largest over the processes), and the median step time. Each process builds
the full model before sharding it (the EMA is built sharded), so the peak includes one unsharded copy
of the weights. Step times on a loaded 2-core machine are indicative only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _rss(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status (Linux only)")


def _local_bytes(tensors) -> int:
    total = 0
    for t in tensors:
        if t is None:
            continue
        t = t.to_local() if hasattr(t, "to_local") else t
        total += t.numel() * t.element_size()
    return total


def worker(args) -> None:
    import torch
    import torch.distributed as dist

    from ddlm.bound import token_losses
    from ddlm.models.diffusion import DiffusionModel
    from ddlm.parallel import Parallel, setup_distributed

    d = setup_distributed("cpu")
    _reset_peak_rss()
    base = _rss("VmRSS")
    torch.manual_seed(0)

    def build():
        return DiffusionModel.build("mdm", 78, args.length, preset=args.preset)

    model = build()
    if args.mode == "fsdp":  # as ddlm.train does
        with torch.device("meta"):
            ema = build()
    else:
        ema = build()
        ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    par = Parallel(args.mode, d, model, ema, make_eval_copy=lambda: None)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    per_rank = args.batch // d.world
    times = []
    for _step in range(args.steps):
        x0 = torch.randint(78, (args.batch, args.length), generator=g)
        t = torch.rand(args.batch, generator=g, dtype=torch.float64) * 0.999 + 0.001
        xt = model.process.corrupt(x0, t, generator=g).xt
        rows = slice(d.rank * per_rank, (d.rank + 1) * per_rank)
        dist.barrier()
        start = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        loss = token_losses(par.forward_module(), "mdm_elbo", x0[rows], xt[rows], None, t[rows]).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=False):
                pe.lerp_(pm, 0.001)
        dist.barrier()
        times.append(time.perf_counter() - start)
    params = list(model.parameters())
    state = (_local_bytes(params) + _local_bytes(p.grad for p in params) + _local_bytes(ema.parameters())
             + _local_bytes(v for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0))
    record = {"rank": d.rank, "state_bytes": state, "peak_rise": _rss("VmHWM") - base, "end_rise": _rss("VmRSS") - base,
              "step_s": statistics.median(times[1:] or times),
              "params": sum(p.numel() for p in params)}
    records = [None] * d.world
    dist.all_gather_object(records, record)
    if d.main:
        print("RESULT " + json.dumps(records), flush=True)
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small", choices=["tiny", "small", "medium"])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=4, help="global batch (blocks)")
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--modes", default="ddp,fsdp")
    p.add_argument("--port", type=int, default=29631)
    p.add_argument("--mmap-threshold", type=int, default=65536,
                   help="glibc MALLOC_MMAP_THRESHOLD_ for both modes (0: glibc's default, whose dynamic threshold "
                        "keeps freed communication buffers resident and hides what sharding saves)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="ddp", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    if args.batch % args.nproc:
        p.error(f"--batch {args.batch} must be a multiple of --nproc {args.nproc}")
    rows = []
    for i, mode in enumerate(args.modes.split(",")):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(args.nproc),
               "--master-port", str(args.port + i), str(Path(__file__).resolve()), "--worker", "--mode", mode,
               "--preset", args.preset, "--steps", str(args.steps), "--batch", str(args.batch),
               "--length", str(args.length)]
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(args.mmap_threshold)) if args.mmap_threshold else None
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode != 0:
            sys.exit(f"{mode} failed:\n{out.stderr[-3000:]}")
        line = next(s for s in out.stdout.splitlines() if s.startswith("RESULT "))
        records = json.loads(line[len("RESULT "):])
        rows.append((mode, records))
    print(f"DiT {args.preset}, MDM, vocab 78, L = {args.length}, global batch {args.batch}, {args.nproc} processes "
          f"(gloo, CPU), {rows[0][1][0]['params'] / 1e6:.1f}M parameters, "
          f"MALLOC_MMAP_THRESHOLD_={args.mmap_threshold or 'default'}\n")
    print("| mode | training state per process (MB) | peak RSS rise (MB) | RSS rise at the end (MB) "
          "| step time (s, median) |")
    print("|---|---|---|---|---|")
    for mode, records in rows:
        state = max(r["state_bytes"] for r in records) / 2**20
        peak = max(r["peak_rise"] for r in records) / 2**20
        end = max(r["end_rise"] for r in records) / 2**20
        step = max(r["step_s"] for r in records)
        print(f"| {mode.upper()} | {state:.0f} | {peak:.0f} | {end:.0f} | {step:.2f} |")


if __name__ == "__main__":
    main()
