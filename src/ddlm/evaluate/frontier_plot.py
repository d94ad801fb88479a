"""The plot of a generative frontier (``ddlm.evaluate.frontier``): the CSV's points grouped into curves,
gen-PPL against sample entropy, one panel per NFE."""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

from .._io import atomic_write_bytes
from .frontier import KEY_FIELDS


def _curve_name(row: dict, varying: str) -> str:
    parts = [row["label"], row["sampler"]]
    if row["nfe"]:
        parts.append(f"nfe {row['nfe']}")
    if row["temperature_on"]:
        parts.append(f"T on {row['temperature_on']}")
    if row["corrector"]:
        c = json.loads(row["corrector"])
        parts.append(f"Gibbs {c['sweeps']}x k={c['k']} {c['selection']}")
    if row["remasking"]:
        parts.append(f"remask {json.loads(row['remasking'])['kind']}")
    if str(row["seed"]) != "0":
        parts.append(f"seed {row['seed']}")
    if row.get("mauve_reference"):
        parts.append("with MAUVE")
    fixed = "top_p" if varying == "temperature" else "temperature"
    if float(row[fixed]) != 1.0:
        parts.append(f"{'p' if fixed == 'top_p' else 'T'}={float(row[fixed]):g}")
    return ", ".join(parts)


def curves(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows grouped into curves: same run/sampler/NFE/options, ordered along the swept value
    (temperature, or top-p when the temperatures are all equal within a group)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        fixed = tuple(r[f] for f in KEY_FIELDS if f not in ("temperature", "top_p")) + (r["label"],)
        groups.setdefault(fixed, []).append(r)
    out = {}
    for members in groups.values():
        varying = "temperature" if len({m["temperature"] for m in members}) > 1 else "top_p"
        # a group may also hold a second sweep of the other knob: split on the fixed knob's value
        fixed_knob = "top_p" if varying == "temperature" else "temperature"
        for value in sorted({m[fixed_knob] for m in members}, key=float):
            curve = sorted((m for m in members if m[fixed_knob] == value), key=lambda m: float(m[varying]))
            out[_curve_name(curve[0], varying)] = [dict(m, _varying=varying) for m in curve]
    return out


def plot_frontier(rows: list[dict], path: str | os.PathLike, title: str | None = None) -> Path:
    """Gen-PPL (log scale) against mean sample entropy, one line per curve, points labelled with the
    swept value and error bars exp(mean NLL +- 1 SE); one panel per NFE when there are several (an
    autoregressive run, which has no NFE, is drawn in every panel). The judge is named in the title.
    Writes a PNG.

    Raises:
        ValueError: no rows, or rows scored by different judges (their numbers are not comparable).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("no frontier rows to plot")
    judges = sorted({r["judge"] for r in rows})
    if len(judges) > 1:
        raise ValueError(f"rows come from several judges {judges}; their generative perplexities are not "
                         "comparable: plot them separately")
    all_curves = curves(rows)
    nfes = sorted({int(r["nfe"]) for r in rows if r["nfe"]}) or [None]
    fig, axes = plt.subplots(1, len(nfes), figsize=(5.2 * len(nfes) + 1, 5.2), sharey=True, squeeze=False)
    colours = {name: f"C{i % 10}" for i, name in enumerate(sorted({_without_nfe(n) for n in all_curves}))}
    handles = {}
    for ax, nfe in zip(axes[0], nfes, strict=False):
        for name, curve in all_curves.items():
            if curve[0]["nfe"] and int(curve[0]["nfe"]) != nfe:
                continue
            xs = [float(r["entropy"]) for r in curve]
            ys = [float(r["gen_ppl"]) for r in curve]
            se = [float(r["mean_nll_se"]) if r.get("mean_nll_se") else 0.0 for r in curve]
            err = [[y - y * math.exp(-e) for y, e in zip(ys, se, strict=True)],
                   [y * math.exp(e) - y for y, e in zip(ys, se, strict=True)]]
            colour = colours[_without_nfe(name)]
            handles[_without_nfe(name)] = ax.errorbar(xs, ys, yerr=err, marker="o", ms=4, capsize=2, lw=1.2,
                                                      color=colour)
            for r, x, y in zip(curve, xs, ys, strict=False):
                tag = "T" if r["_varying"] == "temperature" else "p"
                ax.annotate(f"{tag}={float(r[r['_varying']]):g}", (x, y), textcoords="offset points",
                            xytext=(4, 3), fontsize=6, color=colour)
        ax.set_yscale("log")
        ax.set_xlabel("mean unigram entropy of a sample (nats)")
        ax.set_title(f"NFE {nfe}" if nfe is not None else "")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("generative perplexity")
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(4, len(handles)), fontsize=7,
               frameon=False)
    n = ", ".join(sorted({r["num_samples"] for r in rows}))
    fig.suptitle(title or f"Generative frontier: judge {judges[0]}\n{n} samples per point, error bars "
                          "exp(mean NLL +- 1 SE); lower at equal entropy is better", fontsize=9)
    rows_of_legend = math.ceil(len(handles) / 4)
    fig.tight_layout(rect=(0, 0.045 * rows_of_legend + 0.02, 1, 1))
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    plt.close(fig)
    return atomic_write_bytes(path, png.getvalue())


def _without_nfe(name: str) -> str:
    return ", ".join(part for part in name.split(", ") if not part.startswith("nfe "))
