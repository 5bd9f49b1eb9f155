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


def write_run_figures(run_dir: Path, rows: list[dict], model: str, formats=("png", "pdf")) -> list[Path]:
    """Write ``figures/<family>.{png,pdf}`` for every family present in ``rows``."""
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
            ax.set_xlim(all_ticks[0] - 0.5, all_ticks[-1] + 0.5)
            ax.set_xticks(shown, ["pre" if t == -1 else str(t) for t in shown])
            ax.set_xlabel("layer")
            ax.set_title(info.id)
            ax.grid(alpha=0.3)
            if any(k[1] for k in keys):
                ax.legend(title="tokens", fontsize=8)
        fig.suptitle(f"{title} — {model} (95% CI)")
        fig.tight_layout()
        for fmt in formats:
            path = fig_dir / f"{family}.{fmt}"
            fig.savefig(path, dpi=120)
            written.append(path)
        plt.close(fig)
    return written
