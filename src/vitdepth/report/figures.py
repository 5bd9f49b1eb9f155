"""Per-family figures of a run: one PNG (and PDF) per metric family, CI bands, ``pre`` shown.

Reads only result rows (design §2): x is the layer index with ``pre`` at −1.
"""

from __future__ import annotations

from pathlib import Path

from ..metrics.catalog import FAMILIES, METRICS
from ..results import layer_order


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


def write_run_figures(run_dir: Path, rows: list[dict], model: str, formats=("png", "pdf"),
                      phases: dict | None = None) -> list[Path]:
    """Write ``figures/<family>.{png,pdf}`` for every family present in ``rows``.

    Curves with a phase fit in ``phases`` (phases.json) get their two breakpoints marked.
    """
    fits = (phases or {}).get("fits", {})
    plt = _plt()
    fig_dir = Path(run_dir) / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    series = _series(rows)
    # one x range for every family, from pre to L, so panels line up even where a metric starts later
    all_ticks = sorted({layer_order(r["layer"]) for r in rows})
    step = max(1, len(all_ticks) // 10)
    shown = all_ticks[::step]
    written = []
    for family, title in FAMILIES.items():
        metrics = [m for m in METRICS.values() if m.family == family and any(k[0] == m.id for k in series)]
        if not metrics:
            continue
        fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
        for ax, info in zip(axes[0], metrics, strict=True):
            keys = sorted(k for k in series if k[0] == info.id)
            for key in keys:
                s = series[key]
                x = [layer_order(r["layer"]) for r in s]
                label = key[1] or None
                line, = ax.plot(x, [r["value"] for r in s], marker="o", ms=3, label=label)
                ax.fill_between(x, [r["ci_low"] for r in s], [r["ci_high"] for r in s], alpha=0.25,
                                color=line.get_color(), linewidth=0)
                _mark_phases(ax, fits.get(f"{key[0]}/{key[1]}" if key[1] else key[0]), line.get_color())
            ax.set_xlim(all_ticks[0] - 0.5, all_ticks[-1] + 0.5)
            ax.set_xticks(shown, ["pre" if t == -1 else str(t) for t in shown])
            ax.set_xlabel("layer")
            ax.set_title(info.id)
            ax.grid(alpha=0.3)
            if any(k[1] for k in keys):
                ax.legend(title="tokens", fontsize=8)
        marked = " · dashed: phase boundaries" if any(k in fits for k in (m.id for m in metrics)) or any(
            k.split("/")[0] in {m.id for m in metrics} for k in fits) else ""
        fig.suptitle(f"{title} — {model} (95% CI{marked})")
        fig.tight_layout()
        for fmt in formats:
            path = fig_dir / f"{family}.{fmt}"
            fig.savefig(path, dpi=120)
            written.append(path)
        plt.close(fig)
    return written


def write_compare_figures(out_dir: Path, runs, phases: list[dict], names: list[str], curves,
                          formats=("png", "pdf")) -> list[Path]:
    """Overlay figures: one per curve, on absolute layer (left) and relative depth (right), boundaries marked."""
    plt = _plt()
    fig_dir = Path(out_dir) / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for metric, ts in curves:
        key = f"{metric}/{ts}" if ts else metric
        if not any(r.curve(metric, ts) for r in runs):
            continue
        fig, (ax_l, ax_d) = plt.subplots(1, 2, figsize=(10, 3.6))
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
                ax.fill_between([v * scale for v in x], [r["ci_low"] for r in curve], [r["ci_high"] for r in curve],
                                color=line.get_color(), alpha=0.15, lw=0)
                fit = ph.get("fits", {}).get(key)
                if fit:
                    for b in fit["breakpoints"]:
                        ax.axvline(b * scale, color=line.get_color(), ls="--", lw=1, alpha=0.8)
        ax_l.set_xlabel("layer (pre = −1)")
        ax_d.set_xlabel("relative depth ℓ/L")
        for ax in (ax_l, ax_d):
            ax.grid(alpha=0.3)
            ax.set_ylabel(key)
        ax_d.legend(fontsize=8)
        fig.suptitle(f"{key} across sizes (95% CI; dashed: phase boundaries)")
        fig.tight_layout()
        for fmt in formats:
            path = fig_dir / f"{key.replace('/', '_')}.{fmt}"
            fig.savefig(path, dpi=120)
            written.append(path)
        plt.close(fig)
    return written
