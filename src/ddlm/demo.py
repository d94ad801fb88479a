"""Demonstrations: ``run`` (the exact oracle on a toy law: the three views of a uniform model, the
bounds, exact sampling) and ``train_demo`` (train the demo model for a few minutes, then sample from
it and from the reference checkpoint shipped with ddlm)."""

from __future__ import annotations

import math
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


def train_demo(minutes: float = 4.0, run_dir: str = "runs/demo-mdm", nfe: int = 128, num_samples: int = 3,
               out=print) -> dict:
    """Train the ``demo-mdm`` config for ``minutes`` on this machine, print its validation bound next
    to the corpus's unigram entropy and samples; then the same for the shipped reference checkpoint."""
    from .config import load_config
    from .runs import is_checkpoint_folder, load
    from .train import train

    cfg = load_config("demo-mdm", [f"run_dir={run_dir}", f"max_minutes={minutes}", f"num_samples={num_samples}",
                                   f"sample_nfe={nfe}"])
    out(f"Training the demo masked-diffusion model (config demo-mdm) for up to {minutes} minutes in {run_dir}")
    out("(run the command again to continue training; `ddlm train demo-mdm max_minutes=60` trains longer).")
    metrics = train(cfg, log=out)
    h = metrics["unigram_entropy"]
    out(f"\nDemo model after {metrics['step']} steps: validation bound {metrics['val_nll']:.3f} +- "
        f"{metrics['val_nll_se']:.3f} nats/char ({metrics['val_nll'] / math.log(2):.3f} bits/char); "
        f"unigram entropy of the corpus {h:.3f} nats/char.")
    result = {"demo": metrics}
    held_out = _held_out_text(cfg, tokenizer=None)
    demo_model, demo_process, demo_tok = load(run_dir)
    words = real_words(demo_model, demo_process, demo_tok, cfg.data.block_size, nfe)
    out(f"Real words: {_pct(words['known_fraction'])} of the words in {words['num_samples']} demo samples "
        f"(nfe {nfe}) occur in the corpus; held-out text cut into the same blocks: "
        f"{_pct(_known(held_out)['known_fraction'])}.")
    result["demo_words"] = words
    result["held_out_words"] = _known(held_out)
    if not is_checkpoint_folder(REFERENCE):
        out(f"(no reference checkpoint at {REFERENCE})")
        return result
    model, process, tokenizer = load(REFERENCE)
    from .checkpoint import load_checkpoint

    ref = load_checkpoint(REFERENCE).metrics
    out(f"\nReference checkpoint shipped with ddlm ({REFERENCE.name}: {ref.get('description', '')}):")
    from .data.prepare import prepare_data
    from .evaluate.bound import model_bound

    _, _, val_blocks = prepare_data(cfg, tokenizer)
    bound = model_bound(model, val_blocks, batch_size=32, seed=0, t_min=cfg.t_min)  # every block once
    out(f"validation bound {bound['nats_per_token']:.3f} +- {bound['se']:.3f} nats/char "
        f"({bound['bits_per_token']:.3f} bits/char, all {bound['blocks']} validation blocks) after {ref['step']} "
        f"steps, {_minutes(ref.get('train_minutes'))} of training.")
    ref = dict(ref, val_nll_all_blocks=bound["nats_per_token"], val_nll_all_blocks_se=bound["se"])
    x = sample(model, process, num_samples, cfg.data.block_size, nfe, prediction=model.prediction,
               generator=torch.Generator().manual_seed(0), progress=True)
    for i, row in enumerate(x):
        out(f"reference sample {i} (nfe {nfe}): {tokenizer.decode(row.tolist())!r}")
    for temperature in (1.0, 0.8):
        words = real_words(model, process, tokenizer, cfg.data.block_size, nfe, temperature=temperature)
        out(f"Real words: {_pct(words['known_fraction'])} of the words in {words['num_samples']} reference "
            f"samples (nfe {nfe}, temperature {temperature}) occur in the corpus.")
        result[f"reference_words_T{temperature}"] = words
    result["reference"] = ref
    return result


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
               seed: int = 1) -> dict:
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
                   generator=g)
    words = _known([tokenizer.decode(row.tolist()) for row in x])
    return dict(words, num_samples=num_samples, nfe=nfe, temperature=temperature, seed=seed)
