"""Phases and depth summaries of a run, computed from its saved results only (design §5).

Reads ``layers.csv``, ``per_image.npz`` and ``run.json`` of a run directory and writes
``phases.json``: three-segment phase fits (with bootstrap breakpoint CIs where per-image
values exist), the saturation layer (effective depth), useful depth, the information–task
trade-off onset with the ISI rise after it, the truncation estimate and plain-language
recommendations. ``phases.json`` records the sha256 of the ``layers.csv`` it was fitted to.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from ._errors import VitdepthError
from .phases import (
    PhaseThresholds,
    bootstrap_breakpoints,
    fit_three_segments,
    recommendations,
    saturation_layer,
    tradeoff_onset,
)
from .results import layer_order, load_run

# (metric, token_set) curves that get a phase fit when present
FITTED = (("token_sim", ""), ("token_sim_centered", ""), ("isi_attn", ""), ("isi_rec", ""), ("probe_acc", "cls"),
          ("probe_acc", "mean"), ("cls_centrality", ""), ("lens_acc", ""), ("cls_swap_follow", ""),
          ("cls_knockout_kl", ""))


def curve_key(metric: str, token_set: str) -> str:
    """``probe_acc/mean`` style key of a curve."""
    return f"{metric}/{token_set}" if token_set else metric


def _layer_name(x: float) -> str:
    return "pre" if x < 0 else str(int(round(x)))


def _per_image_matrix(npz, metric: str, token_set: str, layers: list[str], xs: list[str]) -> np.ndarray | None:
    key = f"probe_correct_{token_set}" if metric == "probe_acc" else metric
    if key not in npz:
        return None
    full = npz[key]
    cols = [layers.index(x) for x in xs]
    return full[:, cols]


def build_phases(run_dir: str | Path, thresholds: PhaseThresholds | None = None, n_boot: int = 200,
                 fraction: float = 0.99, write: bool = True) -> dict:
    """Fit phases and depth summaries for a run directory and write ``phases.json`` (unless ``write`` is False).

    ``phases.json`` records ``layers_sha256``, the sha256 of the ``layers.csv`` bytes it was fitted to, so that
    :func:`vitdepth.results.load_phases` can refuse it once ``layers.csv`` changes. Curves without a finite
    probe accuracy get no saturation (and no trade-off onset).

    Args:
        run_dir: a run directory (``run.json`` and ``layers.csv``; ``per_image.npz`` adds breakpoint CIs).
        thresholds: phase-fit thresholds (default :class:`~vitdepth.phases.PhaseThresholds`).
        n_boot: bootstrap resamples of the breakpoints.
        fraction: fraction of the best probe accuracy that defines saturation.
        write: write ``phases.json`` into the run directory (``compare`` refits in memory: it never writes into
            its inputs).

    Returns:
        The phases, as written.

    Raises:
        VitdepthError: an unreadable run directory or ``per_image.npz`` (see :func:`vitdepth.results.load_run`).
    """
    thresholds = thresholds or PhaseThresholds()
    res = load_run(run_dir)
    depth = int(res.run["model"]["depth"])
    layers = list(res.run["model"]["layers"])
    npz_path = Path(run_dir) / "per_image.npz"
    try:
        npz = dict(np.load(npz_path)) if npz_path.is_file() else {}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise VitdepthError(f"{npz_path} is unreadable, truncated or corrupt ({type(e).__name__}); re-run vitdepth "
                            "analyze") from None
    seed = int(res.run.get("seed", 0))
    # the layers.csv these phases were fitted to: results.load_phases refuses the file once layers.csv changes
    out: dict = {"layers_sha256": res.layers_sha256, "thresholds": thresholds.to_dict(), "fits": {},
                 "saturation": {}, "recommendations": []}
    for metric, ts in FITTED:
        curve = [r for r in res.curve(metric, ts) if np.isfinite(r["value"])]
        if len(curve) < 5:
            continue
        x = np.array([layer_order(r["layer"]) for r in curve], dtype=float)
        y = np.array([r["value"] for r in curve])
        fit = fit_three_segments(x, y, depth, thresholds)
        entry = {"token_set": ts, **fit.to_dict(),
                 "breakpoints_layer": [_layer_name(b) for b in fit.breakpoints],
                 "breakpoints_depth": [b / depth for b in fit.breakpoints],
                 "x": x.tolist(), "y": y.tolist()}
        per_image = _per_image_matrix(npz, metric, ts, layers, [r["layer"] for r in curve])
        if per_image is not None:
            rows = ~np.all(np.isnan(per_image), axis=1)
            boot = bootstrap_breakpoints(x, per_image[rows], depth, n_boot=n_boot, seed=seed, thresholds=thresholds)
            entry.update(boot)
        out["fits"][curve_key(metric, ts)] = entry
    for ts in ("mean", "cls"):
        curve = [r for r in res.curve("probe_acc", ts) if np.isfinite(r["value"])]
        if not curve or max(r["value"] for r in curve) <= 0:  # nothing measured, nothing to saturate
            continue
        x = np.array([layer_order(r["layer"]) for r in curve], dtype=float)
        acc = np.array([r["value"] for r in curve])
        sat = saturation_layer(x, acc, fraction)
        out["saturation"][ts] = {"layer": _layer_name(sat["layer_x"]), "relative_depth": sat["layer_x"] / depth,
                                 "value": sat["value"], "best": sat["best"], "best_layer": _layer_name(sat["best_x"]),
                                 "fraction": fraction}
    main_ts = "mean" if "mean" in out["saturation"] else next(iter(out["saturation"]), None)
    if main_ts is not None:
        sat = out["saturation"][main_ts]
        out["useful_depth"] = max(0.0, sat["relative_depth"])
        isi_metric = "isi_attn" if res.curve("isi_attn") else ("isi_rec" if res.curve("isi_rec") else None)
        isi_curve = {r["layer"]: r["value"] for r in res.curve(isi_metric)} if isi_metric else {}
        pairs = [(layer_order(r["layer"]), r["value"], isi_curve[r["layer"]]) for r in res.curve("probe_acc", main_ts)
                 if r["layer"] in isi_curve and np.isfinite(r["value"])]
        if pairs and any(np.isfinite(p[2]) for p in pairs):  # some layer has both a probe accuracy and an ISI
            xs, accs, isis = (np.array(v, dtype=float) for v in zip(*pairs, strict=True))
            onset = tradeoff_onset(xs, accs, isis, depth, fraction)
            out["tradeoff_onset"] = {"layer": _layer_name(onset["layer_x"]),
                                     "relative_depth": onset["relative_depth"], "isi_metric": isi_metric,
                                     "isi_at_onset": onset["isi_at_onset"], "isi_last": onset["isi_last"],
                                     "isi_rise_after": onset["isi_rise_after"], "token_set": main_ts}
        trunc = res.run.get("truncation")
        if trunc:
            last = res.curve("probe_acc", main_ts)[-1]["value"]
            out["truncation"] = {**trunc, "token_set": main_ts, "probe_acc_at_cut": sat["value"],
                                 "probe_acc_full": last, "probe_acc_lost": last - sat["value"]}
    out["recommendations"] = _recommendations(out, depth)
    if write:
        (Path(run_dir) / "phases.json").write_text(json.dumps(out, indent=2))
    return out


def _recommendations(out: dict, depth: int) -> list[str]:
    return recommendations(out, depth)  # worded per fit shape in phases.py (issue 13)
