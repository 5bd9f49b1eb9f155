"""``vitdepth compare``: cross-size comparison from run directories only (no model needed).

For each run it reads ``run.json``, ``layers.csv`` and ``phases.json`` (computing the latter
from the saved results when missing), then reports per model the phase boundaries, the
saturation layer (effective depth), useful depth and the information–task trade-off onset, and
between consecutive models the shift of each in layers and in relative depth — the paper's
"ViT-L reaches the trade-off about ten layers later than ViT-B" (arXiv 2511.21635) — with
overlays on absolute layer and on relative depth and a comparison report.
"""

from __future__ import annotations

import json
from pathlib import Path

from ._errors import VitdepthError
from .outputs import OutputDir
from .results import RunResults, layer_order, load_phases, load_run
from .summaries import build_phases

OVERLAY = (("probe_acc", "mean"), ("probe_acc", "cls"), ("token_sim", ""), ("isi_attn", ""), ("isi_rec", ""),
           ("cls_centrality", ""))


def _layer_num(layer: str | None) -> float | None:
    return None if layer is None else float(layer_order(layer))


def _data_key(res: RunResults) -> tuple:
    d = res.run["data"]
    return d.get("spec"), d.get("content_hash"), d.get("selected"), json.dumps(d.get("splits"), sort_keys=True)


def _model_summary(res: RunResults, phases: dict) -> dict:
    depth = int(res.run["model"]["depth"])
    sat = phases.get("saturation", {}).get("mean") or next(iter(phases.get("saturation", {}).values()), {})
    onset = phases.get("tradeoff_onset", {})
    best = max((r["value"] for r in res.curve("probe_acc", "mean")), default=float("nan"))
    return {"name": res.model, "run_dir": str(res.path), "depth": depth,
            "data_hash": res.run["data"].get("content_hash"),
            "saturation_layer": sat.get("layer"), "useful_depth": phases.get("useful_depth"),
            "tradeoff_onset_layer": onset.get("layer"), "tradeoff_onset_depth": onset.get("relative_depth"),
            "isi_rise_after": onset.get("isi_rise_after"), "best_probe": best,
            "truncation": phases.get("truncation"), "recommendations": phases.get("recommendations", []),
            "phases": {k: {"label": f["label"], "breakpoints_layer": f["breakpoints_layer"],
                           "breakpoints_depth": f["breakpoints_depth"], "breakpoints_ci": f.get("breakpoints_ci"),
                           "r2": f["r2"]} for k, f in phases.get("fits", {}).items()}}


def _shift(a: dict, b: dict, what: str, la: str | None, lb: str | None, da: float | None,
           db: float | None) -> dict | None:
    if la is None or lb is None:
        return None
    dl = _layer_num(lb) - _layer_num(la)
    dd = (db - da) if da is not None and db is not None else None
    when = "later" if dl > 0 else "earlier"
    sentence = (f"{b['name']} reaches the {what} {abs(dl):g} layers {when} than {a['name']}" if dl
                else f"{b['name']} reaches the {what} at the same layer as {a['name']}")
    if dd is not None:
        sentence += f" ({dd:+.2f} in relative depth: layer {lb}/{b['depth']} vs {la}/{a['depth']})"
    return {"from": a["name"], "to": b["name"], "what": what, "layers": dl, "relative_depth": dd,
            "sentence": sentence}


def compare_runs(run_dirs: list[str | Path], out: str | Path, allow_mixed_data: bool = False,
                 overwrite: bool = False, figures: bool = True, align: bool = False,
                 align_samples: int = 1024, figure_formats: tuple[str, ...] = ("png",)) -> Path:
    """Compare run directories (in the order given, e.g. S, B, L) and write ``out``.

    With ``align``, each consecutive pair is also aligned layer by layer (debiased linear CKA of the cached mean
    features, :mod:`vitdepth.align`, default subset, bootstrap and seed) into ``alignment/<i>-<j>/`` (align.json,
    cka.csv, figures/cka.<format>), listed under ``alignments`` in compare.json and shown in the report;
    ``align_samples`` images (a seeded subset of those both runs analyzed) enter the CKA.

    Raises:
        VitdepthError: fewer than two runs, a run directory that is not one, runs on different data (unless
            ``allow_mixed_data``), an existing output directory without ``overwrite``; with ``align``, a pair that
            cannot be aligned (different images, a run without a feature cache).
    """
    if len(run_dirs) < 2:
        raise VitdepthError("compare needs at least two run directories (e.g. the S, B and L runs of a family)")
    od = OutputDir(out, "compare", overwrite=overwrite, inputs=[Path(d) for d in run_dirs])
    od.check()  # before reading anything: never an input, the current directory or a user's folder
    runs = [load_run(d) for d in run_dirs]
    keys = {_data_key(r) for r in runs}
    if len(keys) > 1 and not allow_mixed_data:
        specs = ", ".join(f"{r.model}: {r.run['data'].get('spec')} ({r.run['data'].get('selected')} images)"
                          for r in runs)
        raise VitdepthError(f"the runs were made on different data ({specs}); analyze them on the same data or pass "
                            "--allow-mixed-data")
    phases = []
    for r in runs:  # a phases.json that does not belong to its layers.csv is refused; a legacy one is refitted
        p = load_phases(r)
        phases.append(p if p is not None else build_phases(r.path, write=False))
    models = [_model_summary(r, p) for r, p in zip(runs, phases, strict=True)]
    names = [m["name"] for m in models]
    for i, m in enumerate(models):  # keep names unique for tables and legends
        if names.count(m["name"]) > 1:
            m["name"] = f"{m['name']}#{i + 1}"
    shifts = []
    for a, b in zip(models, models[1:], strict=False):
        candidates = [
            _shift(a, b, "trade-off onset", a["tradeoff_onset_layer"], b["tradeoff_onset_layer"],
                   a["tradeoff_onset_depth"], b["tradeoff_onset_depth"]),
            _shift(a, b, "probe saturation", a["saturation_layer"], b["saturation_layer"], a["useful_depth"],
                   b["useful_depth"]),
        ]
        for key in sorted(set(a["phases"]) & set(b["phases"])):
            pa, pb = a["phases"][key], b["phases"][key]
            for j, label in enumerate(("first", "second")):
                candidates.append(_shift(a, b, f"{label} {key} phase boundary", pa["breakpoints_layer"][j],
                                         pb["breakpoints_layer"][j], pa["breakpoints_depth"][j],
                                         pb["breakpoints_depth"][j]))
        shifts += [c for c in candidates if c is not None]
    recommendations = [f"{m['name']}: {rec}" for m in models for rec in m["recommendations"]]
    result = {"models": models, "shifts": shifts, "recommendations": recommendations,
              "allow_mixed_data": allow_mixed_data, "mixed_data": len(keys) > 1}
    pairs = []
    if align:  # every refusal before any feature is read or anything is written
        from .align import align_pair

        for i in range(len(runs) - 1):
            a, b, common = align_pair(runs[i], runs[i + 1])
            a.name, b.name = models[i]["name"], models[i + 1]["name"]
            pairs.append((i, (a, b, common)))
    with od:
        if pairs:
            from .align import compute_alignment, write_alignment

            result["alignments"] = []
            for i, prepared in pairs:
                rel = f"alignment/{i + 1}-{i + 2}"
                al = compute_alignment(prepared, samples=align_samples)
                write_alignment(od.tmp / rel, al, figures=figures, report=False, formats=figure_formats)
                result["alignments"].append({"from": models[i]["name"], "to": models[i + 1]["name"], "dir": rel,
                                             "sentences": al["sentences"], "summary": al["summary"]})
        (od.tmp / "compare.json").write_text(json.dumps(result, indent=2))
        if figures:
            from .report.figures import write_compare_figures
            from .report.html import write_compare_report

            write_compare_figures(od.tmp, runs, phases, [m["name"] for m in models], OVERLAY, figure_formats)
            write_compare_report(od.tmp)
        out = od.commit()
    return out


def compare_summary(out: str | Path) -> str:
    """A few lines for the terminal: per-model effective depth and the shift sentences."""
    result = json.loads((Path(out) / "compare.json").read_text())
    lines = []
    for m in result["models"]:
        fit = m["phases"].get("probe_acc/mean") or m["phases"].get("token_sim") or {}
        useful = "—" if m["useful_depth"] is None else f"{m['useful_depth']:.2f}"
        lines.append(f"{m['name']:>8}: depth {m['depth']:>2}  best mean probe {m['best_probe']:.3f}  saturation layer "
                     f"{m['saturation_layer']}  useful depth {useful}  onset {m['tradeoff_onset_layer']}  "
                     f"probe shape {fit.get('label', '—')}")
    lines += [s["sentence"] for s in result["shifts"] if s["what"] in ("trade-off onset", "probe saturation")]
    lines += [a["summary"] for a in result.get("alignments") or [] if a.get("summary")]
    return "\n".join(lines)
