"""Training throughput of DiT small at L = 1,024 (tokens/s, model-FLOPs utilisation) and the prepared-data
loader's tokens/s against it.

    .venv/bin/python bench/throughput.py                                # CPU, batch 1
    .venv/bin/python bench/throughput.py --device cuda --batch 32       # a GPU: bf16 autocast, fused AdamW

Training step: the training loop's own pieces (``ddlm.bound.stratified_times``, ``corrupt``,
``token_losses``) on DiT small (768 x 12, 12 heads; MDM, GPT-2's 50,257 tokens, L = 1,024), forward,
backward and AdamW (fused on CUDA), bf16 autocast on CUDA. Model FLOPs per token: 6 N + 12 l d L
(N: the parameters of every matrix multiply, the output head included, the embedding tables not;
l blocks, d width; the second term is attention's QK^T and AV, forward and backward). MFU = achieved
model FLOP/s / peak FLOP/s, the peak being the device's dense bf16 figure on known GPUs, and on a
CPU the float32 matrix-multiply rate measured here (a 2,048^3 torch.mm) with the same threads.

Loader: a prepared corpus (``ddlm prepare``, character level, about 20 M tokens, built here in a
temporary folder) read by ``BlockSet.batch`` exactly as the training loop reads it: the global
batch of each step (512 blocks of 1,024 under ``wrap`` unless ``--loader-batch``), in the shuffled
order, through ``pread`` (no memory map), on one thread. Every rank reads the whole global batch.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ddlm.bound import corrupt, stratified_times, token_losses
from ddlm.models.diffusion import DiffusionModel

GPU_PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12}


def model_flops_per_token(model, length: int) -> float:
    net = model.net
    matmul = sum(m.weight.numel() for m in net.modules() if isinstance(m, torch.nn.Linear))
    cfg = net.config
    return 6.0 * matmul + 12.0 * cfg.blocks * cfg.hidden * length


def peak_flops(device: str) -> tuple[float, str]:
    if device == "cuda":
        name = torch.cuda.get_device_name()
        for key, value in GPU_PEAK_BF16.items():
            if key in name:
                return value, f"{name}, dense bf16 peak {value / 1e12:.0f} TFLOP/s (datasheet)"
    a = torch.randn(2048, 2048, device=device)
    b = torch.randn(2048, 2048, device=device)
    torch.mm(a, b)
    times = []
    for _ in range(5):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.mm(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    rate = 2 * 2048**3 / min(times)
    return rate, f"measured float32 torch.mm 2048^3: {rate / 1e9:.1f} GFLOP/s ({torch.get_num_threads()} threads)"


def train_throughput(device: str, batch: int, length: int, steps: int, compile_model: bool) -> dict:
    torch.manual_seed(0)
    model = DiffusionModel.build("mdm", 50257, length, preset="small").to(device)
    net = torch.compile(model) if compile_model else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    g = torch.Generator().manual_seed(0)

    def step(i: int) -> float:
        x0 = torch.randint(50257, (batch, length), generator=g)
        t = stratified_times(float(torch.rand((), generator=g, dtype=torch.float64)), torch.arange(batch), batch, 1e-3)
        xt, noise = corrupt(model.process, x0, t, g)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = token_losses(net, "mdm_elbo", x0.to(device), xt.to(device), None, t.to(device)).mean()
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    step(0)  # warm-up (and compilation)
    times = [step(i + 1) for i in range(steps)]
    sec = statistics.median(times)
    return {"seconds_per_step": sec, "tokens_per_s": batch * length / sec,
            "flops_per_token": model_flops_per_token(model, length),
            "parameters": sum(p.numel() for p in model.parameters())}


def loader_throughput(batch: int, length: int, steps: int) -> dict:
    from ddlm.data.prepare_corpus import prepare_corpus
    from ddlm.data.prepared import open_prepared

    with tempfile.TemporaryDirectory() as tmp:
        words = "the quick brown fox jumps over the lazy dog and then some more words follow here".split()
        g = torch.Generator().manual_seed(0)
        idx = torch.randint(len(words), (4_000_000,), generator=g).tolist()
        lines = [" ".join(words[i] for i in idx[j : j + 50]) for j in range(0, len(idx), 50)]
        (Path(tmp) / "c.txt").write_text("\n".join(lines))
        prepare_corpus(Path(tmp) / "c.txt", Path(tmp) / "p", tokenizer="char", unit="line", split="last:100",
                       progress=False, log=lambda *_: None)
        blocks = open_prepared(Path(tmp) / "p").blocks("train", length)
        blocks.batch(0, batch, 0)
        times = []
        for s in range(steps):
            t0 = time.perf_counter()
            blocks.batch(s + 1, batch, 0)
            times.append(time.perf_counter() - t0)
        sec = statistics.median(times)
        return {"blocks": len(blocks), "seconds_per_batch": sec, "tokens_per_s": batch * length / sec}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--loader-batch", type=int, default=512, help="global batch the loader reads per step")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    peak, peak_note = peak_flops(args.device)
    tr = train_throughput(args.device, args.batch, args.length, args.steps, args.compile)
    ld = loader_throughput(args.loader_batch, args.length, max(3, args.steps))
    mfu = tr["tokens_per_s"] * tr["flops_per_token"] / peak
    dev = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}; {dev}; peak: {peak_note}")
    print(f"DiT small (MDM, {tr['parameters'] / 1e6:.1f}M parameters), L {args.length}, batch {args.batch}"
          f"{', torch.compile' if args.compile else ''}: {tr['seconds_per_step']:.2f} s/step, "
          f"{tr['tokens_per_s']:,.0f} tokens/s, {tr['flops_per_token'] / 1e9:.2f} GFLOP/token, MFU {100 * mfu:.1f}%")
    print(f"loader (BlockSet.batch, wrap, {args.loader_batch} x {args.length} per step, {ld['blocks']:,} blocks): "
          f"{ld['seconds_per_batch'] * 1e3:.1f} ms/batch, {ld['tokens_per_s']:,.0f} tokens/s = "
          f"{ld['tokens_per_s'] / tr['tokens_per_s']:,.0f}x the model's consumption")


if __name__ == "__main__":
    main()
