"""Per-family figures of a run: one PNG per metric family (PDF / SVG on request), CI bands, ``pre`` shown.

Reads only result rows (design §2): x is the layer index with ``pre`` at −1.

Every panel carries a y label with the metric's units or range (:data:`Y_LABELS`), titles are short
enough to fit the figure (wrapped otherwise), and families with more than three metrics are laid
out as a grid of at most three columns so each panel stays readable at page width. The
``*_figures`` functions return the open matplotlib ``Figure`` objects, so tests inspect labels
without reading pixels; the ``write_*`` functions save and close them.
"""

from __future__ import annotations

import math
import textwrap
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


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


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


def _grid(plt, n: int):
    """A figure with ``n`` panels in rows of at most :data:`MAX_COLS`; unused cells hidden. Returns (fig, axes)."""
    cols = 2 if n == 4 else min(n, MAX_COLS)  # four panels as 2 × 2, not 3 + 1
    rows = math.ceil(n / cols)
    width = max(_PANEL_W * cols, 6.4)  # one panel gets room for its title
    fig, axes = plt.subplots(rows, cols, figsize=(width, _PANEL_H * rows + 0.6), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _title(fig, head: str, note: str, width_in: float) -> None:
    """A suptitle ``head (note)`` that fits the figure: the note goes to a second line, then words wrap.

    About 9 characters fit per inch at 13 pt.
    """
    width = max(30, int(width_in * 9))
    text = f"{head} ({note})"
    if len(text) > width:
        text = "\n".join([*textwrap.wrap(head, width), *textwrap.wrap(f"({note})", width)])
    fig.suptitle(text)


def run_figures(rows: list[dict], model: str, phases: dict | None = None) -> dict:
    """One open matplotlib ``Figure`` per metric family present in ``rows``: ``{family: Figure}``.

    Curves with a phase fit in ``phases`` (phases.json) get their two breakpoints marked. The caller
    closes the figures (:func:`write_run_figures` does).
    """
    fits = (phases or {}).get("fits", {})
    plt = _plt()
    series = _series(rows)
    # one x range for every family, from pre to L, so panels line up even where a metric starts later
    all_ticks = sorted({layer_order(r["layer"]) for r in rows})
    step = max(1, math.ceil(len(all_ticks) / 8))
    shown = all_ticks[::step]
    figs = {}
    with plt.rc_context(_RC):
        for family, title in FAMILIES.items():
            metrics = [m for m in METRICS.values() if m.family == family and any(k[0] == m.id for k in series)]
            if not metrics:
                continue
            fig, axes = _grid(plt, len(metrics))
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
                ax.set_title(info.id)
                ax.grid(alpha=0.3)
                if any(k[1] for k in keys):
                    ax.legend(title="tokens")
            note = "band: 95% CI" + ("; dashed: phase boundaries" if marked else "")
            _title(fig, f"{title} — {model}", note, fig.get_figwidth())
            fig.tight_layout()
            figs[family] = fig
    return figs


def write_run_figures(run_dir: Path, rows: list[dict], model: str, formats=FIGURE_FORMATS,
                      phases: dict | None = None) -> list[Path]:
    """Write ``figures/<family>.<format>`` for every family present in ``rows`` (see :func:`run_figures`)."""
    plt = _plt()
    fig_dir = Path(run_dir) / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for family, fig in run_figures(rows, model, phases).items():
        for fmt in formats:
            path = fig_dir / f"{family}.{fmt}"
            fig.savefig(path, dpi=120)
            written.append(path)
        plt.close(fig)
    return written


def compare_figures(runs, phases: list[dict], names: list[str], curves) -> dict:
    """Overlay figures, one open ``Figure`` per curve key (``metric`` or ``metric/token_set``).

    Each has two panels: absolute layer (left) and relative depth (right), phase boundaries dashed.
    """
    plt = _plt()
    figs = {}
    with plt.rc_context(_RC):
        for metric, ts in curves:
            key = f"{metric}/{ts}" if ts else metric
            if not any(r.curve(metric, ts) for r in runs):
                continue
            fig, (ax_l, ax_d) = plt.subplots(1, 2, figsize=(10, 3.8))
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
            fig.tight_layout()
            figs[key] = fig
    return figs


def write_compare_figures(out_dir: Path, runs, phases: list[dict], names: list[str], curves,
                          formats=FIGURE_FORMATS) -> list[Path]:
    """Write ``figures/<metric>[_<token set>].<format>`` overlays (see :func:`compare_figures`)."""
    plt = _plt()
    fig_dir = Path(out_dir) / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for key, fig in compare_figures(runs, phases, names, curves).items():
        for fmt in formats:
            path = fig_dir / f"{key.replace('/', '_')}.{fmt}"
            fig.savefig(path, dpi=120)
            written.append(path)
        plt.close(fig)
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
    plt = _plt()
    la, lb = result["a"]["layers"], result["b"]["layers"]
    pos_b = {x: i for i, x in enumerate(lb)}
    with plt.rc_context(_RC):
        w = min(11.0, max(5.5, 0.22 * len(lb) + 2.5))
        h = min(10.0, max(4.5, 0.22 * len(la) + 1.8))
        fig, ax = plt.subplots(figsize=(w, h))
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
        fig.tight_layout()
    return fig


def cka_self_figure(result: dict):
    """The layer × layer heat map of a ``cka_self.json`` result (blocks of similar layers outlined)."""
    plt = _plt()
    layers = result["layers"]
    with plt.rc_context(_RC):
        side = min(9.0, max(5.0, 0.2 * len(layers) + 2.5))
        fig, ax = plt.subplots(figsize=(side + 0.8, side))
        _cka_heatmap(ax, fig, result["cka"], layers, layers)
        idx = {x: i for i, x in enumerate(layers)}
        for b in result.get("blocks") or []:
            i, j = idx[b["first"]], idx[b["last"]]
            ax.add_patch(plt.Rectangle((i - 0.5, i - 0.5), j - i + 1, j - i + 1, fill=False, ec="#2ec4ff", lw=1.5))
        ax.set_xlabel(f"layer of {result['model']}")
        ax.set_ylabel(f"layer of {result['model']}")
        note = f"{result['token_set']} tokens, {result['n_images']} images"
        if result.get("blocks"):
            note += f"; outlined: blocks with CKA ≥ {result.get('block_threshold', 0.9):.2f}"
        _title(fig, f"CKA within {result['model']}", note, fig.get_figwidth())
        fig.tight_layout()
    return fig


def _save(fig, stem: Path, formats) -> list[Path]:
    plt = _plt()
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")
        fig.savefig(path, dpi=120)
        written.append(path)
    plt.close(fig)
    return written


def write_cka_figure(stem: Path, result: dict, formats=FIGURE_FORMATS) -> list[Path]:
    """Write ``stem.<format>`` of :func:`cka_figure`."""
    return _save(cka_figure(result), stem, formats)


def write_cka_self_figure(stem: Path, result: dict, formats=FIGURE_FORMATS) -> list[Path]:
    """Write ``stem.<format>`` of :func:`cka_self_figure`."""
    return _save(cka_self_figure(result), stem, formats)
