"""Demonstrations: ``run`` (the exact oracle on a toy law: the three views of a uniform model, the
bounds, exact sampling) and ``train_demo`` (train the demo model for a few minutes, then sample from
it and from the reference checkpoint shipped with ddlm).

The demo adapts to the machine: it picks the faster of 1 and all CPU threads by timing a few
training steps, training reports its throughput and the steps its time budget allows, and a run far
below the documented step count is flagged. Everything after training (samples, real words, the
reference's bound) is sized to take about a minute on a 2-core CPU and shows a progress bar.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from . import exact, losses
from .conversions import loo_to_denoiser
from .processes import AbsorbingUniformDiffusion, MaskedDiffusion, UniformDiffusion
from .sampling import sample
from .schedules import LinearSchedule


def _row(values) -> str:
    return "  ".join(f"{v:7.4f}" for v in values)


def run(vocab_size: int = 3, length: int = 3, alpha: float = 0.5, seed: int = 0, out=print,
        progress: bool = True) -> dict:
    """Print, for a random toy law, the exact denoiser, LOO and score at one noisy sequence, the
    exact NLL bounds of each objective next to the entropy of p_0, and the TV distance to p_0 of
    samplers driven by the exact oracle. Returns the numbers printed."""
    law = exact.random_law(vocab_size, length, seed=seed)
    g = torch.Generator().manual_seed(seed)
    xt = torch.randint(vocab_size, (1, length), generator=g)
    d = exact.denoiser(law, xt, alpha)[0]
    r = exact.loo(law, xt, alpha)[0]
    s = exact.score(law, xt, alpha)[0]
    out(f"Toy law: K = {vocab_size} tokens, L = {length} positions, Dirichlet(1) over {law.num_states} "
        f"sequences (seed {seed}); H(p_0) = {law.entropy():.4f} nats.")
    out(f"Noisy sequence x_t = {xt[0].tolist()} at alpha_t = {alpha} (uniform diffusion).\n")
    out(f"{'position':>8}  {'view':<26}" + "".join(f"{'y=' + str(y):>9}" for y in range(vocab_size)))
    for i in range(length):
        out(f"{i:>8}  {'denoiser p(x0^i=y | x_t)':<26} " + _row(d[i].exp().tolist()))
        out(f"{'':>8}  {'LOO p(x0^i=y | x_t^-i)':<26} " + _row(r[i].exp().tolist()))
        out(f"{'':>8}  {'score p_t(x^(i<-y))/p_t(x)':<26} " + _row(s[i].exp().tolist()))
    err = float((loo_to_denoiser(r[None], xt, alpha)[0] - d).abs().max())
    out(f"\nLOO -> denoiser conversion vs the oracle: max |error| = {err:.1e}\n")

    h = law.entropy()
    full = LinearSchedule(eps=0.0)  # alpha from 1 to 0: no prior term
    udm, mdm, audm = (cls(vocab_size, full) for cls in (UniformDiffusion, MaskedDiffusion, AbsorbingUniformDiffusion))
    rows = [
        ("UDM plug-in ELBO, fed the LOO", exact.elbo(law, udm, losses.udm_elbo, "loo")),
        ("UDM plug-in ELBO, fed the denoiser", exact.elbo(law, udm, losses.udm_elbo, "denoiser")),
        ("maximal-coupling ELBO, denoiser", exact.elbo(law, udm, losses.max_coupling_elbo, "denoiser")),
        ("MDM ELBO, denoiser", exact.elbo(law, mdm, losses.mdm_elbo)),
        ("AUDM ELBO, posterior", exact.elbo(law, audm, losses.audm_elbo)),
    ]
    out("Exact NLL bounds (integrated over t by quadrature, nats per sequence), E_{x_0 ~ p_0}:")
    out(f"  {'-log p_0 (entropy H)':<38} {h:8.5f}")
    result = {"entropy": h, "conversion_error": err}
    for name, bound in rows:
        value = float((law.p0 * bound).sum())
        out(f"  {name:<38} {value:8.5f}   gap {value - h:+.1e}")
        result[name] = value
    out("\nThe plug-in ELBO is tight only with the LOO posterior; the denoiser double-counts the")
    out("evidence of each position's own token. The maximal-coupling bound is valid but loose.")
    result["sampling"] = sample_demo(law, seed=seed, out=out, progress=progress)
    return result


def sample_demo(law, seed: int = 0, num_samples: int = 20_000, nfes=(4, 16, 64), out=print, progress=True) -> dict:
    """Sample with the exact oracle as the model; print the TV distance to p_0 per sampler and NFE."""
    k = law.vocab_size
    sch = LinearSchedule(eps=0.0)
    cases = [
        ("MDM ancestral", MaskedDiffusion(k, sch), "denoiser", "ancestral"),
        ("UDM ancestral (bridge, LOO)", UniformDiffusion(k, sch), "loo", "ancestral"),
        ("UDM maximal coupling", UniformDiffusion(k, sch), "denoiser", "max_coupling"),
        ("AUDM carry-over", AbsorbingUniformDiffusion(k, sch), "posterior", "ancestral"),
        ("AUDM ReAUDM", AbsorbingUniformDiffusion(k, sch), "posterior", "reaudm"),
        ("ablation: bridge fed the denoiser", UniformDiffusion(k, sch), "denoiser", "bridge_raw_denoiser"),
    ]
    floor = exact.tv_distance(law, law.sample(num_samples, generator=torch.Generator().manual_seed(seed + 1)))
    out(f"\nSampling with the exact oracle as the model: TV distance of {num_samples} samples to p_0")
    out(f"(the TV of {num_samples} iid draws from p_0 itself is {floor:.4f}):")
    out(f"  {'sampler':<36}" + "".join(f"{'nfe ' + str(n):>10}" for n in nfes))
    result = {"floor": floor}
    for name, proc, prediction, sampler in cases:
        model = exact.model(law, proc, prediction)  # declares its prediction; sample reads it
        tvs = []
        for nfe in nfes:
            x = sample(model, proc, num_samples, law.length, nfe, sampler=sampler,
                       generator=torch.Generator().manual_seed(seed), progress=progress)
            tvs.append(exact.tv_distance(law, x))
        out(f"  {name:<36}" + "".join(f"{v:10.4f}" for v in tvs))
        result[name] = tvs
    out("Every exact sampler approaches the noise level as nfe grows; the ablation does not.")
    return result


REFERENCE = Path(__file__).parent / "reference" / "demo-mdm"

#: the demo's default training budget in minutes (the README's first command: about 6 minutes in all)
DEMO_MINUTES = 3.5
#: steps the demo config made in DOCUMENTED_MINUTES minutes on the project's 2-core CPU with both cores free
#: (docs/training.md); a run under half that rate gets a warning
DOCUMENTED_STEPS, DOCUMENTED_MINUTES = (1700, 1900), 4.0
#: samples and NFE of the "real words" measurements (64 samples at NFE 128 in docs/training.md's tables)
WORDS_SAMPLES, WORDS_NFE = 32, 32


def train_demo(minutes: float = DEMO_MINUTES, run_dir: str = "runs/demo-mdm", nfe: int = 128, num_samples: int = 3,
               out=print, progress: bool = True, threads: int | None = None,
               words: tuple[int, int] = (WORDS_SAMPLES, WORDS_NFE), reference: bool = True) -> dict:
    """Train the ``demo-mdm`` config for ``minutes`` more minutes of training on this machine, then
    print its validation bound next to the corpus's unigram entropy, samples of it and how much of
    them is real words; then the same for the reference checkpoint shipped with ddlm.

    ``threads``: torch CPU threads (None: measure a few training steps with 1 thread and with all
    cores and take the faster, which on a busy machine is often 1). ``words``: samples and NFE of the
    real-words measurements. ``reference``: also show the shipped reference.
    """
    from .config import load_config
    from .runs import is_checkpoint_folder, latest_checkpoint, load
    from .train import train

    t_start = time.monotonic()
    done = _recorded_minutes(run_dir)
    cfg = load_config("demo-mdm", [f"run_dir={run_dir}", f"max_minutes={done + minutes}",
                                   f"num_samples={num_samples}", f"sample_nfe={nfe}"])
    out(f"ddlm demo: {minutes:g} minutes of training of the demo masked-diffusion model (config demo-mdm, "
        f"1.3M parameters, character level) in {run_dir}, then its bound and samples, then the shipped "
        f"reference's (about {minutes + 1.5:g} minutes in all on a busy 2-core CPU).")
    if done:
        out(f"Continuing the run: {done:.1f} minutes of training recorded so far.")
    _use_threads(threads, cfg, out)
    metrics = train(cfg, log=out, progress=progress)
    h, cpt, steps = metrics["unigram_entropy"], metrics["chars_per_token"], metrics["step"]
    out(f"\nDemo model after {steps} steps ({metrics['train_minutes']:.1f} minutes of training): validation bound "
        f"{_per_char(metrics['val_nll'], cpt, metrics['val_nll_se'])} (an estimate from {cfg.eval_batches} batches; "
        f"`ddlm eval {run_dir}` scores every block); unigram entropy of the corpus {_per_char(h, cpt)}.")
    if metrics["val_nll"] >= h:
        out("WARNING: the bound is not below the unigram entropy: the model has learnt no more than letter "
            "frequencies yet. Run `ddlm demo` again to train on.")
    warning = few_steps_warning(steps, metrics["train_minutes"])
    if warning:
        out(warning)
    result = {"demo": metrics}
    demo_model, demo_process, demo_tok = load(latest_checkpoint(run_dir))
    out(f"Samples of the demo model (nfe {nfe}):")
    x = sample(demo_model, demo_process, num_samples, cfg.data.block_size, nfe, prediction=demo_model.prediction,
               generator=torch.Generator().manual_seed(0), progress=progress)
    result["demo_samples"] = [demo_tok.decode(row.tolist()) for row in x]
    for i, text in enumerate(result["demo_samples"]):
        out(f"demo sample {i}: {text!r}")
    held_out = _known(_held_out_text(cfg, tokenizer=None))
    words_found = real_words(demo_model, demo_process, demo_tok, cfg.data.block_size, words[1],
                             num_samples=words[0], progress=progress)
    out(f"Real words: {_pct(words_found['known_fraction'])} of the words in {words[0]} demo samples "
        f"(nfe {words[1]}) occur in the corpus; held-out text cut into the same blocks: "
        f"{_pct(held_out['known_fraction'])}.")
    result["demo_words"], result["held_out_words"] = words_found, held_out
    if not reference:
        return _done(result, t_start, out)
    if not is_checkpoint_folder(REFERENCE):
        out(f"(no reference checkpoint at {REFERENCE})")
        return _done(result, t_start, out)
    result.update(_reference(cfg, nfe, num_samples, words, out, progress))
    return _done(result, t_start, out)


def few_steps_warning(steps: int, minutes: float) -> str | None:
    """A warning when ``steps`` in ``minutes`` of training is under half the documented rate (the low end
    of ``DOCUMENTED_STEPS`` in ``DOCUMENTED_MINUTES``), else None."""
    expected = DOCUMENTED_STEPS[0] * minutes / DOCUMENTED_MINUTES
    if steps >= 0.5 * expected:
        return None
    return (f"WARNING: {steps} steps in {minutes:.1f} minutes of training is far fewer than documented "
            f"({DOCUMENTED_STEPS[0]:,}-{DOCUMENTED_STEPS[1]:,} steps in {DOCUMENTED_MINUTES:g} minutes on a 2-core "
            "CPU with both cores free): this machine is slower or busier, and the model is less trained than the "
            "README's. Run `ddlm demo` again to train on (the budget adds up), or "
            "`ddlm train demo-mdm max_minutes=30`.")


def _reference(cfg, nfe: int, num_samples: int, words: tuple[int, int], out, progress: bool) -> dict:
    """The shipped reference: its bound (estimated as the demo model's), samples and real words."""
    from .bound import chars_per_token
    from .checkpoint import load_checkpoint
    from .data.prepare import prepare_data
    from .evaluate.bound import model_bound
    from .runs import load

    model, process, tokenizer = load(REFERENCE)
    ref = load_checkpoint(REFERENCE).metrics
    out(f"\nReference checkpoint shipped with ddlm ({REFERENCE.name}: {ref.get('description', '')}), "
        f"{ref['step']} steps, {_minutes(ref.get('train_minutes'))} of training:")
    _, _, val_blocks = prepare_data(cfg, tokenizer)
    bound = model_bound(model, val_blocks, batch_size=32, num_batches=cfg.eval_batches, seed=0, t_min=cfg.t_min,
                        progress=progress)  # as the demo model's estimate: the same blocks and batches
    cpt = chars_per_token(val_blocks[: cfg.eval_batches * 32], tokenizer)
    out(f"validation bound {_per_char(bound['nats_per_token'], cpt, bound['se'])} (an estimate from "
        f"{cfg.eval_batches} batches, as the demo model's; `ddlm eval {REFERENCE} --passes 4` scores every block: "
        "1.839 +- 0.012 nats/char).")
    ref = dict(ref, val_nll_estimate=bound["nats_per_token"], val_nll_estimate_se=bound["se"])
    x = sample(model, process, num_samples, cfg.data.block_size, nfe, prediction=model.prediction,
               generator=torch.Generator().manual_seed(0), progress=progress)
    for i, row in enumerate(x):
        out(f"reference sample {i} (nfe {nfe}): {tokenizer.decode(row.tolist())!r}")
    result = {"reference": ref}
    found = real_words(model, process, tokenizer, cfg.data.block_size, words[1], num_samples=words[0],
                       progress=progress)
    out(f"Real words: {_pct(found['known_fraction'])} of the words in {words[0]} reference samples (nfe {words[1]}) "
        "occur in the corpus (docs/training.md has more samples, at temperatures 1 and 0.8).")
    result["reference_words"] = found
    return result


def _done(result: dict, t_start: float, out) -> dict:
    result["seconds"] = time.monotonic() - t_start
    out(f"\nThe demo took {result['seconds'] / 60:.1f} minutes in all (start-up not counted).")
    return result


def _per_char(nats_per_token: float, chars_per_token: float, se: float | None = None) -> str:
    """'2.419 +- 0.038 nats/char (3.490 bits/char)'."""
    per_char = nats_per_token / chars_per_token
    pm = f" +- {se / chars_per_token:.3f}" if se is not None else ""
    return f"{per_char:.3f}{pm} nats/char ({per_char / math.log(2):.3f} bits/char)"


def _recorded_minutes(run_dir: str) -> float:
    """Training minutes recorded by the run's latest checkpoint (0 for a new run)."""
    from .checkpoint import load_checkpoint
    from .runs import latest_checkpoint

    path = latest_checkpoint(run_dir)
    if path is None:
        return 0.0
    return float((load_checkpoint(path).metrics or {}).get("train_minutes", 0.0))


def _use_threads(threads: int | None, cfg, out) -> int:
    """Set torch's CPU threads: ``threads``, or the faster of 1 and all cores over a few training steps
    of the demo model (on a busy machine several threads wait for each other and run slower than one)."""
    cores = torch.get_num_threads()
    if threads is None:
        threads = 1
        if cores > 1:
            one = _seconds_per_step(cfg, 1)
            many = _seconds_per_step(cfg, cores, give_up_after=2 * one)
            threads = cores if many < one else 1
            out(f"CPU threads: {threads} (a training step took {one:.2f} s with 1 thread, {many:.2f} s with {cores})")
    torch.set_num_threads(threads)
    return threads


def _seconds_per_step(cfg, threads: int, steps: int = 3, give_up_after: float = math.inf) -> float:
    """Seconds per training step of the demo model with ``threads`` torch threads (median of ``steps``
    after one warm-up, on random tokens); stops at the first step slower than ``give_up_after`` (three
    times that for the warm-up step)."""
    from .bound import corrupt, token_losses
    from .models.factory import build_model

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        model = build_model(cfg, 80)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        g = torch.Generator().manual_seed(0)
        x0 = torch.randint(80, (cfg.batch_size, cfg.data.block_size), generator=g)
        t = torch.rand(cfg.batch_size, generator=g)
        times = []
        for i in range(steps + 1):
            start = time.perf_counter()
            xt, noise = corrupt(model.process, x0, t, g)
            loss = token_losses(model, model.process.elbo, x0, xt, noise, t).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            seconds = time.perf_counter() - start
            if i == 0 and seconds > 3 * give_up_after:  # the warm-up step alone shows it is slower
                return seconds
            if i > 0:
                times.append(seconds)
                if seconds > give_up_after:
                    return seconds
        return sorted(times)[len(times) // 2]
    finally:
        torch.set_num_threads(before)


def _minutes(value) -> str:
    return "an unrecorded time" if value is None else f"{float(value):.0f} minutes"


def _pct(fraction) -> str:
    return "n/a" if fraction is None else f"{100 * fraction:.0f}%"


def _held_out_text(cfg, tokenizer=None, num_blocks: int = 128) -> list[str]:
    from .data.prepare import prepare_data

    tokenizer, _, val = prepare_data(cfg, tokenizer)
    return [tokenizer.decode(row) for row in val[:num_blocks].tolist()]


def _known(texts: list[str]) -> dict:
    from .data.corpora import default_corpus
    from .evaluate.metrics import known_word_fraction

    return known_word_fraction(texts, default_corpus())


def real_words(model, process, tokenizer, length: int, nfe: int, num_samples: int = 64, temperature: float = 1.0,
               seed: int = 1, progress: bool = False) -> dict:
    """How much of a model's samples is made of real words: ``known_word_fraction`` of ``num_samples``
    ancestral samples against the embedded corpus (whose held-out blocks score about 95%: words cut
    at the block edges are the misses). An autoregressive model (``process`` None) generates
    ``length`` tokens after BOS (``length`` - 1 when its context holds no more; ``nfe`` is unused)."""
    from .config import is_autoregressive

    g = torch.Generator().manual_seed(seed)
    if is_autoregressive(model):
        bos = torch.full((num_samples, 1), tokenizer.bos_id, dtype=torch.long)
        total = min(length + 1, model.config.max_len)
        x = model.eval().generate(bos, total, temperature=temperature, generator=g)[:, 1:]
    else:
        x = sample(model, process, num_samples, length, nfe, prediction=model.prediction, temperature=temperature,
                   generator=g, progress=progress)
    words = _known([tokenizer.decode(row.tolist()) for row in x])
    return dict(words, num_samples=num_samples, nfe=nfe, temperature=temperature, seed=seed)
