"""Self-contained HTML reports of a run directory and of a comparison (design §6).

The reports read only saved results: ``run.json``, ``layers.csv``, ``phases.json`` (when present) and
``figures/*.png`` of a run; ``compare.json`` and ``figures/*.png`` of a comparison. They never touch a model.

A report is one file that opens offline and reads without the tool: no stylesheet, font or script
links, figures embedded as base64 ``data:`` URIs, inline CSS. The run report has no script at all; the
compare report carries a few lines of inline JavaScript that sort its shift table by a clicked header
(the table is already sorted by magnitude, so it reads the same without them).

The run report opens with a one-line verdict (:func:`vitdepth.report.summary.verdict_line`); formulas
and per-layer tables sit in closed ``<details>`` blocks under each figure, so the page is mostly the
figures and the summary. Every piece of text that comes from data
(model and class names, paths, spec strings, warnings, values) goes through :func:`_e`, which escapes it
with :func:`html.escape` and breaks ``scheme://`` sequences so that no URL, even one inside a data string,
appears in the output.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from pathlib import Path
from typing import Any

from ..metrics.catalog import FAMILIES, METRICS
from ..results import layer_order, load_run
from .summary import verdict_line

__all__ = ["write_align_report", "write_compare_report", "write_run_report"]

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0 auto;
max-width:1100px;padding:1.2em 1.6em;color:#1d1d1f;line-height:1.45;background:#fff}
h1{font-size:1.6em;margin:.2em 0 .1em}h2{font-size:1.3em;border-bottom:2px solid #ddd;padding-bottom:.2em;
margin-top:1.8em}h3{font-size:1.05em;margin:1.2em 0 .3em;font-family:ui-monospace,Menlo,Consolas,monospace}
.sub{color:#555;margin:0 0 1em}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.88em}
th,td{border:1px solid #ddd;padding:.25em .55em;text-align:left;vertical-align:top}
th{background:#f4f4f6}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.ci{color:#777;font-size:.85em}
.scroll{overflow-x:auto;max-width:100%}
dl.meta{display:grid;grid-template-columns:max-content auto;gap:.15em 1em;margin:.5em 0 1em}
dl.meta dt{font-weight:600;color:#444}dl.meta dd{margin:0}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.5em .8em;margin:.8em 0}
.warn{background:#fdecea;border-left:4px solid #d93025;padding:.5em .8em;margin:.8em 0}
.rec li{margin:.25em 0}
figure{margin:.8em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.88em}
.metric{margin:.6em 0 1em .2em}.metric p{margin:.15em 0}.label{color:#555;font-weight:600}
details{margin:.5em 0}summary{cursor:pointer;font-weight:600}
pre{background:#f7f7f9;padding:.6em;overflow-x:auto;font-size:.8em;max-height:32em}
code{font-family:ui-monospace,Menlo,Consolas,monospace}
nav.toc{font-size:.9em;color:#555}nav.toc a{margin-right:.9em}
p.verdict{font-size:1.05em;background:#eef5ff;border-left:4px solid #3b7ddd;padding:.5em .8em;margin:.6em 0 1em}
table.sortable th{cursor:pointer}table.sortable th:after{content:" \2195";color:#aaa}
"""

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):(?=//)")


def _e(value: Any) -> str:
    """Escape text that comes from data; ``scheme://`` becomes ``scheme&#58;//`` so it is never a URL."""
    text = html.escape("" if value is None else str(value), quote=True)
    return _SCHEME.sub(r"\1&#58;", text)


def _num(v: Any, digits: int = 4) -> str:
    """A number for display (``digits`` significant digits); missing / NaN → ``—``."""
    if v is None or isinstance(v, bool):
        return "—" if v is None else _e(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "—" if not math.isfinite(v) else f"{v:.{digits}g}"
    try:
        f = float(v)
    except (TypeError, ValueError):
        return _e(v)
    return _num(f, digits)


def _rel(v: Any) -> str:
    """A relative depth (ℓ/L) with two decimals, or ``—``."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "—"
    return f"{f:.2f}" if math.isfinite(f) else "—"


def _pct(v: Any) -> str:
    """A fraction as a percentage, or ``—``."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "—"
    return f"{100 * f:.1f}%" if math.isfinite(f) else "—"


def _get(d: Any, *keys: str, default: Any = None) -> Any:
    """Nested lookup that tolerates missing keys and non-dict values."""
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def _read_json(path: Path) -> tuple[Any, str | None]:
    """(content, None) or (None, why it could not be read)."""
    if not path.is_file():
        return None, "missing"
    try:
        return json.loads(path.read_text()), None
    except (OSError, ValueError) as exc:
        return None, f"unreadable ({type(exc).__name__}: {exc})"


def _data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def _figure(png: Path, caption: str) -> str:
    return (f'<figure><img alt="{_e(caption)}" src="{_data_uri(png)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _meta(pairs: list[tuple[str, Any]]) -> str:
    """A definition list of (label, already-escaped html) pairs; pairs whose value is None are left out."""
    items = "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in pairs if v is not None)
    return f'<dl class="meta">{items}</dl>' if items else ""


def _table(head: list[str], rows: list[list[str]], num_cols: frozenset[int] = frozenset()) -> str:
    """An HTML table; ``head`` is plain text (escaped here), cells are already-escaped html."""
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{c}</td>' if i in num_cols else f"<td>{c}</td>"
                         for i, c in enumerate(r)) + "</tr>"
        for r in rows)
    return f'<div class="scroll"><table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table></div>'


def _ul(items: list[Any], cls: str = "") -> str:
    if not items:
        return ""
    attr = f' class="{cls}"' if cls else ""
    return f"<ul{attr}>" + "".join(f"<li>{_e(i)}</li>" for i in items) + "</ul>"


def _json_block(title: str, obj: Any) -> str:
    text = json.dumps(obj, indent=2, ensure_ascii=False, default=str)
    return f"<details><summary>{_e(title)}</summary><pre>{_e(text)}</pre></details>"


def _page(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>\n{body}\n</body></html>\n")


def _names(names: Any, limit: int = 20) -> str:
    """A list of class names, shortened after ``limit``."""
    if not isinstance(names, (list, tuple)):
        return _e(names)
    shown = ", ".join(str(n) for n in names[:limit])
    more = f" … ({len(names) - limit} more)" if len(names) > limit else ""
    return _e(shown + more)


# --------------------------------------------------------------------------------------------
# Run report
# --------------------------------------------------------------------------------------------


def _summary_run(run: dict, rows: list[dict], phases: Any, phases_err: str | None) -> str:
    model = run.get("model") or {}
    data = run.get("data") or {}
    out = ['<section id="summary"><h2>Summary</h2>']
    splits = data.get("splits")
    split_txt = (", ".join(f"{_e(k)} {_e(v)}" for k, v in splits.items()) if isinstance(splits, dict) else None)
    analyzed = data.get("analyzed")
    images = None
    if analyzed is not None:
        images = _e(analyzed) + (f" of {_e(data['n'])}" if data.get("n") is not None else "")
        if split_txt:
            images += f" (splits: {split_txt})"
    prefix = model.get("prefix_tokens")
    out.append(_meta([
        ("Model", f"<code>{_e(model.get('name', '?'))}</code>"
                  + (f" — {_e(model['spec'])}" if model.get("spec") else "")),
        ("Architecture", _e(model["class"]) if model.get("class") else None),
        ("Depth", f"{_e(model['depth'])} blocks" if model.get("depth") is not None else None),
        ("Parameters", f"{model['parameters']:,}" if isinstance(model.get("parameters"), int) else None),
        ("Width / heads", f"{_e(model.get('embed_dim', '?'))} / {_e(model.get('num_heads', '?'))}"
         if model.get("embed_dim") is not None or model.get("num_heads") is not None else None),
        ("Prefix tokens", _e(", ".join(map(str, prefix)) or "none") if isinstance(prefix, list) else None),
        ("Data", _e(data["spec"]) if data.get("spec") is not None else None),
        ("Images analyzed", images),
        ("Classes", (f"{_e(data.get('num_classes', '?'))}: {_names(data.get('class_names'))}"
                     if data.get("class_names") is not None or data.get("num_classes") is not None else None)),
        ("Metrics", _e(", ".join(sorted({r["metric"] for r in rows}))) if rows else "none"),
    ]))

    if phases is None:
        out.append(f'<p class="note">phases.json is {_e(phases_err or "missing")} in this run directory: phase '
                   "fits, effective depth, trade-off onset, truncation estimate and recommendations are "
                   "skipped. The per-layer results below are complete.</p>")
    elif not isinstance(phases, dict):
        out.append('<p class="note">phases.json does not hold an object; phase summaries are skipped.</p>')
    else:
        out.append(_phases_html(phases, _get(run, "model", "depth")))

    warnings = []
    for w in run.get("warnings") or []:
        warnings.append(w if isinstance(w, str) else json.dumps(w, default=str))
    for w in model.get("site_warnings") or []:
        warnings.append(w if isinstance(w, str) else json.dumps(w, default=str))
    skipped = data.get("skipped") or []
    if skipped:
        shown = ", ".join(str(s) for s in skipped[:10]) + (" …" if len(skipped) > 10 else "")
        warnings.append(f"{len(skipped)} unreadable image(s) skipped: {shown}")
    if warnings:
        out.append('<div class="warn"><strong>Warnings</strong>' + _ul(warnings) + "</div>")
    else:
        out.append("<p>No warnings.</p>")
    out.append("</section>")
    return "\n".join(out)


def _ci_pair(ci: Any) -> str:
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        return f"[{_num(ci[0], 3)}, {_num(ci[1], 3)}]"
    return ""


def _slopes(slopes: Any) -> str:
    """Segment slopes, with round-off residue (|s| < 1e-9) shown as 0."""
    if not isinstance(slopes, (list, tuple)):
        return "—"
    return ", ".join(_num(0.0 if _finite(s) and abs(s) < 1e-9 else s, 3) for s in slopes)


def _phases_html(phases: dict, depth: Any) -> str:
    out = []
    fits = phases.get("fits")
    if isinstance(fits, dict) and fits:
        rows = []
        for key, fit in fits.items():
            if not isinstance(fit, dict):
                continue
            bl = fit.get("breakpoints_layer")
            bps = fit.get("breakpoints") or []
            cis = fit.get("breakpoints_ci") or []
            rel = fit.get("breakpoints_depth") or fit.get("relative_breakpoints")
            if rel is None and isinstance(depth, (int, float)) and depth:
                rel = [b / depth for b in bps if isinstance(b, (int, float))]
            cells = []
            for i in range(max(len(bl or []), len(bps))):
                name = bl[i] if bl and i < len(bl) else (_num(bps[i], 3) if i < len(bps) else "?")
                txt = f"layer {_e(name)}"
                if rel and i < len(rel):
                    txt += f" (depth {_rel(rel[i])})"
                if i < len(cis) and _ci_pair(cis[i]):
                    txt += f' <span class="ci">CI {_ci_pair(cis[i])}</span>'
                cells.append(txt)
            rows.append([
                f"<code>{_e(key)}</code>",
                f"<strong>{_e(fit.get('label', '—'))}</strong>",
                "<br>".join(cells) or "—",
                _slopes(fit.get("slopes")),
                _num(fit.get("r2"), 3),
                _pct(fit.get("label_agreement")) if fit.get("label_agreement") is not None else "—",
            ])
        out.append("<h3>Phases</h3>")
        out.append('<p class="sub">Best continuous three-segment piecewise-linear fit per curve; slopes per unit '
                   "relative depth, scaled by the curve's range; breakpoint CIs from bootstrap resamples of "
                   "images; label agreement = share of resamples giving the same shape.</p>")
        out.append(_table(["curve", "shape", "boundaries", "slopes", "R²", "label agreement"], rows,
                          frozenset({4, 5})))
    else:
        out.append("<p>No phase fits in phases.json.</p>")

    sat = phases.get("saturation")
    pairs: list[tuple[str, Any]] = []
    if isinstance(sat, dict):
        for ts, s in sat.items():
            if not isinstance(s, dict):
                continue
            frac = s.get("fraction")
            txt = (f"layer <strong>{_e(s.get('layer', '—'))}</strong> (relative depth "
                   f"{_rel(s.get('relative_depth'))}): probe accuracy {_num(s.get('value'), 3)}, "
                   f"best {_num(s.get('best'), 3)} at layer {_e(s.get('best_layer', '—'))}")
            if frac is not None:
                txt += f"; first layer reaching {_pct(frac)} of the best"
            pairs.append((f"Saturation ({ts} tokens)", txt))
    if phases.get("useful_depth") is not None:
        pairs.append(("Useful depth", f"<strong>{_rel(phases['useful_depth'])}</strong> of the depth"
                      + (f" ({_e(depth)} blocks)" if depth is not None else "")))
    onset = phases.get("tradeoff_onset")
    if isinstance(onset, dict):
        txt = (f"layer <strong>{_e(onset.get('layer', '—'))}</strong> (relative depth "
               f"{_rel(onset.get('relative_depth'))})")
        rise = onset.get("isi_rise_after")
        metric = _e(onset.get("isi_metric", "ISI"))
        if _finite(rise) and rise > 0:
            txt += f"; {metric} still rises by {_num(rise, 3)} after it (depth that buys mixing, not accuracy)"
        elif _finite(rise):
            txt += f"; {metric} does not rise after it (change {_num(rise, 3)})"
        pairs.append(("Trade-off onset", txt))
    trunc = phases.get("truncation")
    if isinstance(trunc, dict):
        txt = (f"cut after block <strong>{_e(trunc.get('layer', '—'))}</strong>: saves "
               f"{_pct(trunc.get('flops_fraction_saved'))} of forward FLOPs, "
               f"{_pct(trunc.get('latency_fraction_saved'))} of measured latency")
        lost = trunc.get("probe_acc_lost")
        if _finite(lost):
            txt += (f"; probe accuracy lost {_num(lost, 3)}" if lost >= 0
                    else f"; probe accuracy gained {_num(-lost, 3)}")
            if _finite(trunc.get("probe_acc_at_cut")) and _finite(trunc.get("probe_acc_full")):
                txt += (f" ({_num(trunc['probe_acc_at_cut'], 3)} at the cut vs {_num(trunc['probe_acc_full'], 3)} "
                        "for the full model)")
        if trunc.get("token_set"):
            txt += f" ({_e(trunc['token_set'])} tokens)"
        pairs.append(("Truncation estimate", txt))
    if pairs:
        out.append("<h3>Effective depth</h3>")
        out.append(_meta(pairs))
    recs = phases.get("recommendations")
    if isinstance(recs, list) and recs:
        out.append("<h3>Recommendations</h3>")
        out.append(_ul(recs, "rec"))
    return "\n".join(out)


def _series_key(metric: str, token_set: str) -> str:
    return f"{metric}/{token_set}" if token_set else metric


def _family_section(fam_id: str, title: str, metric_ids: list[str], rows: list[dict], fig_dir: Path,
                    embedded: set[Path]) -> str:
    """A family's figure, then two closed ``<details>``: formulas and readings, and the per-layer table."""
    out = [f'<section id="family-{_e(fam_id)}"><h2>{_e(title)}</h2>']
    png = fig_dir / f"{fam_id}.png"
    if png.is_file():
        out.append(_figure(png, f"{title}: per-layer values with 95% CI bands"))
        embedded.add(png.resolve())
    else:
        out.append(f'<p class="note">No figure figures/{_e(fam_id)}.png in this run directory.</p>')
    formulas = []
    for mid in metric_ids:
        info = METRICS.get(mid)
        formulas.append(f'<div class="metric"><h3 id="metric-{_e(mid)}">{_e(mid)}</h3>')
        if info is not None:
            formulas.append(f'<p><span class="label">Formula:</span> {_e(info.formula)}</p>')
            formulas.append(f'<p><span class="label">Reading:</span> {_e(info.reading)}</p>')
            if info.source:
                formulas.append(f'<p><span class="label">Source:</span> {_e(info.source)}</p>')
        else:
            formulas.append("<p>Not in the metric catalogue of this vitdepth version.</p>")
        formulas.append("</div>")
    out.append(f"<details><summary>Formulas and readings ({_e(', '.join(metric_ids))})</summary>"
               + "".join(formulas) + "</details>")
    # one compact table: layers as rows, one column per (metric, token set)
    series: dict[tuple[str, str], dict[str, dict]] = {}
    for r in rows:
        if r["metric"] in metric_ids:
            series.setdefault((r["metric"], r["token_set"]), {})[r["layer"]] = r
    order = {m: i for i, m in enumerate(metric_ids)}
    keys = sorted(series, key=lambda k: (order[k[0]], k[1]))
    layers = sorted({lay for s in series.values() for lay in s}, key=_layer_sort)
    head = ["layer"]
    for k in keys:
        ns = {r["n"] for r in series[k].values()}
        head.append(_series_key(*k) + (f" (n={next(iter(ns))})" if len(ns) == 1 else ""))
    table_rows = []
    for lay in layers:
        cells = [_e(lay)]
        for k in keys:
            r = series[k].get(lay)
            if r is None:
                cells.append("")
                continue
            cell = _num(r["value"])
            if _finite(r["ci_low"]) or _finite(r["ci_high"]):
                cell += f' <span class="ci">[{_num(r["ci_low"])}, {_num(r["ci_high"])}]</span>'
            cells.append(cell)
        table_rows.append(cells)
    if keys:
        out.append(f"<details><summary>Per-layer values ({len(layers)} layers × {len(keys)} curves)</summary>"
                   '<p class="sub">95% CI in brackets (bootstrap over images for per-image metrics, Wilson for '
                   "probes; none for whole-split statistics).</p>"
                   + _table(head, table_rows, frozenset(range(1, len(head)))) + "</details>")
    out.append("</section>")
    return "\n".join(out)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _layer_sort(layer: str) -> tuple[int, str]:
    try:
        return (layer_order(layer), "")
    except ValueError:
        return (10**9, str(layer))


def _provenance_run(run: dict, run_dir: Path) -> str:
    model = run.get("model") or {}
    data = run.get("data") or {}
    out = ['<section id="provenance"><h2>Provenance</h2>']
    out.append(_meta([
        # analyze writes the report into a temporary sibling before renaming it: name the configured one
        ("Run directory", f"<code>{_e(_get(run, 'config', 'out') or run_dir)}</code>"),
        ("vitdepth", _e(run.get("vitdepth_version") or _get(run, "versions", "vitdepth", default="?"))),
        ("Seed", _e(run.get("seed", _get(run, "config", "seed", default="?")))),
        ("Data identity", _e(f"{data.get('spec', '?')} ({data.get('kind', '?')}), {data.get('n', '?')} images, "
                             f"{data.get('num_classes', '?')} classes")),
        ("Data hash", f"<code>{_e(data['content_hash'])}</code>" if data.get("content_hash") else None),
        ("Weights", _e(", ".join(f"{k}: {v}" for k, v in model["weights"].items()))
         if isinstance(model.get("weights"), dict) else None),
    ]))
    if isinstance(run.get("config"), dict):
        out.append(_kv_details("Configuration", run["config"]))
    if isinstance(run.get("versions"), dict):
        out.append(_kv_details("Versions", run["versions"]))
    if isinstance(run.get("timings"), dict):
        out.append(_kv_details("Timings (s)", run["timings"]))
    ident = {k: v for k, v in data.items() if k != "class_names"}
    if ident:
        out.append(_kv_details("Data identity", {**ident, "class_names": data.get("class_names")}))
    slim_model = {k: v for k, v in model.items() if k != "checkpoint_config"}
    if slim_model:
        out.append(_kv_details("Model identity", slim_model))
    out.append(_json_block("run.json (complete)", run))
    out.append("</section>")
    return "\n".join(out)


def _kv_details(title: str, d: dict) -> str:
    rows = []
    for k, v in d.items():
        if isinstance(v, float):
            txt = _num(v, 6)
        elif isinstance(v, (dict, list)):
            txt = f"<code>{_e(json.dumps(v, ensure_ascii=False, default=str))}</code>"
        else:
            txt = _e(json.dumps(v) if v is None or isinstance(v, bool) else v)
        rows.append([f"<code>{_e(k)}</code>", txt])
    return f"<details><summary>{_e(title)}</summary>{_table(['key', 'value'], rows)}</details>"


def write_run_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html``: summary, a section per metric family, provenance; return its path.

    Reads ``run.json``, ``layers.csv``, ``phases.json`` (optional) and ``figures/*.png`` only. Every figure in
    ``figures/`` is embedded; figures of no known family go to a last "Other figures" section.
    """
    run_dir = Path(run_dir)
    res = load_run(run_dir)
    run, rows = res.run, res.rows
    phases, phases_err = _read_json(run_dir / "phases.json")
    fig_dir = run_dir / "figures"
    name = _get(run, "model", "name", default=run_dir.name)

    present = {r["metric"] for r in rows}
    families: list[tuple[str, str, list[str]]] = []
    for fam_id, title in FAMILIES.items():
        ids = [m.id for m in METRICS.values() if m.family == fam_id and m.id in present]
        if ids:
            families.append((fam_id, title, ids))
    unknown = sorted(present - set(METRICS))
    if unknown:
        families.append(("other", "Other metrics", unknown))

    data_spec = _get(run, "data", "spec", default="?")
    parts = [f"<header><h1>vitdepth report — {_e(name)}</h1>"
             f'<p class="sub">{_e(_get(run, "model", "spec", default=""))} on {_e(data_spec)}; layer-by-layer '
             "depth diagnostics (arXiv 2511.21635). Self-contained: opens offline.</p>"]
    toc = ['<a href="#summary">Summary</a>']
    toc += [f'<a href="#family-{_e(f)}">{_e(t)}</a>' for f, t, _ in families]
    cka_self, _ = _read_json(run_dir / "cka_self.json")
    if isinstance(cka_self, dict):
        toc.append('<a href="#cka-self">Layer similarity (CKA)</a>')
    toc.append('<a href="#provenance">Provenance</a>')
    parts.append('<nav class="toc">' + "".join(toc) + "</nav>")
    verdict = verdict_line(phases, _get(run, "model", "depth")) if isinstance(phases, dict) else ""
    parts.append(f'<p class="verdict"><strong>Verdict:</strong> {_e(verdict)}</p>' if verdict else
                 '<p class="verdict"><strong>Verdict:</strong> no phase fits in this run directory (phases.json '
                 f"{_e(phases_err or 'holds none')}).</p>")
    parts.append("</header>")
    parts.append(_summary_run(run, rows, phases, phases_err))
    embedded: set[Path] = set()
    for fam_id, title, ids in families:
        parts.append(_family_section(fam_id, title, ids, rows, fig_dir, embedded))
    if isinstance(cka_self, dict):
        parts.append(_cka_self_section(cka_self, fig_dir, embedded))
    others = [p for p in sorted(fig_dir.glob("*.png")) if p.resolve() not in embedded] if fig_dir.is_dir() else []
    if others:
        parts.append('<section id="other-figures"><h2>Other figures</h2>')
        parts.extend(_figure(p, p.stem) for p in others)
        parts.append("</section>")
    parts.append(_provenance_run(run, run_dir))
    out = run_dir / "report.html"
    out.write_text(_page(f"vitdepth — {name}", "\n".join(parts)), encoding="utf-8")
    return out


# --------------------------------------------------------------------------------------------
# Compare report
# --------------------------------------------------------------------------------------------


def _compare_summary(cmp: dict) -> str:
    models = [m for m in cmp.get("models") or [] if isinstance(m, dict)]
    out = ['<section id="summary"><h2>Summary</h2>']
    if cmp.get("mixed_data") or (cmp.get("allow_mixed_data") and cmp.get("mixed_data") is None):
        out.append('<p class="warn">These runs were allowed to use different data '
                   "(<code>--allow-mixed-data</code>): differences may come from the data, not the models.</p>")
    if models:
        rows = []
        for m in models:
            rows.append([
                f"<code>{_e(m.get('name', '?'))}</code>",
                _e(m.get("depth", "—")),
                _e(m.get("saturation_layer", "—")),
                _rel(m.get("useful_depth")),
                _e(m.get("tradeoff_onset_layer", "—")),
                _rel(m.get("tradeoff_onset_depth")),
                _num(m.get("isi_rise_after"), 3),
                _num(m.get("best_probe"), 3),
            ])
        out.append("<h3>Effective depth per model</h3>")
        out.append(_table(["model", "depth", "saturation layer", "useful depth", "trade-off onset (layer)",
                           "trade-off onset (depth)", "ISI rise after onset", "best probe"], rows,
                          frozenset({1, 2, 3, 4, 5, 6, 7})))
        truncs = [(m, m["truncation"]) for m in models if isinstance(m.get("truncation"), dict)]
        if truncs:
            rows = [[f"<code>{_e(m.get('name', '?'))}</code>", _e(t.get("layer", "—")),
                     _pct(t.get("flops_fraction_saved")), _pct(t.get("latency_fraction_saved")),
                     _num(t.get("probe_acc_lost"), 3)] for m, t in truncs]
            out.append("<h3>Truncation estimate per model</h3>")
            out.append('<p class="sub">Cutting each model after its saturation block: forward FLOPs and measured '
                       "latency saved, against the probe accuracy lost (negative: gained).</p>")
            out.append(_table(["model", "cut after block", "FLOPs saved", "latency saved", "probe accuracy lost"],
                              rows, frozenset({1, 2, 3, 4})))
        curves: list[str] = []
        for m in models:
            for k in (m.get("phases") or {}):
                if k not in curves:
                    curves.append(k)
        if curves:
            out.append("<h3>Phase fits</h3>")
            shape_rows = []
            for c in curves:
                cells = [f"<code>{_e(c)}</code>"]
                for m in models:
                    p = (m.get("phases") or {}).get(c)
                    if isinstance(p, dict):
                        bl = ", ".join(str(b) for b in p.get("breakpoints_layer") or [])
                        cells.append(_e(p.get("label", "—")) + (f' <span class="ci">({_e(bl)})</span>' if bl else ""))
                    else:
                        cells.append("—")
                shape_rows.append(cells)
            out.append('<p class="sub">Shape per curve and model, boundaries (layers) in brackets.</p>')
            out.append(_table(["curve", *[str(m.get("name", "?")) for m in models]], shape_rows))
            rows = []
            for c in curves:
                for m in models:
                    p = (m.get("phases") or {}).get(c)
                    if not isinstance(p, dict):
                        continue
                    bl = p.get("breakpoints_layer") or []
                    bd = p.get("breakpoints_depth") or []
                    cis = [_ci_pair(ci) for ci in p.get("breakpoints_ci") or []]
                    rows.append([f"<code>{_e(c)}</code>", f"<code>{_e(m.get('name', '?'))}</code>",
                                 _e(p.get("label", "—")),
                                 _e(", ".join(str(b) for b in bl)) or "—",
                                 ", ".join(_rel(b) for b in bd) or "—",
                                 f'<span class="ci">{", ".join(cis)}</span>' if any(cis) else "—"])
            out.append(f"<details><summary>All fits ({len(rows)} rows: curve × model)</summary>"
                       + _table(["curve", "model", "shape", "boundaries (layers)", "boundaries (relative depth)",
                                 "boundary CIs (layers)"], rows) + "</details>")
    else:
        out.append("<p>compare.json lists no models.</p>")
    shifts = [s for s in cmp.get("shifts") or [] if isinstance(s, dict)]
    if shifts:
        out.append("<h3>Shifts between models</h3>")
        out.append(_ul(key_shift_sentences(shifts)))
        out.append(_shift_table(shifts))
    recs = cmp.get("recommendations")
    if isinstance(recs, list) and recs:
        out.append("<h3>Recommendations</h3>")
        out.append(_ul(recs, "rec"))
    out.append("</section>")
    return "\n".join(out)


def _magnitude(shift: dict) -> float:
    """|shift in layers| for sorting; a missing or non-numeric shift sorts last."""
    v = shift.get("layers")
    return abs(float(v)) if _finite(v) else -1.0


def key_shift_sentences(shifts: list[dict], top: int = 3) -> list[str]:
    """The few shift sentences worth reading: the ``top`` largest shifts, then every trade-off onset shift.

    Shifts of 0 layers are left out of the top ones; the table beside the sentences lists every shift.
    """
    ranked = sorted((s for s in shifts if _magnitude(s) > 0), key=_magnitude, reverse=True)[:top]
    onsets = [s for s in shifts if s.get("what") == "trade-off onset"]
    chosen = ranked + [s for s in onsets if s not in ranked]
    return [str(s["sentence"]) for s in chosen if s.get("sentence")]


# sorts a table.sortable by the clicked header: numbers by data-v (else the text), text alphabetically
_SORT_JS = """
document.querySelectorAll("table.sortable").forEach(function (t) {
  t.querySelectorAll("th").forEach(function (th, i) {
    th.addEventListener("click", function () {
      var body = t.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var dir = th.getAttribute("data-dir") === "desc" ? 1 : -1;
      th.setAttribute("data-dir", dir === 1 ? "asc" : "desc");
      function key(r) {
        var c = r.cells[i];
        return c.hasAttribute("data-v") ? c.getAttribute("data-v") : c.textContent;
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b), nx = parseFloat(x), ny = parseFloat(y);
        return dir * ((isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny);
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def _shift_table(shifts: list[dict]) -> str:
    """Every shift in one table, largest |shift| first; headers sort on click (inline script, no links)."""
    rows = []
    for s in sorted(shifts, key=_magnitude, reverse=True):
        dl, dd = s.get("layers"), s.get("relative_depth")
        when = "" if not _finite(dl) or dl == 0 else (" later" if dl > 0 else " earlier")
        layers = f"{_num(dl, 3)}{when}" if _finite(dl) else "—"
        rows.append(f"<tr><td>{_e(s.get('what', '?'))}</td><td>{_e(s.get('from', '?'))}</td>"
                    f"<td>{_e(s.get('to', '?'))}</td>"
                    f'<td class="num" data-v="{_magnitude(s):g}">{layers}</td>'
                    f'<td class="num" data-v="{abs(dd) if _finite(dd) else -1:g}">{_num(dd, 2)}</td></tr>')
    head = "".join(f"<th>{h}</th>" for h in ("what", "from", "to", "shift (layers)", "shift (relative depth)"))
    return ('<p class="sub">Every shift, largest first (click a header to sort; shifts sort by magnitude).</p>'
            f'<div class="scroll"><table class="sortable" id="shifts"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div><script>{_SORT_JS}</script>")


def _provenance_compare(cmp: dict, compare_dir: Path) -> str:
    # compare_dir only resolves relative run directories: compare writes into a temporary sibling first
    out = ['<section id="provenance"><h2>Provenance</h2>']
    rows = []
    for m in cmp.get("models") or []:
        if not isinstance(m, dict):
            continue
        run_dir = m.get("run_dir")
        ident = ""
        if run_dir:
            for cand in (Path(str(run_dir)), compare_dir / str(run_dir)):
                run, err = _read_json(cand / "run.json")
                if isinstance(run, dict):
                    d = run.get("data") or {}
                    ident = (f"{d.get('spec', '?')}, {d.get('analyzed', '?')} images analyzed of "
                             f"{d.get('n', '?')}, seed {run.get('seed', '?')}")
                    break
        rows.append([f"<code>{_e(m.get('name', '?'))}</code>", f"<code>{_e(run_dir or '—')}</code>",
                     f"<code>{_e(m.get('data_hash') or '—')}</code>", _e(ident or "—")])
    if rows:
        out.append(_table(["model", "run directory", "data hash", "data (from run.json)"], rows))
    hashes = {m.get("data_hash") for m in cmp.get("models") or [] if isinstance(m, dict) and m.get("data_hash")}
    if len(hashes) > 1:
        out.append('<p class="warn">The runs were made on different data (data hashes differ).</p>')
    elif len(hashes) == 1:
        out.append("<p>All runs share the same data (identical data hash).</p>")
    out.append(_json_block("compare.json (complete)", cmp))
    out.append("</section>")
    return "\n".join(out)


def _figure_metric(stem: str) -> tuple[str, str] | None:
    """(metric id, token set) of an overlay figure named ``<metric>`` or ``<metric>_<token set>``."""
    if stem in METRICS:
        return stem, ""
    head, _, tail = stem.rpartition("_")
    if head in METRICS and tail in METRICS[head].token_sets:
        return head, tail
    return None


def _figure_order(path: Path) -> tuple:
    ids = list(METRICS)
    fams = list(FAMILIES)
    key = _figure_metric(path.stem)
    if key is not None:
        return (0, ids.index(key[0]), key[1], "")
    if path.stem in FAMILIES:
        return (1, fams.index(path.stem), "", "")
    return (2, 0, "", path.stem)


def _figure_caption(stem: str) -> str:
    key = _figure_metric(stem)
    if key is not None:
        title = FAMILIES.get(METRICS[key[0]].family, "")
        return f"{_series_key(*key)} ({title})" if title else _series_key(*key)
    return f"{FAMILIES[stem]} ({stem})" if stem in FAMILIES else stem


def write_compare_report(compare_dir: str | Path) -> Path:
    """Write ``compare_dir/report.html`` from ``compare.json`` and ``figures/*.png``; return its path.

    Summary (per-model effective depth and phase boundaries, shifts, recommendations), overlay figures,
    provenance. Every key of ``compare.json`` is optional.
    """
    compare_dir = Path(compare_dir)
    cmp, err = _read_json(compare_dir / "compare.json")
    if not isinstance(cmp, dict):
        from .._errors import VitdepthError

        raise VitdepthError(f"{compare_dir}/compare.json is {err or 'not an object'}; create it with vitdepth "
                            "compare RUN_DIR ...")
    names = [str(m.get("name", "?")) for m in cmp.get("models") or [] if isinstance(m, dict)]
    title = "vitdepth comparison — " + (" vs ".join(names) if names else compare_dir.name)
    parts = [f"<header><h1>{_e(title)}</h1>"
             '<p class="sub">Cross-size comparison of saved runs (arXiv 2511.21635 diagnostics). '
             "Self-contained: opens offline.</p>"
             '<nav class="toc"><a href="#summary">Summary</a><a href="#figures">Overlay figures</a>'
             + ('<a href="#alignment">Layer alignment (CKA)</a>' if cmp.get("alignments") else "")
             + '<a href="#provenance">Provenance</a></nav></header>']
    parts.append(_compare_summary(cmp))
    fig_dir = compare_dir / "figures"
    pngs = sorted(fig_dir.glob("*.png"), key=_figure_order) if fig_dir.is_dir() else []
    parts.append('<section id="figures"><h2>Overlay figures</h2>')
    if pngs:
        for p in pngs:
            parts.append(_figure(p, _figure_caption(p.stem) + ": every model overlaid"))
    else:
        parts.append('<p class="note">No figures in this comparison directory.</p>')
    parts.append("</section>")
    if cmp.get("alignments"):
        parts.append(_alignment_section(cmp["alignments"], compare_dir))
    parts.append(_provenance_compare(cmp, compare_dir))
    out = compare_dir / "report.html"
    out.write_text(_page(title, "\n".join(parts)), encoding="utf-8")
    return out


# --------------------------------------------------------------------------------------------------------------
# Layer alignment (debiased linear CKA)
# --------------------------------------------------------------------------------------------------------------

_CKA_READING = ("Debiased linear CKA (Kornblith et al. 2019; unbiased HSIC of Song et al. 2012, as in Nguyen, Raghu "
                "& Kornblith 2021) between the pooled features of two layers over the same images: 1 = the same "
                "representation up to rotation and scale, ≈ 0 = unrelated. Bright cells on a diagonal band mean the "
                "two models compute the same things in the same order; a band that bends away from the diagonal is "
                "a shift in depth. The path marks, for each layer on the y axis, the most similar layer on the x "
                "axis, with the bootstrap 95% CI of that match.")


def _inline_figure(fig, caption: str) -> str:
    """A figure drawn at report time (a matplotlib ``Figure`` outside pyplot), embedded as PNG bytes."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<figure><img alt="{_e(caption)}" src="{uri}"><figcaption>{_e(caption)}</figcaption></figure>'


def _match_table(result: dict) -> str:
    rows = []
    for m in result.get("best_match") or []:
        ci = m.get("cka_ci") or [None, None]
        lo, hi = (m.get("layer_b_ci") or ["?", "?"])[:2]
        rows.append([_e(m.get("layer_a")), _e(m.get("layer_b")), _num(m.get("cka"), 3),
                     f'<span class="ci">[{_num(ci[0], 3)}, {_num(ci[1], 3)}]</span>',
                     _e(lo if lo == hi else f"{lo}–{hi}"), _rel(m.get("relative_depth_a")),
                     _rel(m.get("relative_depth_b"))])
    a, b = _get(result, "a", "name", default="A"), _get(result, "b", "name", default="B")
    return _table([f"layer of {a}", f"best layer of {b}", "CKA", "95% CI", "95% CI of the match",
                   f"ℓ/L {a}", f"ℓ/L {b}"], rows, frozenset({2, 5, 6}))


def _alignment_body(result: dict, png: Path | None) -> str:
    out = []
    if result.get("summary"):
        out.append(f'<p class="verdict">{_e(result["summary"])}</p>')
    out.append(_ul(result.get("sentences") or []))
    caption = (f"CKA between the layers of {_get(result, 'a', 'name', default='A')} (y) and "
               f"{_get(result, 'b', 'name', default='B')} (x), {result.get('token_set', '?')} tokens, "
               f"{result.get('n_images', '?')} images; path: best match per row with its 95% CI")
    if png is not None and png.is_file():
        out.append(_figure(png, caption))
    else:
        from .figures import cka_figure

        out.append(_inline_figure(cka_figure(result), caption))
    out.append(f"<details><summary>Best match per layer</summary>{_match_table(result)}</details>")
    return "\n".join(out)


def _alignment_section(alignments: list, compare_dir: Path) -> str:
    out = ['<section id="alignment"><h2>Layer alignment (CKA)</h2>', f"<p>{_e(_CKA_READING)}</p>"]
    for al in alignments:
        if not isinstance(al, dict):
            continue
        out.append(f"<h3>{_e(al.get('from', '?'))} → {_e(al.get('to', '?'))}</h3>")
        where = compare_dir / str(al.get("dir", ""))
        result, err = _read_json(where / "align.json")
        if isinstance(result, dict):
            out.append(_alignment_body(result, where / "figures" / "cka.png"))
        else:
            out.append(f'<p class="warn">{_e(al.get("dir"))}/align.json is {_e(err)}.</p>')
            out.append(_ul(al.get("sentences") or []))
    out.append("</section>")
    return "\n".join(out)


def _cka_self_section(result: dict, fig_dir: Path, embedded: set) -> str:
    out = ['<section id="cka-self"><h2>Layer×layer similarity within the model (CKA)</h2>',
           "<p>Debiased linear CKA between every pair of layers of this model over the same images "
           f"({_e(result.get('token_set', '?'))} tokens, {_e(result.get('n_images', '?'))} images, "
           f"{_e(result.get('n_boot', '?'))} bootstrap replicates). Square bright blocks on the diagonal are runs "
           "of layers that hardly change the representation: the Plateau shows up as one such block.</p>"]
    if result.get("summary"):
        out.append(f'<p class="verdict">{_e(result["summary"])}</p>')
    caption = f"CKA within {result.get('model', '?')} (outlined: blocks of mutually similar layers)"
    png = fig_dir / "cka_self.png"
    if png.is_file():
        embedded.add(png.resolve())
        out.append(_figure(png, caption))
    else:
        from .figures import cka_self_figure

        out.append(_inline_figure(cka_self_figure(result), caption))
    blocks = result.get("blocks") or []
    if blocks:
        rows = [[_e(b.get("first")), _e(b.get("last")), _num(b.get("n_layers")), _num(b.get("min_cka"), 3)]
                for b in blocks]
        out.append(_table(["first layer", "last layer", "layers", "smallest pairwise CKA"], rows,
                          frozenset({2, 3})))
    out.append("</section>")
    return "\n".join(out)


def write_align_report(align_dir: str | Path) -> Path:
    """Write ``align_dir/report.html`` from ``align.json`` and ``figures/cka.png``; return its path."""
    align_dir = Path(align_dir)
    result, err = _read_json(align_dir / "align.json")
    if not isinstance(result, dict):
        from .._errors import VitdepthError

        raise VitdepthError(f"{align_dir}/align.json is {err or 'not an object'}; create it with vitdepth align "
                            "RUN_A RUN_B --out DIR")
    a, b = _get(result, "a", "name", default="A"), _get(result, "b", "name", default="B")
    title = f"vitdepth layer alignment — {a} vs {b}"
    parts = [f"<header><h1>{_e(title)}</h1>"
             '<p class="sub">Which layer of one model computes what a layer of the other computes, from saved runs '
             "(arXiv 2511.21635 diagnostics). Self-contained: opens offline.</p></header>",
             '<section id="alignment"><h2>Layer alignment (CKA)</h2>', f"<p>{_e(_CKA_READING)}</p>",
             _alignment_body(result, align_dir / "figures" / "cka.png"), "</section>",
             '<section id="provenance"><h2>Provenance</h2>',
             _meta([(f"run A ({a})", f"<code>{_e(_get(result, 'a', 'run_dir'))}</code>"),
                    (f"run B ({b})", f"<code>{_e(_get(result, 'b', 'run_dir'))}</code>"),
                    ("images", f"{_num(result.get('n_images'))} of {_num(result.get('n_common'))} analyzed in both"),
                    ("bootstrap", f"{_num(result.get('n_boot'))} replicates, seed {_num(result.get('seed'))}"),
                    ("method", _e(result.get("method")))]),
             _json_block("align.json (complete)", result), "</section>"]
    out = align_dir / "report.html"
    out.write_text(_page(title, "\n".join(parts)), encoding="utf-8")
    return out
