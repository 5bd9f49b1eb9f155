"""Per-family figures of a run: one PNG per metric family (PDF / SVG on request), CI bands, ``pre`` shown.

Reads only result rows (design §2): x is the layer index with ``pre`` at −1.

Every panel carries a y label with the metric's units or range (:data:`Y_LABELS`), titles are short
enough to fit the figure (wrapped otherwise), and families with more than three metrics are laid
out as a grid of at most three columns so each panel stays readable at page width. The
``*_figures`` functions return the open matplotlib ``Figure`` objects, so tests inspect labels
without reading pixels; the ``write_*`` functions save them.

Speed (a run's figures are on the path users wait on): figures are plain ``Figure`` objects on an Agg canvas,
never pyplot; they are created at the output dpi, laid out once and drawn once per PNG (``savefig`` after
``tight_layout`` draws twice), and the PNG is encoded with one filter and a low zlib level. The ``write_*`` functions
reuse one figure object per layout, cleared and redrawn. ``benchmarks/bench_figures.py`` times them on run
directories. (Drawing in a worker process while the CKA runs was tried and not kept: on 2 cores the worker's
submit-to-result time, 1.5–1.8 s, was no better than drawing here, 1.4 s.)
"""

from __future__ import annotations

import math
import textwrap
from contextlib import closing
from pathlib import Path

from ..metrics.catalog import FAMILIES, METRICS
from ..results import layer_order

# y label per metric id: what the value is, with its units or range (report readers see no catalogue)
Y_LABELS = {
    "token_sim": "mean cosine (−1…1)",
    "token_sim_centered": "mean cosine (−1…1)",
    "cls_patch_sim": "mean cosine (−1…1)",
    "isi_attn": "ISI = s·e (0…2)",
    "attn_delta": "1 − cos (0…2)",
    "attn_entropy": "entropy / log T (0…1)",
    "probe_acc": "test accuracy (0…1)",
    "probe_acc_logistic": "test accuracy (0…1)",
    "isi_rec": "R²_all − R²_self (≤ 1)",
    "r2_self": "held-out R² (≤ 1)",
    "r2_all": "held-out R² (≤ 1)",
    "cls_centrality": "attention to [CLS] (0…1)",
    "cls_self": "[CLS] self-attention (0…1)",
    "attn_consensus": "ACI (0…1)",
    "attn_distance": "distance (patches, ≥ 0)",
    "nc1": "Tr(Σ_W Σ_B†)/C (≥ 0)",
    "nc2_norm": "CV of class-mean norms (≥ 0)",
    "nc2_angle": "|cos + 1/(C−1)| (≥ 0)",
    "nc3": "‖W − M‖_F, normalised (0…2)",
    "nc4": "disagreement (0…1)",
}
#: Formats written by default: PNG (what the HTML report embeds). A PDF costs about as much again per figure,
#: so it is written only when asked for (``--figure-format png,pdf``).
FIGURE_FORMATS = ("png",)
KNOWN_FORMATS = ("png", "pdf", "svg")


def parse_formats(text: str | tuple | list) -> tuple[str, ...]:
    """``"png,pdf"`` → ``("png", "pdf")``; PNG is always included (the report embeds it)."""
    from .._errors import VitdepthError

    parts = [p.strip().lower() for p in (text.split(",") if isinstance(text, str) else text) if p.strip()]
    bad = [p for p in parts if p not in KNOWN_FORMATS]
    if bad:
        raise VitdepthError(f"--figure-format {bad[0]!r} is not known; use a comma-separated list of "
                            f"{', '.join(KNOWN_FORMATS)} (e.g. png,pdf)")
    return tuple(dict.fromkeys(["png", *parts]))


# metrics that span orders of magnitude over depth (NC1 falls from ~10³ to ~1): drawn on a log axis when positive
LOG_Y = frozenset({"nc1"})
MAX_COLS = 3
_PANEL_W, _PANEL_H = 4.0, 3.1  # inches per panel; at 120 dpi three panels fill a 1,100 px page column
_RC = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "xtick.labelsize": 10, "ytick.labelsize": 10,
       "legend.fontsize": 9, "figure.titlesize": 13}


def y_label(metric: str) -> str:
    """The y label of a metric's panel: its units or range, else the metric id."""
    return Y_LABELS.get(metric, metric)


#: Resolution of every figure. Figures are created at this dpi (not re-rendered at it on save), so the text
#: extents that ``tight_layout`` measures are the ones the PNG is drawn with.
DPI = 120
#: zlib level of the PNGs (:func:`_encode_png`): 1 is the fastest that still compresses (flat plots compress well).
PNG_COMPRESS_LEVEL = 1


def _new_figure(figsize: tuple[float, float]):
    """A ``Figure`` on its own Agg canvas, outside pyplot (no global figure registry, no GUI backend lookup).

    matplotlib is imported here, on first use, so that importing vitdepth never pays for it.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _rc():
    """The rc context every figure is built, laid out and saved in (:data:`_RC`)."""
    from matplotlib import rc_context

    return rc_context(_RC)


def _tight(fig) -> None:
    """``fig.tight_layout()``, once. ``tight_layout`` leaves a placeholder layout engine on the figure, and with any
    engine set ``savefig`` draws the whole figure once more, without output, before it draws it for real; dropping
    the engine saves that draw (about a third of the time of a save). The positions stay as laid out."""
    fig.tight_layout()
    fig.set_layout_engine(None)


def _series(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    out: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        out.setdefault((r["metric"], r["token_set"]), []).append(r)
    for v in out.values():
        v.sort(key=lambda r: layer_order(r["layer"]))
    return out


def _mark_phases(ax, fit: dict | None, color) -> None:
    """Dashed verticals at the phase breakpoints, shaded by their bootstrap CI when there is one."""
    if not fit:
        return
    cis = fit.get("breakpoints_ci") or [None, None]
    for b, ci in zip(fit["breakpoints"], cis, strict=True):
        ax.axvline(b, color=color, ls="--", lw=1, alpha=0.8)
        if ci is not None and all(v is not None for v in ci):
            ax.axvspan(ci[0], ci[1], color=color, alpha=0.08, lw=0)


def _grid_shape(n: int) -> tuple[int, int, tuple[float, float]]:
    """(rows, columns, figure size in inches) of a figure with ``n`` panels in rows of at most :data:`MAX_COLS`."""
    cols = 2 if n == 4 else min(n, MAX_COLS)  # four panels as 2 × 2, not 3 + 1
    rows = math.ceil(n / cols)
    width = max(_PANEL_W * cols, 6.4)  # one panel gets room for its title
    return rows, cols, (width, _PANEL_H * rows + 0.6)


def _grid(n: int):
    """A fresh figure with ``n`` panels in rows of at most :data:`MAX_COLS`: (fig, axes). Unused cells of the last
    row stay empty (no hidden axes are made: each costs as much to build as a panel)."""
    rows, cols, size = _grid_shape(n)
    fig = _new_figure(size)
    grid = fig.add_gridspec(rows, cols)
    return fig, [fig.add_subplot(grid[i // cols, i % cols]) for i in range(n)]


class _Reuse:
    """One figure per layout, cleared and drawn again for the next family (or curve) with that layout.

    ``get(key, make)`` returns ``(fig, axes)``: made by ``make()`` the first time ``key`` is seen, else the same
    figure with every panel cleared (``Axes.clear``: data, labels, scale, legend and colour cycle back to
    a fresh panel's), the suptitle emptied and the panel spacing reset to a fresh figure's, from which the
    caller's ``tight_layout`` lays it out again.

    Clearing a panel costs about what creating one does, so this saves little time by itself; what it buys is
    one canvas and renderer per layout (matplotlib caches text sizes per renderer: the tick labels measured for
    one family are not measured again for the next).
    The figures written this way are the figures :func:`run_figures` / :func:`compare_figures` return, drawn by
    the same functions (``tests/test_figures.py`` compares them).
    """

    _PARS = ("left", "right", "bottom", "top", "wspace", "hspace")

    def __init__(self):
        self._figs: dict = {}

    def get(self, key, make):
        if key not in self._figs:
            fig, axes = make()
            self._figs[key] = fig, axes, {k: getattr(fig.subplotpars, k) for k in self._PARS}
            return fig, axes
        fig, axes, pars = self._figs[key]
        for ax in axes:
            ax.clear()
        if fig._suptitle is not None:
            fig._suptitle.set_text("")
        # tight_layout refines the spacing it starts from, so start where a fresh figure does
        fig.subplots_adjust(**pars)
        return fig, axes


def _title(fig, head: str, note: str, width_in: float) -> None:
    """A suptitle ``head (note)`` that fits the figure: the note goes to a second line, then words wrap.

    About 9 characters fit per inch at 13 pt.
    """
    width = max(30, int(width_in * 9))
    text = f"{head} ({note})"
    if len(text) > width:
        text = "\n".join([*textwrap.wrap(head, width), *textwrap.wrap(f"({note})", width)])
    fig.suptitle(text)


def _png(fig, path: Path) -> None:
    """Write ``fig`` as a PNG at its own dpi: one Agg draw, then :func:`_encode_png`.

    The pixels ``savefig(path, dpi=DPI)`` writes, without its second (layout) draw and with a cheaper encoder.
    """
    import numpy as np

    canvas = fig.canvas
    canvas.draw()
    Path(path).write_bytes(_encode_png(np.asarray(canvas.buffer_rgba()), fig.dpi))


def _encode_png(rgba, dpi: float) -> bytes:
    """PNG bytes of an ``(h, w, 4)`` uint8 image: RGB when it is opaque (every figure here), one "up" filter for
    every row (computed by numpy) and zlib at :data:`PNG_COMPRESS_LEVEL`.

    PIL's encoder tries the filters row by row and costs about as much as drawing a simple figure; this takes
    about half its time for files within a few per cent of its size. Carries the dpi (pHYs) and a Software note,
    as matplotlib's PNGs do.
    """
    import struct
    import zlib

    import matplotlib
    import numpy as np

    h, w = rgba.shape[:2]
    opaque = bool((rgba[..., 3] == 255).all())
    rows = np.ascontiguousarray(rgba[..., :3] if opaque else rgba).reshape(h, -1)
    data = np.empty((h, rows.shape[1] + 1), dtype=np.uint8)
    data[:, 0] = 2  # filter "up": each byte minus the one above (the first row's "above" is zero)
    data[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=data[1:, 1:])  # uint8 wraps around: the difference modulo 256

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    per_metre = round(dpi / 0.0254)
    software = f"Software\0Matplotlib version{matplotlib.__version__}, https://matplotlib.org/".encode("latin-1")
    return b"".join([
        b"\x89PNG\r\n\x1a\n",
        chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2 if opaque else 6, 0, 0, 0)),
        chunk(b"pHYs", struct.pack(">IIB", per_metre, per_metre, 1)),
        chunk(b"tEXt", software),
        chunk(b"IDAT", zlib.compress(data.tobytes(), PNG_COMPRESS_LEVEL)),
        chunk(b"IEND", b""),
    ])


def _write(fig, stem: Path, formats) -> list[Path]:
    """Write ``stem.<format>`` for each format (PNG through :func:`_png`, others through ``savefig``)."""
    written = []
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")
        if fmt == "png":
            _png(fig, path)
        else:
            fig.savefig(path, format=fmt, dpi=fig.dpi)
        written.append(path)
    return written


def _run_plan(rows: list[dict], phases: dict | None) -> tuple[dict, list[tuple]]:
    """What every family figure of a run needs: shared context and ``[(family, title, metrics)]`` in catalogue order."""
    series = _series(rows)
    # one x range for every family, from pre to L, so panels line up even where a metric starts later
    all_ticks = sorted({layer_order(r["layer"]) for r in rows})
    step = max(1, math.ceil(len(all_ticks) / 8))
    ctx = {"series": series, "fits": (phases or {}).get("fits", {}), "all_ticks": all_ticks,
           "shown": all_ticks[::step]}
    present = {k[0] for k in series}
    families = []
    for family, title in FAMILIES.items():
        metrics = [m for m in METRICS.values() if m.family == family and m.id in present]
        if metrics:
            families.append((family, title, metrics))
    return ctx, families


def _draw_family(fig, axes, title: str, metrics, model: str, ctx: dict) -> None:
    """Draw one family's panels into ``axes`` (fresh or cleared) and lay the figure out."""
    series, fits, all_ticks, shown = ctx["series"], ctx["fits"], ctx["all_ticks"], ctx["shown"]
    marked = False
    for ax, info in zip(axes, metrics, strict=True):
        keys = sorted(k for k in series if k[0] == info.id)
        for key in keys:
            s = series[key]
            x = [layer_order(r["layer"]) for r in s]
            line, = ax.plot(x, [r["value"] for r in s], marker="o", ms=3, label=key[1] or None)
            ax.fill_between(x, [r["ci_low"] for r in s], [r["ci_high"] for r in s], alpha=0.25,
                            color=line.get_color(), linewidth=0)
            fit = fits.get(f"{key[0]}/{key[1]}" if key[1] else key[0])
            marked = marked or bool(fit)
            _mark_phases(ax, fit, line.get_color())
        ax.set_xlim(all_ticks[0] - 0.5, all_ticks[-1] + 0.5)
        ax.set_xticks(shown, ["pre" if t == -1 else str(t) for t in shown])
        ax.set_xlabel("layer")
        ax.set_ylabel(y_label(info.id))
        if info.id in LOG_Y and all(r["value"] > 0 for k in keys for r in series[k]):
            ax.set_yscale("log")
            ax.set_ylabel(f"{y_label(info.id)}, log axis")
        # y given: the title sits where matplotlib would put it anyway (ticks and labels are below and left), but
        # without its search for tick labels above the panel, which measures every y tick label again per draw
        ax.set_title(info.id, y=1.0)
        ax.grid(alpha=0.3)
        if any(k[1] for k in keys):
            ax.legend(title="tokens")
    note = "band: 95% CI" + ("; dashed: phase boundaries" if marked else "")
    _title(fig, f"{title} — {model}", note, fig.get_figwidth())
    _tight(fig)


def _iter_run_figures(rows: list[dict], model: str, phases: dict | None, reuse: _Reuse | None):
    """Yield ``(family, Figure)`` drawn and laid out, one family at a time. With ``reuse`` a figure yielded earlier
    may be cleared and drawn again for a later family (save it before asking for the next)."""
    ctx, families = _run_plan(rows, phases)
    with _rc():
        for family, title, metrics in families:
            n = len(metrics)
            fig, axes = _grid(n) if reuse is None else reuse.get(n, lambda n=n: _grid(n))
            _draw_family(fig, axes, title, metrics, model, ctx)
            yield family, fig


def run_figures(rows: list[dict], model: str, phases: dict | None = None) -> dict:
    """One open matplotlib ``Figure`` per metric family present in ``rows``: ``{family: Figure}``.

    Curves with a phase fit in ``phases`` (phases.json) get their two breakpoints marked. Each figure is a fresh
    object on its own Agg canvas (not registered with pyplot: nothing to close).
    """
    return dict(_iter_run_figures(rows, model, phases, None))


def write_run_figures(run_dir: Path, rows: list[dict], model: str, formats=FIGURE_FORMATS,
                      phases: dict | None = None) -> list[Path]:
    """Write ``figures/<family>.<format>`` for every family present in ``rows``; returns the paths written.

    The figures are those of :func:`run_figures`, but families with the same number of panels share one figure
    object, cleared and redrawn (:class:`_Reuse`), and each is drawn once per format (no layout re-draw on save).
    """
    fig_dir = Path(run_dir) / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    written = []
    # closing() inside _rc(): on an error the generator's own rc context is undone before the outer one
    with _rc(), closing(_iter_run_figures(rows, model, phases, _Reuse())) as figs:
        for family, fig in figs:
            written += _write(fig, fig_dir / family, formats)
    return written


def _draw_overlay(fig, axes, runs, phases: list[dict], names: list[str], metric: str, ts: str, key: str) -> None:
    """Draw one curve of every run into the two panels (absolute layer, relative depth) and lay the figure out."""
    ax_l, ax_d = axes
    for res, ph, name in zip(runs, phases, names, strict=True):
        curve = res.curve(metric, ts)
        if not curve:
            continue
        depth = int(res.run["model"]["depth"])
        x = [layer_order(r["layer"]) for r in curve]
        y = [r["value"] for r in curve]
        line, = ax_l.plot(x, y, marker="o", ms=2.5, label=name)
        ax_d.plot([v / depth for v in x], y, marker="o", ms=2.5, color=line.get_color(), label=name)
        for ax, scale in ((ax_l, 1.0), (ax_d, 1.0 / depth)):
            ax.fill_between([v * scale for v in x], [r["ci_low"] for r in curve],
                            [r["ci_high"] for r in curve], color=line.get_color(), alpha=0.15, lw=0)
            fit = ph.get("fits", {}).get(key)
            if fit:
                for b in fit["breakpoints"]:
                    ax.axvline(b * scale, color=line.get_color(), ls="--", lw=1, alpha=0.8)
    ax_l.set_xlabel("layer (pre = −1)")
    ax_d.set_xlabel("relative depth ℓ/L")
    for ax in (ax_l, ax_d):
        ax.grid(alpha=0.3)
        ax.set_ylabel(y_label(metric))
    ax_d.legend()
    _title(fig, f"{key} across sizes", "band: 95% CI; dashed: phase boundaries", fig.get_figwidth())
    _tight(fig)


def _overlay_grid():
    fig = _new_figure((10, 3.8))
    return fig, list(fig.subplots(1, 2))


def _iter_compare_figures(runs, phases: list[dict], names: list[str], curves, reuse: _Reuse | None):
    """Yield ``(curve key, Figure)`` overlays drawn and laid out, one at a time (with ``reuse``: one figure object,
    cleared and drawn again for each key; save it before asking for the next)."""
    with _rc():
        for metric, ts in curves:
            key = f"{metric}/{ts}" if ts else metric
            if not any(r.curve(metric, ts) for r in runs):
                continue
            fig, axes = _overlay_grid() if reuse is None else reuse.get("overlay", _overlay_grid)
            _draw_overlay(fig, axes, runs, phases, names, metric, ts, key)
            yield key, fig


def compare_figures(runs, phases: list[dict], names: list[str], curves) -> dict:
    """Overlay figures, one open ``Figure`` per curve key (``metric`` or ``metric/token_set``).

    Each has two panels: absolute layer (left) and relative depth (right), phase boundaries dashed.
    """
    return dict(_iter_compare_figures(runs, phases, names, curves, None))


def write_compare_figures(out_dir: Path, runs, phases: list[dict], names: list[str], curves,
                          formats=FIGURE_FORMATS) -> list[Path]:
    """Write ``figures/<metric>[_<token set>].<format>`` overlays (see :func:`compare_figures`); one figure object
    is cleared and redrawn for every curve (they share a layout)."""
    fig_dir = Path(out_dir) / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with _rc(), closing(_iter_compare_figures(runs, phases, names, curves, _Reuse())) as figs:
        for key, fig in figs:
            written += _write(fig, fig_dir / key.replace("/", "_"), formats)
    return written


# --------------------------------------------------------------------------------------------------------------
# Layer alignment (debiased linear CKA): align.json and cka_self.json
# --------------------------------------------------------------------------------------------------------------


def _tick_positions(layers: list[str], most: int = 14) -> tuple[list[int], list[str]]:
    step = max(1, math.ceil(len(layers) / most))
    idx = list(range(0, len(layers), step))
    if idx[-1] != len(layers) - 1:
        idx.append(len(layers) - 1)
    return idx, [layers[i] for i in idx]


def _cka_heatmap(ax, fig, matrix, layers_a: list[str], layers_b: list[str]):
    import numpy as np

    m = np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float)
    im = ax.imshow(m, origin="lower", aspect="auto", cmap="magma", vmin=0.0, vmax=1.0, interpolation="nearest")
    xi, xl = _tick_positions(layers_b)
    yi, yl = _tick_positions(layers_a)
    ax.set_xticks(xi, xl)
    ax.set_yticks(yi, yl)
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    bar.set_label("debiased linear CKA")
    return im


def cka_figure(result: dict):
    """The heat map of an ``align.json`` result: A's layers on y, B's on x, the matching path (argmax of each row)
    drawn with its bootstrap 95% CI as horizontal bars. Returns the open ``Figure``."""
    la, lb = result["a"]["layers"], result["b"]["layers"]
    pos_b = {x: i for i, x in enumerate(lb)}
    with _rc():
        w = min(11.0, max(5.5, 0.22 * len(lb) + 2.5))
        h = min(10.0, max(4.5, 0.22 * len(la) + 1.8))
        fig = _new_figure((w, h))
        ax = fig.subplots()
        _cka_heatmap(ax, fig, result["cka"], la, lb)
        matched = [(i, m) for i, m in enumerate(result["best_match"]) if m.get("layer_b") is not None]
        ys = [i for i, _ in matched]
        xs = [pos_b[m["layer_b"]] for _, m in matched]
        lo = [pos_b.get(m["layer_b_ci"][0], x) for (_, m), x in zip(matched, xs, strict=True)]
        hi = [pos_b.get(m["layer_b_ci"][1], x) for (_, m), x in zip(matched, xs, strict=True)]
        ax.errorbar(xs, ys, xerr=[[x - a for x, a in zip(xs, lo, strict=True)],
                                  [b - x for x, b in zip(xs, hi, strict=True)]],
                    fmt="o-", color="#2ec4ff", ms=3.5, lw=1.4, elinewidth=1.0, capsize=2)
        ax.set_xlabel(f"layer of {result['b']['name']}")
        ax.set_ylabel(f"layer of {result['a']['name']}")
        _title(fig, f"CKA: {result['a']['name']} vs {result['b']['name']}",
               f"{result['token_set']} tokens, {result['n_images']} images; path: best match per row, bars: its "
               "95% CI", fig.get_figwidth())
        _tight(fig)
    return fig


def cka_self_figure(result: dict):
    """The layer × layer heat map of a ``cka_self.json`` result (blocks of similar layers outlined)."""
    from matplotlib.patches import Rectangle

    layers = result["layers"]
    with _rc():
        side = min(9.0, max(5.0, 0.2 * len(layers) + 2.5))
        fig = _new_figure((side + 0.8, side))
        ax = fig.subplots()
        _cka_heatmap(ax, fig, result["cka"], layers, layers)
        idx = {x: i for i, x in enumerate(layers)}
        for b in result.get("blocks") or []:
            i, j = idx[b["first"]], idx[b["last"]]
            ax.add_patch(Rectangle((i - 0.5, i - 0.5), j - i + 1, j - i + 1, fill=False, ec="#2ec4ff", lw=1.5))
        ax.set_xlabel(f"layer of {result['model']}")
        ax.set_ylabel(f"layer of {result['model']}")
        note = f"{result['token_set']} tokens, {result['n_images']} images"
        if result.get("blocks"):
            note += f"; outlined: blocks with CKA ≥ {result.get('block_threshold', 0.9):.2f}"
        _title(fig, f"CKA within {result['model']}", note, fig.get_figwidth())
        _tight(fig)
    return fig


def _save(fig, stem: Path, formats) -> list[Path]:
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    with _rc():
        return _write(fig, stem, formats)


def write_cka_figure(stem: Path, result: dict, formats=FIGURE_FORMATS) -> list[Path]:
    """Write ``stem.<format>`` of :func:`cka_figure`."""
    return _save(cka_figure(result), stem, formats)


def write_cka_self_figure(stem: Path, result: dict, formats=FIGURE_FORMATS) -> list[Path]:
    """Write ``stem.<format>`` of :func:`cka_self_figure`."""
    return _save(cka_self_figure(result), stem, formats)
