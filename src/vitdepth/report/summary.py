"""One-screen text summary of a run (from ``layers.csv``)."""

from __future__ import annotations

from pathlib import Path

from ..results import layer_order, load_run

COLUMNS = (("token_sim", ""), ("isi_attn", ""), ("attn_entropy", ""), ("probe_acc", "cls"), ("probe_acc", "mean"))


def summary_table(run_dir: str | Path) -> str:
    """Per-layer table of the headline metrics, plus the best probe layer."""
    res = load_run(run_dir)
    table: dict[str, dict] = {}
    for r in res.rows:
        table.setdefault(r["layer"], {})[(r["metric"], r["token_set"])] = r["value"]
    cols = [c for c in COLUMNS if any(c in v for v in table.values())]
    head = "layer " + " ".join(f"{(m + ('/' + t if t else '')):>15}" for m, t in cols)
    lines = [f"{res.model}: {res.run['data']['analyzed']} images of {res.run['data']['spec']}, "
             f"{res.run['model']['depth']} blocks", head]
    for layer in sorted(table, key=layer_order):
        vals = table[layer]
        cells = " ".join(f"{vals[c]:15.3f}" if c in vals else f"{'—':>15}" for c in cols)
        lines.append(f"{layer:>5} {cells}")
    for ts in ("cls", "mean"):
        curve = res.curve("probe_acc", ts)
        if curve:
            best = max(curve, key=lambda r: r["value"])
            lines.append(f"best {ts} probe: {best['value']:.3f} at layer {best['layer']} "
                         f"(95% CI {best['ci_low']:.3f}–{best['ci_high']:.3f}, n={best['n']})")
    return "\n".join(lines)
