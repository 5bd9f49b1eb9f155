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
    warnings = [w for w in res.run.get("warnings") or [] if isinstance(w, str)]
    nonfinite = {w.split(":", 1)[0].removeprefix("layer ") for w in warnings
                 if w.startswith("layer ") and "NaN/Inf" in w}
    for layer in sorted(set(table) | set(res.run["model"].get("layers") or []), key=layer_order):
        vals = table.get(layer, {})
        cells = " ".join(f"{vals[c]:15.3f}" if c in vals else f"{'—':>15}" for c in cols)
        lines.append(f"{layer:>5} {cells}" + ("  NaN/Inf in some images" if layer in nonfinite else ""))
    for ts in ("cls", "mean"):
        curve = res.curve("probe_acc", ts)
        if curve:
            best = max(curve, key=lambda r: r["value"])
            lines.append(f"best {ts} probe: {best['value']:.3f} at layer {best['layer']} "
                         f"(95% CI {best['ci_low']:.3f}–{best['ci_high']:.3f}, n={best['n']})")
    if nonfinite:
        lines.append(f"layers {', '.join(sorted(nonfinite, key=layer_order))} hold NaN/Inf activations in some images: "
                     "their probes leave those images out, and phase fits and recommendations use the finite values")
    for w in warnings:
        lines.append(f"warning: {w}")
    check = res.run.get("self_check")
    if check:
        lines.append(f"self-check: attention {check['attention']}, tokens {check['tokens']}"
                     + (f" — {check['reason']}" if check.get("reason") else ""))
    return "\n".join(lines)


def phase_summary(run_dir: str | Path) -> str:
    """Shape, phase boundaries and effective depth of a run, from phases.json."""
    import json

    path = Path(run_dir) / "phases.json"
    res = load_run(run_dir)
    if not path.is_file():
        return f"{res.model}: no phases.json"
    ph = json.loads(path.read_text())
    lines = [f"{res.model} ({res.run['model']['depth']} blocks):"]
    for key, fit in ph.get("fits", {}).items():
        ci = fit.get("breakpoints_ci")
        cis = f" (95% CI {ci[0][0]:g}–{ci[0][1]:g}, {ci[1][0]:g}–{ci[1][1]:g})" if ci else ""
        lines.append(f"  {key:<16} {fit['label']:<22} boundaries at layers {fit['breakpoints_layer'][0]}, "
                     f"{fit['breakpoints_layer'][1]}{cis}  R² {fit['r2']:.3f}")
    sat = ph.get("saturation", {}).get("mean")
    if sat:
        lines.append(f"  effective depth: mean probe reaches {sat['fraction']:.0%} of its best ({sat['best']:.3f}) at "
                     f"layer {sat['layer']} (useful depth {ph.get('useful_depth', float('nan')):.2f})")
    onset = ph.get("tradeoff_onset")
    if onset:
        lines.append(f"  trade-off onset: layer {onset['layer']}, {onset['isi_metric']} rises "
                     f"{onset['isi_rise_after']:+.4f} after it")
    return "\n".join(lines)
