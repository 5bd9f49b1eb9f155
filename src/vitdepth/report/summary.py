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


# the curves a verdict names, in this order, when phases.json fits them (a tuple: the first one fitted)
KEY_CURVES = ("token_sim", ("isi_attn", "isi_rec"), "probe_acc/mean")


def _main_clause(rec: str) -> str:
    """The instruction of a recommendation: the text before its first colon, without a final period."""
    return rec.split(":", 1)[0].rstrip(". ")


def verdict_line(phases: dict, depth: object = None) -> str:
    """One line: the shapes of the key curves, the effective depth and the main recommendation.

    Args:
        phases: The ``phases.json`` content (any missing part is left out of the line).
        depth: Number of blocks L, for "layer 9 of 12".

    Returns:
        E.g. ``"token_sim cliff-climb, probe_acc/mean rise-plateau; effective depth: layer 9 of 12 (useful depth
        0.75); main recommendation: freeze layers 0–1 when fine-tuning."``; ``""`` when ``phases`` holds nothing.

    Examples:
        >>> phases = {"fits": {"token_sim": {"label": "cliff-plateau-climb"}}, "useful_depth": 0.5,
        ...           "saturation": {"mean": {"layer": "6"}}, "recommendations": ["Freeze layers 0–6: why."]}
        >>> for part in verdict_line(phases, 12).split("; "):
        ...     print(part)
        token_sim cliff-plateau-climb
        effective depth: layer 6 of 12 (useful depth 0.50)
        main recommendation: freeze layers 0–6.
    """
    if not isinstance(phases, dict):
        return ""
    parts = []
    fits = phases.get("fits") if isinstance(phases.get("fits"), dict) else {}
    shapes = []
    for keys in KEY_CURVES:
        k = next((k for k in ((keys,) if isinstance(keys, str) else keys) if isinstance(fits.get(k), dict)), None)
        if k is not None and fits[k].get("label"):
            shapes.append(f"{k} {fits[k]['label']}")
    if not shapes:  # no key curve fitted: name the first two that are
        shapes = [f"{k} {f['label']}" for k, f in fits.items() if isinstance(f, dict) and f.get("label")][:2]
    if shapes:
        parts.append(", ".join(shapes))
    sats = phases.get("saturation") if isinstance(phases.get("saturation"), dict) else {}
    sat = sats.get("mean") if isinstance(sats.get("mean"), dict) else sats.get("cls")
    if isinstance(sat, dict) and sat.get("layer") is not None:
        txt = f"effective depth: layer {sat['layer']}" + (f" of {depth}" if depth is not None else "")
        useful = phases.get("useful_depth")
        if isinstance(useful, (int, float)):
            txt += f" (useful depth {useful:.2f})"
        parts.append(txt)
    recs = [r for r in phases.get("recommendations") or [] if isinstance(r, str)]
    if recs:
        clause = _main_clause(recs[0])
        parts.append(f"main recommendation: {clause[:1].lower() + clause[1:]}.")
    return "; ".join(parts)


def phase_summary(run_dir: str | Path) -> str:
    """Phase summary text of one run: verdict, shapes and boundaries, effective depth, recommendations.

    Reads ``phases.json`` (and ``run.json``) only; the first line after the model is the report's verdict.
    """
    import json

    path = Path(run_dir) / "phases.json"
    res = load_run(run_dir)
    if not path.is_file():
        return f"{res.model}: no phases.json"
    ph = json.loads(path.read_text())
    depth = res.run["model"]["depth"]
    lines = [f"{res.model} ({depth} blocks):"]
    verdict = verdict_line(ph, depth)
    if verdict:
        lines.append(f"  verdict: {verdict}")
    for key, fit in ph.get("fits", {}).items():
        ci = fit.get("breakpoints_ci")
        cis = f" (95% CI {ci[0][0]:g}–{ci[0][1]:g}, {ci[1][0]:g}–{ci[1][1]:g})" if ci else ""
        lines.append(f"  {key:<16} {fit['label']:<22} boundaries at layers {fit['breakpoints_layer'][0]}, "
                     f"{fit['breakpoints_layer'][1]}{cis}  R² {fit['r2']:.3f}")
    sat = ph.get("saturation", {}).get("mean")
    if sat:
        lines.append(f"  effective depth: mean probe reaches {sat.get('fraction', 0.99):.0%} of its best "
                     f"({sat['best']:.3f}) at layer {sat['layer']} "
                     f"(useful depth {ph.get('useful_depth', float('nan')):.2f})")
    onset = ph.get("tradeoff_onset")
    if onset:
        lines.append(f"  trade-off onset: layer {onset['layer']}, {onset['isi_metric']} rises "
                     f"{onset['isi_rise_after']:+.4f} after it")
    for rec in ph.get("recommendations") or []:
        lines.append(f"  recommendation: {rec}")
    return "\n".join(lines)
