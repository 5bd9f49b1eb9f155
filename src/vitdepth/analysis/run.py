"""``analyze``: one streaming pass over the data, then probes, CIs and the run directory.

Data flow (design §2): data source → tapped model → per-layer metrics updated from each
layer's taps while the forward runs (only one layer's activations alive at a time) → pooled
features to an fp16 cache → probes from the cache → tidy table, per-image curves, figures.
The run directory is written to a sibling temporary directory and renamed at the end, so a
failure never leaves a half-written run behind.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from .._errors import VitdepthError
from ..data import (
    SPLITS,
    build_transform,
    check_labels,
    create_source,
    iterate_batches,
    stratified_splits,
    stratified_subset,
)
from ..metrics import METRICS, PerImageCurves
from ..metrics.probes import fit_ridge_probe
from ..metrics.stats import bootstrap_mean_ci, wilson_interval
from ..models import TappedModel, create_model
from ..results import layer_depth, write_layers
from .cache import FeatureCache
from .layer_metrics import PER_IMAGE_IDS, per_image_values, pooled_features
from .progress import Progress


@dataclass
class AnalyzeConfig:
    """Everything that determines a run (recorded in run.json)."""

    model: str
    data: str = "digits"
    out: str = "runs/analyze"
    samples: int | None = None
    batch_size: int = 32
    device: str = "cpu"
    seed: int = 0
    checkpoint: str | None = None
    random_init: bool = False
    quiet: bool = False
    overwrite: bool = False
    strict: bool = False
    name: str | None = None
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    n_boot: int = 1000
    num_workers: int = 0
    figures: bool = True
    extra: dict = field(default_factory=dict)


def _display_name(cfg: AnalyzeConfig) -> str:
    if cfg.name:
        return cfg.name
    target = cfg.model.partition(":")[2] or cfg.model
    return Path(target.rstrip("/")).name or target


def _check_out(cfg: AnalyzeConfig) -> Path:
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise VitdepthError(f"run directory {out} already exists; pass --overwrite to replace it or choose "
                            "another --out")
    if out.exists() and not (out / "run.json").is_file() and any(out.iterdir()):
        raise VitdepthError(f"{out} exists and is not a vitdepth run directory; refusing to overwrite it")
    return out


def _versions() -> dict:
    v = {"vitdepth": __version__, "python": platform.python_version(), "torch": torch.__version__,
         "numpy": np.__version__}
    for mod in ("timm", "transformers", "sklearn"):
        m = sys.modules.get(mod)
        if m is not None:
            v[mod] = getattr(m, "__version__", None)
    return v


def _resolve_device(device: str) -> torch.device:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise VitdepthError(f"--device {device} was asked for but CUDA is not available here; use --device cpu")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise VitdepthError(f"--device {device!r} is not understood; use cpu or cuda[:N]")
    return torch.device(device)


class _Pass:
    """State of the streaming pass: per-image curves, the feature cache, NaN/Inf flags."""

    def __init__(self, tm: TappedModel, n_items: int, cache: FeatureCache):
        self.tm = tm
        self.layer_pos = {name: i for i, name in enumerate(tm.layer_names)}
        self.curves = PerImageCurves(list(PER_IMAGE_IDS), n_items, len(tm.layer_names))
        self.cache = cache
        self.nonfinite: dict[str, int] = {}
        self._rows: np.ndarray | None = None
        self._feats: dict[str, list] = {}

    def sink(self, t):
        rows = self._rows
        if not torch.isfinite(t.tokens).all():
            self.nonfinite[t.layer] = self.nonfinite.get(t.layer, 0) + int((~torch.isfinite(t.tokens)).any(-1)
                                                                           .any(-1).sum())
        for metric, values in per_image_values(t, self.tm.has_cls).items():
            self.curves.update(metric, t.position, rows, values)
        for ts, feats in pooled_features(t, self.tm.has_cls).items():
            self._feats.setdefault(ts, []).append(feats.to(torch.float16).cpu().numpy())

    def batch(self, images: torch.Tensor, rows: np.ndarray, first_row: int, span: int) -> None:
        self._rows, self._feats = rows, {}
        self.tm.run(images, self.sink, attention=True)
        for ts, per_layer in self._feats.items():
            feats = np.stack(per_layer)  # (n_layers, B, d)
            block = np.zeros((feats.shape[0], span, feats.shape[2]), dtype=np.float16)
            block[:, rows - first_row] = feats
            self.cache.write(ts, first_row, block)


def analyze(cfg: AnalyzeConfig) -> Path:
    """Run the analysis described by ``cfg`` and return the run directory.

    Raises:
        VitdepthError: bad input (spec, paths, data, existing run directory); nothing is left behind.
    """
    t_start = time.perf_counter()
    out = _check_out(cfg)
    device = _resolve_device(cfg.device)
    if cfg.batch_size < 1:
        raise VitdepthError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    source = create_source(cfg.data, seed=cfg.seed)
    labels_all = np.asarray(source.labels)
    check_labels(labels_all, source.class_names)
    indices = stratified_subset(labels_all, cfg.samples, cfg.seed) if cfg.samples else np.arange(len(source))
    labels = labels_all[indices]
    check_labels(labels, source.class_names)
    splits = stratified_splits(labels, cfg.split_fractions, seed=cfg.seed)

    tm = create_model(cfg.model, checkpoint=cfg.checkpoint, random_init=cfg.random_init, seed=cfg.seed,
                      device=device)
    transform = build_transform(tm.preprocess)
    name = _display_name(cfg)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        _analyze_into(tmp, cfg, name, source, tm, transform, indices, labels, splits, device, t_start)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _analyze_into(tmp, cfg, name, source, tm, transform, indices, labels, splits, device, t_start) -> None:
    n = len(indices)
    layers = tm.layer_names
    dim = tm.sites.patch_proj.out_channels
    cache_layers = {"mean": layers}
    if tm.has_cls:
        cache_layers["cls"] = layers[1:]
    cache = FeatureCache.create(tmp / "cache", cache_layers, n, dim)
    state = _Pass(tm, n, cache)
    skipped: list[dict] = []
    loaded = np.zeros(n, dtype=bool)
    t0 = time.perf_counter()
    with torch.inference_mode(), Progress(n, "analyze", quiet=cfg.quiet) as progress:
        first = 0
        for batch in iterate_batches(source, indices, transform, cfg.batch_size, strict=cfg.strict,
                                     num_workers=cfg.num_workers):
            span = len(batch.indices) + len(batch.skipped)
            rows = np.searchsorted(indices, batch.indices)
            skipped += [{"index": int(i), "item": nm, "reason": why} for i, nm, why in batch.skipped]
            if len(rows):
                state.batch(batch.images.to(device, tm.dtype), rows, first, span)
                loaded[rows] = True
            first += span
            progress.update(span)
    t_pass = time.perf_counter() - t0
    if not loaded.any():
        raise VitdepthError(f"no image of {cfg.data} could be read ({len(skipped)} skipped); check the files")
    labels_ok = labels[loaded]
    check_labels(labels_ok, source.class_names)

    t0 = time.perf_counter()
    rows_out, probe_info = _probe_rows(name, tm, cache, labels, splits, loaded, len(source.class_names))
    t_probe = time.perf_counter() - t0
    rows_out = _per_image_rows(name, tm, state.curves, loaded, cfg) + rows_out
    rows_out.sort(key=lambda r: (r["metric"], r["token_set"], -1 if r["layer"] == "pre" else int(r["layer"])))
    write_layers(rows_out, tmp)
    np.savez_compressed(tmp / "per_image.npz", dataset_index=indices[loaded], label=labels[loaded],
                        split=splits[loaded], layers=np.array(layers),
                        **{m: v[loaded] for m, v in state.curves.state_dict().items()})

    warn = list(tm.sites.warnings) + list(getattr(source, "warnings", []))
    for layer, count in state.nonfinite.items():
        warn.append(f"layer {layer}: {count} images have NaN/Inf activations")
    if skipped:
        warn.append(f"{len(skipped)} unreadable images were skipped (listed under data.skipped)")
    if not tm.has_cls:
        warn.append("the model has no [CLS] token: cls_patch_sim and the cls probe are not applicable")
    counts = {s: int(((splits == i) & loaded).sum()) for i, s in enumerate(SPLITS)}
    run = {
        "vitdepth_version": __version__,
        "command": "analyze",
        "config": {k: v for k, v in asdict(cfg).items() if k != "extra"} | cfg.extra,
        "model": {"name": name, **tm.identity, "layers": layers, "embed_dim": dim,
                  "preprocess": tm.preprocess.to_dict(), "dtype": str(tm.dtype), "device": str(device)},
        "data": {**source.identity(), "analyzed": int(loaded.sum()), "selected": n, "splits": counts,
                 "split_fractions": list(cfg.split_fractions), "skipped": skipped},
        "metrics": {m: {"formula": METRICS[m].formula} for m in METRICS},
        "probe": probe_info,
        "seed": cfg.seed,
        "versions": _versions(),
        "timings": {"pass_s": t_pass, "probes_s": t_probe, "images_per_s": float(loaded.sum()) / t_pass},
        "warnings": warn,
    }
    if cfg.figures:
        from ..report.figures import write_run_figures

        t0 = time.perf_counter()
        write_run_figures(tmp, rows=rows_out, model=name)
        run["timings"]["figures_s"] = time.perf_counter() - t0
    run["timings"]["total_s"] = time.perf_counter() - t_start
    (tmp / "run.json").write_text(json.dumps(run, indent=2, default=_json_default))


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (tuple, set, np.ndarray)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _row(model, layer, depth, metric, token_set, value, lo, hi, n) -> dict:
    return {"model": model, "layer": layer, "depth": layer_depth(layer, depth), "metric": metric,
            "token_set": token_set, "value": float(value), "ci_low": float(lo), "ci_high": float(hi), "n": int(n)}


def _per_image_rows(name, tm, curves, loaded, cfg) -> list[dict]:
    rows = []
    for metric, values in curves.state_dict().items():
        v = values[loaded]
        applicable = ~np.all(np.isnan(v), axis=0)
        if not applicable.any():
            continue
        mean, lo, hi = bootstrap_mean_ci(v[:, applicable], n_boot=cfg.n_boot, seed=cfg.seed)
        counts = (~np.isnan(v[:, applicable])).sum(axis=0)
        for j, pos in enumerate(np.flatnonzero(applicable)):
            rows.append(_row(name, tm.layer_names[pos], tm.depth, metric, "", mean[j], lo[j], hi[j], counts[j]))
    return rows


def _probe_rows(name, tm, cache, labels, splits, loaded, n_classes) -> tuple[list[dict], dict]:
    rows, info = [], {"kind": "ridge", "standardize": True, "alpha": {}, "val_accuracy": {}}
    split_rows = {s: np.flatnonzero((splits == i) & loaded) for i, s in enumerate(SPLITS)}
    if len(split_rows["val"]) == 0 or len(split_rows["test"]) == 0:
        raise VitdepthError("the validation or test split is empty; use more images (--samples) so every split "
                            "has at least one image")
    classes = np.arange(n_classes)
    for ts, layer_names in cache.layers.items():
        for li, layer in enumerate(layer_names):
            def chunks(split, li=li, ts=ts):
                r = split_rows[split]
                return ((x, labels[r[i:i + len(x)]]) for i, x in _enumerate_chunks(cache.read(ts, li, r)))

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                probe = fit_ridge_probe(chunks("train"), chunks("val"), classes)
            correct = total = 0
            for x, y in chunks("test"):
                correct += int((probe.predict(x) == y).sum())
                total += len(y)
            acc = correct / total
            lo, hi = wilson_interval(correct, total)
            rows.append(_row(name, layer, tm.depth, "probe_acc", ts, acc, lo, hi, total))
            info["alpha"][f"{ts}/{layer}"] = float(probe.alpha_)
            info["val_accuracy"][f"{ts}/{layer}"] = float(max(probe.val_scores_.values()))
    return rows, info


def _enumerate_chunks(it):
    start = 0
    for x in it:
        yield start, x
        start += len(x)


def summarize(run_dir: str | Path) -> str:
    """A one-screen summary table of a run directory (reads only the saved results)."""
    from ..report.summary import summary_table

    return summary_table(run_dir)


__all__ = ["AnalyzeConfig", "analyze", "summarize"]
