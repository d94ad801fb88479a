"""The frontier plot (ddlm.evaluate.frontier_plot): CSV rows grouped into curves, and the PNG."""

import pytest

from ddlm.evaluate.frontier import FIELDS
from ddlm.evaluate.frontier_plot import curves, plot_frontier


def row(nfe, temperature, top_p=1.0, label="udm", judge="letters", **over):
    """A frontier CSV row as ``read_rows`` gives it (every cell a string)."""
    r = {f: "" for f in FIELDS}
    r.update(label=label, run=f"runs/{label}", checkpoint="c", step="10", process="udm", sampler="ancestral",
             nfe=str(nfe), temperature=repr(temperature), top_p=repr(top_p), seed="0", num_samples="2",
             length="16", batch_size="32", judge=judge, gen_ppl=repr(20.0 * temperature),
             mean_nll_se="0.05", entropy=repr(2.0 + temperature))
    r.update(over)
    return r


def test_curves_group_by_settings_and_order_along_the_swept_value():
    rows = [row(nfe, t) for nfe in (4, 8) for t in (1.2, 0.8, 1.0)]
    cs = curves(rows)
    assert sorted(cs) == ["udm, ancestral, nfe 4", "udm, ancestral, nfe 8"]  # one per NFE
    for curve in cs.values():
        assert [float(r["temperature"]) for r in curve] == [0.8, 1.0, 1.2]
        assert {r["_varying"] for r in curve} == {"temperature"}
    # a top-p sweep at a fixed temperature is its own curve, named with that temperature
    tops = curves([row(4, 0.9, p) for p in (0.8, 0.95, 1.0)])
    (name, curve), = tops.items()
    assert name == "udm, ancestral, nfe 4, T=0.9" and [float(r["top_p"]) for r in curve] == [0.8, 0.95, 1.0]


def test_plot_writes_a_png_and_refuses_mixed_judges(tmp_path):
    rows = [row(nfe, t) for nfe in (4, 8) for t in (0.8, 1.0, 1.2)] + [row("", 1.0, label="ar", sampler="ancestral")]
    png = plot_frontier(rows, tmp_path / "f.png")
    assert png == tmp_path / "f.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["f.png"]  # written atomically: no temporary left
    with pytest.raises(ValueError, match="several judges"):
        plot_frontier(rows + [row(4, 1.0, judge="another")], tmp_path / "g.png")
    with pytest.raises(ValueError, match="no frontier rows"):
        plot_frontier([], tmp_path / "h.png")
