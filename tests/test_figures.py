"""Figures: the fast write path (one figure object reused per layout, one draw per PNG) draws what the fresh
figures hold, writes valid PNGs (PDF only when asked), and loads matplotlib only when drawing."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

pytest.importorskip("matplotlib")

from vitdepth.metrics.catalog import FAMILIES, METRICS  # noqa: E402
from vitdepth.report import figures as F  # noqa: E402
from vitdepth.results import layer_depth, layer_order  # noqa: E402

DEPTH = 6
LAYERS = ["pre", *map(str, range(DEPTH + 1))]
TOKEN_SETS = {"probe_acc": ("cls", "mean"), "token_sim": ("",), "nc1": ("mean",)}


def _rows(model: str = "m", offset: float = 0.0) -> list[dict]:
    """Every catalogue metric over every layer (some starting later, one without CIs, two token sets for the
    probe): every family figure, several with the same number of panels, so figures get reused."""
    rows = []
    for k, mid in enumerate(METRICS):
        layers = LAYERS[2:] if k % 5 == 1 else LAYERS
        for ts in TOKEN_SETS.get(mid, ("",)):
            for i, layer in enumerate(layers):
                v = (1000.0 / (i + 1) if mid == "nc1" else 0.1 + 0.07 * i + 0.013 * k) + offset + (ts == "cls") * 0.05
                ci = k % 7 != 3
                rows.append({"model": model, "layer": layer, "depth": layer_depth(layer, DEPTH), "metric": mid,
                             "token_set": ts, "value": v, "ci_low": v - 0.01 if ci else math.nan,
                             "ci_high": v + 0.01 if ci else math.nan, "n": 100})
    return rows


PHASES = {"fits": {
    "token_sim": {"breakpoints": [1.0, 4.0], "breakpoints_ci": [[0.5, 1.5], [3.0, 5.0]]},
    "probe_acc/mean": {"breakpoints": [0.0, 3.0], "breakpoints_ci": [None, [2.0, None]]},
    "isi_attn": {"breakpoints": [2.0, 5.0]},
}}


def _snapshot(fig) -> dict:
    """What a figure shows, read from its artists: titles, labels, scales, limits, ticks, every line, band and
    span, the legends; and where the panels sit (rounded: laid out by tight_layout from text extents)."""
    import numpy as np

    def rnd(a):
        return np.round(np.asarray(a, dtype=float), 6).tolist()

    panels = []
    for ax in fig.axes:
        if not ax.get_visible():
            panels.append(None)
            continue
        legend = ax.get_legend()
        panels.append({
            "title": ax.get_title(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(),
            "yscale": ax.get_yscale(), "xlim": rnd(ax.get_xlim()), "ylim": rnd(ax.get_ylim()),
            "xticks": rnd(ax.get_xticks()), "xticklabels": [t.get_text() for t in ax.get_xticklabels()],
            "lines": [(rnd(ln.get_xdata()), rnd(ln.get_ydata()), ln.get_color(), ln.get_linestyle(), ln.get_marker(),
                       ln.get_label()) for ln in ax.get_lines()],
            "bands": [[rnd(p.vertices) for p in c.get_paths()] + [rnd(c.get_facecolor())] for c in ax.collections],
            "patches": [(rnd(p.get_path().vertices), rnd(p.get_facecolor())) for p in ax.patches],
            "legend": None if legend is None else (legend.get_title().get_text(),
                                                   [t.get_text() for t in legend.get_texts()]),
            "position": np.round(ax.get_position().bounds, 3).tolist(),
        })
    return {"suptitle": fig._suptitle.get_text(), "size": rnd(fig.get_size_inches()), "dpi": fig.dpi,
            "panels": panels}


def test_reused_run_figures_draw_what_fresh_figures_hold():
    rows = _rows()
    fresh = {fam: _snapshot(fig) for fam, fig in F.run_figures(rows, "m", PHASES).items()}
    reused, objects = {}, {}
    for fam, fig in F._iter_run_figures(rows, "m", PHASES, F._Reuse()):
        reused[fam] = _snapshot(fig)  # before the next family clears it
        objects.setdefault(id(fig), []).append(fam)
    assert list(reused) == list(fresh) == [f for f in FAMILIES if f in fresh]
    assert any(len(fams) > 1 for fams in objects.values()), "no figure object was reused"
    for fam in fresh:
        assert reused[fam] == fresh[fam], fam


def test_run_figures_hold_the_rows_cis_and_phase_marks():
    rows = _rows()
    figs = F.run_figures(rows, "m", PHASES)
    sim = figs[METRICS["token_sim"].family]
    ax = next(a for a in sim.axes if a.get_title() == "token_sim")
    data = [r for r in rows if r["metric"] == "token_sim"]
    line = ax.get_lines()[0]
    assert list(line.get_xdata()) == [layer_order(r["layer"]) for r in data]
    assert list(line.get_ydata()) == [r["value"] for r in data]
    band = ax.collections[0].get_paths()[0].vertices
    assert {round(v, 9) for v in band[:, 1]} >= {round(r["ci_low"], 9) for r in data} | {
        round(r["ci_high"], 9) for r in data}
    dashed = sorted(ln.get_xdata()[0] for ln in ax.get_lines() if ln.get_linestyle() == "--")
    assert dashed == [1.0, 4.0] and len(ax.patches) == 2  # breakpoints, and their CIs shaded
    assert "dashed: phase boundaries" in sim._suptitle.get_text() and sim._suptitle.get_text().startswith(
        FAMILIES[METRICS["token_sim"].family])
    probe = next(a for f in figs.values() for a in f.axes if a.get_title() == "probe_acc")
    assert [t.get_text() for t in probe.get_legend().get_texts()] == ["cls", "mean"]
    nc1 = next(a for f in figs.values() for a in f.axes if a.get_title() == "nc1")
    assert nc1.get_yscale() == "log" and nc1.get_ylabel().endswith("log axis")


class _Run:
    """What the overlays read of a run: ``curve(metric, token_set)`` and ``run['model']['depth']``."""

    def __init__(self, rows, depth):
        self.rows, self.run = rows, {"model": {"depth": depth}}

    def curve(self, metric, token_set):
        return sorted((r for r in self.rows if r["metric"] == metric and r["token_set"] == token_set),
                      key=lambda r: layer_order(r["layer"]))


def test_reused_compare_figures_draw_what_fresh_figures_hold():
    from vitdepth.compare import OVERLAY

    runs = [_Run(_rows("S"), DEPTH), _Run(_rows("B", 0.2), DEPTH)]
    args = (runs, [PHASES, {}], ["S", "B"], OVERLAY)
    fresh = {k: _snapshot(f) for k, f in F.compare_figures(*args).items()}
    reused, ids = {}, set()
    for key, fig in F._iter_compare_figures(*args, F._Reuse()):
        reused[key] = _snapshot(fig)
        ids.add(id(fig))
    assert len(fresh) > 2 and len(ids) == 1
    assert reused == fresh


def test_png_path_writes_what_savefig_writes(tmp_path):
    """The one-draw PNG writer (PIL, low zlib level) gives matplotlib's own pixels, at DPI."""
    import numpy as np
    from PIL import Image

    fig = F.run_figures(_rows(), "m", PHASES)["similarity"]
    with F._rc():
        F._png(fig, tmp_path / "fast.png")
        fig.savefig(tmp_path / "mpl.png", dpi=F.DPI)
    fast, ref = Image.open(tmp_path / "fast.png"), Image.open(tmp_path / "mpl.png")
    assert fast.size == ref.size == tuple(round(v * F.DPI) for v in fig.get_size_inches())
    assert np.array_equal(np.asarray(fast.convert("RGBA")), np.asarray(ref.convert("RGBA")))


def test_write_run_figures_writes_valid_pngs_and_pdf_only_when_asked(tmp_path):
    from PIL import Image

    rows = _rows()
    paths = F.write_run_figures(tmp_path / "run", rows, "m", phases=PHASES)
    fams = list(F.run_figures(rows, "m", PHASES))
    assert [p.name for p in paths] == [f"{f}.png" for f in fams]
    assert sorted(p.name for p in (tmp_path / "run" / "figures").iterdir()) == sorted(p.name for p in paths)
    for p in paths:
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            assert im.format == "PNG" and min(im.size) > 300
    both = F.write_run_figures(tmp_path / "run2", rows, "m", formats=("png", "pdf"), phases=PHASES)
    pdfs = [p for p in both if p.suffix == ".pdf"]
    assert len(pdfs) == len(fams) == len(both) - len(fams)
    assert all(p.read_bytes()[:5] == b"%PDF-" for p in pdfs)


def test_cka_figures_are_written(tmp_path):
    from PIL import Image

    layers = LAYERS
    cka = [[1.0 - abs(i - j) / len(layers) for j in range(len(layers))] for i in range(len(layers))]
    self_result = {"layers": layers, "cka": cka, "blocks": [{"first": "1", "last": "3"}], "model": "m",
                   "token_set": "mean", "n_images": 50, "block_threshold": 0.9}
    pair = {"a": {"name": "S", "layers": layers}, "b": {"name": "B", "layers": layers}, "cka": cka,
            "token_set": "mean", "n_images": 50,
            "best_match": [{"layer_a": x, "layer_b": x, "layer_b_ci": [layers[max(0, i - 1)], x]}
                           for i, x in enumerate(layers)]}
    written = F.write_cka_self_figure(tmp_path / "figures" / "cka_self", self_result)
    written += F.write_cka_figure(tmp_path / "figures" / "cka", pair, formats=("png", "svg"))
    assert [p.name for p in written] == ["cka_self.png", "cka.png", "cka.svg"]
    for p in written[:2]:
        with Image.open(p) as im:
            im.verify()
    assert b"<svg" in written[2].read_bytes()[:500]


def test_matplotlib_loads_only_when_drawing_and_never_pyplot(tmp_path):
    code = (
        "import sys\n"
        "from vitdepth.report import figures as F\n"
        "assert 'matplotlib' not in sys.modules\n"
        "from tests.test_figures import _rows, PHASES\n"
        f"F.write_run_figures({str(tmp_path)!r}, _rows(), 'm', phases=PHASES)\n"
        "assert 'matplotlib' in sys.modules and 'matplotlib.pyplot' not in sys.modules\n"
    )
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
    assert (tmp_path / "figures" / "similarity.png").is_file()


def test_rc_settings_do_not_leak_even_on_an_error(tmp_path):
    import matplotlib

    before = matplotlib.rcParams["font.size"]
    F.write_run_figures(tmp_path / "a", _rows(), "m", phases=PHASES)
    with pytest.raises(ValueError):  # an unknown format fails in savefig, after the first figure's PNG
        F.write_run_figures(tmp_path / "b", _rows(), "m", formats=("png", "nope"))
    import gc

    gc.collect()
    assert matplotlib.rcParams["font.size"] == before != F._RC["font.size"]


@pytest.mark.parametrize("opaque", [True, False])
def test_png_encoder_round_trips(tmp_path, opaque):
    import io

    import numpy as np
    from PIL import Image

    rgba = np.random.default_rng(0).integers(0, 256, size=(37, 53, 4), dtype=np.uint8)
    if opaque:
        rgba[..., 3] = 255
    im = Image.open(io.BytesIO(F._encode_png(rgba, 120)))
    im.load()
    assert im.mode == ("RGB" if opaque else "RGBA") and im.size == (53, 37)
    assert np.array_equal(np.asarray(im.convert("RGBA")), rgba)
    assert round(im.info["dpi"][0]) == 120 and im.info["Software"].startswith("Matplotlib")
