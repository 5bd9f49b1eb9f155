"""``vitdepth align``: which layer of one model computes what a layer of another computes (debiased linear CKA).

Reads only run directories (``run.json``, ``per_image.npz`` and the pooled-feature ``cache/`` that
``vitdepth analyze`` writes; no model), picks a fixed seeded subset of the images both runs analyzed, builds
one float64 Gram matrix per layer and run from the cached features of one token set (``mean`` or ``cls``),
and computes the layer × layer debiased linear CKA matrix with bootstrap CIs
(:mod:`vitdepth.metrics.cka`). Per layer of A, the most similar layer of B (argmax of its row) is the
*matching path*; the bootstrap gives a CI of the matching layer. The shift of that path, in layers and in
relative depth, is the alignment counterpart of ``vitdepth compare``'s phase shifts ("layer 12 of ViT-B ≈
layer 22 of ViT-L").

Outputs (an output directory of kind ``align``): ``align.json``, ``cka.csv`` (tidy), ``figures/cka.<format>``
(heat map with the matching path) and ``report.html``. :func:`write_self_alignment` computes the same within
one model (``cka_self.json`` in a run directory: the block structure of the Plateau).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import VitdepthError
from .analysis.cache import DTYPE, FeatureCache
from .metrics.cka import bootstrap_cka, cka_matrix, gram, match_ci, percentile_ci
from .outputs import OutputDir
from .results import RunResults, layer_depth, layer_order, load_run

__all__ = ["add_parser", "align_runs", "align_summary", "write_self_alignment"]

TOKEN_SETS = ("mean", "cls")
#: Fewest images (loaded in both runs) an alignment accepts.
MIN_COMMON = 8
#: Rows of the cache read at a time when building a Gram.
CHUNK_ROWS = 1024
#: CKA values this close to a row's maximum count as a tie for the best match (fp16 cache rounding).
TIE_CKA = 1e-4
#: Pairwise CKA above which consecutive layers count as one block (cka_self.json summary).
BLOCK_CKA = 0.9


@dataclass
class _Side:
    """One run as the alignment sees it: names, layers of the token set, cache and the image → row map."""

    name: str
    run_dir: Path
    run: dict
    layers: list[str]
    depth: int
    cache: FeatureCache
    dataset_index: np.ndarray  # loaded images, ascending
    rows: np.ndarray  # their cache rows

    def positions(self) -> list[float]:
        return [float(layer_order(x)) for x in self.layers]

    def depths(self) -> list[float]:
        return [layer_depth(x, self.depth) for x in self.layers]


def _open_side(run_dir: Path, run: dict, token_set: str) -> _Side:
    """Check a run directory's cache, token set and image list (cheap: no feature is read)."""
    if token_set not in TOKEN_SETS:
        raise VitdepthError(f"unknown token set {token_set!r}; choose one of {', '.join(TOKEN_SETS)}")
    cache_dir = run_dir / "cache"
    if not (cache_dir / "meta.json").is_file():
        raise VitdepthError(f"{run_dir} has no feature cache (cache/meta.json); alignment reads the cached features: "
                            "re-run vitdepth analyze for this model")
    try:
        cache = FeatureCache.open(cache_dir)
    except (OSError, ValueError, KeyError) as e:
        raise VitdepthError(f"{run_dir}/cache/meta.json is unreadable ({type(e).__name__}); re-run vitdepth "
                            "analyze for this model") from None
    if token_set not in cache.layers:
        why = " (the model has no [CLS] token)" if token_set == "cls" else ""
        other = next((t for t in TOKEN_SETS if t in cache.layers), None)
        fix = f"use --token-set {other}" if other else "re-run vitdepth analyze"
        raise VitdepthError(f"{run_dir} has no {token_set!r} token set in its cache{why}; {fix}")
    f = cache.path(token_set)
    need = len(cache.layers[token_set]) * cache.n_items * cache.dim * np.dtype(DTYPE).itemsize
    if not f.is_file() or f.stat().st_size < need:
        raise VitdepthError(f"{f} is missing or truncated; re-run vitdepth analyze for this model")
    npz = run_dir / "per_image.npz"
    try:
        with np.load(npz) as z:
            dataset_index = np.asarray(z["dataset_index"], dtype=np.int64)
    except (OSError, KeyError, ValueError):
        raise VitdepthError(f"{npz} is missing or has no dataset_index; re-run vitdepth analyze for this model"
                            ) from None
    skipped = [int(s["index"]) for s in (run.get("data", {}).get("skipped") or []) if isinstance(s, dict)
               and "index" in s]
    analyzed = np.union1d(dataset_index, np.asarray(skipped, dtype=np.int64))  # the run's positions, ascending
    if len(analyzed) != cache.n_items or np.any(np.diff(dataset_index) <= 0):
        raise VitdepthError(f"{run_dir}: the cache rows ({cache.n_items}) do not match the images of per_image.npz "
                            f"and run.json ({len(analyzed)}); re-run vitdepth analyze for this model")
    model = run.get("model", {})
    layers = list(cache.layers[token_set])
    depth = int(model.get("depth") or max(layer_order(x) for x in layers))
    return _Side(str(model.get("name") or run_dir.name), run_dir, run, layers, depth, cache, dataset_index,
                 np.searchsorted(analyzed, dataset_index))


def _grams(side: _Side, token_set: str, rows: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """One float64 Gram per layer of the token set over ``rows`` (ascending), read ``CHUNK_ROWS`` at a time."""
    cache = side.cache
    mm = np.memmap(cache.path(token_set), dtype=DTYPE, mode="r",
                   shape=(len(side.layers), cache.n_items, cache.dim))
    grams, finite = [], np.ones(len(rows), dtype=bool)
    try:
        for li in range(len(side.layers)):
            k, ok = gram(mm[li, rows[s:s + CHUNK_ROWS]] for s in range(0, len(rows), CHUNK_ROWS))
            grams.append(k)
            finite &= ok
    finally:
        del mm
    return grams, finite


def _subset(common: np.ndarray, samples: int, seed: int) -> np.ndarray:
    """``samples`` of the common images, drawn by seed (all when fewer), ascending."""
    if len(common) <= samples:
        return common
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xA119]))
    return np.sort(rng.choice(common, size=int(samples), replace=False))


def _check_options(samples: int, n_boot: int) -> None:
    if int(samples) < MIN_COMMON:
        raise VitdepthError(f"--samples must be at least {MIN_COMMON}, got {samples}")
    if int(n_boot) < 1:
        raise VitdepthError(f"--boot must be at least 1, got {n_boot}")


def _common_images(a: _Side, b: _Side) -> np.ndarray:
    common = np.intersect1d(a.dataset_index, b.dataset_index)
    if len(common) < MIN_COMMON:
        raise VitdepthError(f"{a.run_dir} and {b.run_dir} share {len(common)} analyzed images (at least {MIN_COMMON} "
                            "needed); analyze both on the same data with the same --samples and --seed")
    return common


def _prepare(res_a: RunResults, res_b: RunResults, token_set: str) -> tuple[_Side, _Side, np.ndarray]:
    """Every refusal of an alignment, before any feature is read: (A, B, common dataset indices)."""
    from .compare import _data_key

    if _data_key(res_a) != _data_key(res_b):
        da, db = res_a.run["data"], res_b.run["data"]
        raise VitdepthError(f"the runs were not made on the same images ({res_a.model}: {da.get('spec')}, "
                            f"{da.get('selected')} images; {res_b.model}: {db.get('spec')}, {db.get('selected')} "
                            "images); analyze both on the same data with the same --samples and --seed")
    a = _open_side(res_a.path, res_a.run, token_set)
    b = _open_side(res_b.path, res_b.run, token_set)
    return a, b, _common_images(a, b)


def _rows_of(side: _Side, images: np.ndarray) -> np.ndarray:
    return side.rows[np.searchsorted(side.dataset_index, images)]


def _label(pos: float) -> str:
    return "pre" if pos < 0 else str(int(pos))


def _span(lo: float, hi: float) -> str:
    return f"layer {_label(lo)}" if lo == hi else f"layers {_label(lo)}–{_label(hi)}"


def _compute(a: _Side, b: _Side, common: np.ndarray, token_set: str, samples: int, n_boot: int,
             seed: int) -> dict:
    """The alignment result (align.json's content) of two prepared sides."""
    images = _subset(common, samples, seed)
    grams_a, ok_a = _grams(a, token_set, _rows_of(a, images))
    grams_b, ok_b = _grams(b, token_set, _rows_of(b, images))
    keep = ok_a & ok_b
    if not keep.all():  # non-finite cached features: those images leave every Gram
        grams_a = [g[np.ix_(keep, keep)] for g in grams_a]
        grams_b = [g[np.ix_(keep, keep)] for g in grams_b]
        images = images[keep]
    if len(images) < MIN_COMMON:
        raise VitdepthError(f"only {len(images)} images have finite cached features in both runs (at least "
                            f"{MIN_COMMON} needed); re-run vitdepth analyze")
    mat = cka_matrix(grams_a, grams_b)
    boot = bootstrap_cka(grams_a, grams_b, n_boot=n_boot, seed=seed)
    del grams_a, grams_b
    lo, hi = percentile_ci(boot.values)
    pos_a, pos_b = a.positions(), b.positions()
    mlo, mhi = match_ci(boot.values, pos_b)
    rel_a, rel_b = a.depths(), b.depths()
    best = []
    for i, la in enumerate(a.layers):
        if np.isnan(mat[i]).all():  # a constant representation (the [CLS] token at layer 0): nothing to match
            best.append({"layer_a": la, "layer_b": None, "cka": None, "cka_ci": [None, None],
                         "layer_b_ci": [None, None], "relative_depth_a": rel_a[i], "relative_depth_b": None,
                         "offset_layers": None, "offset_depth": None})
            continue
        row = np.where(np.isnan(mat[i]), -np.inf, mat[i])
        # ties (within TIE_CKA: e.g. `pre` and `0` of the mean token set differ by a constant, which CKA ignores,
        # and only fp16 rounding of the cache tells them apart) go to the layer closest in relative depth
        ties = np.flatnonzero(row >= row.max() - TIE_CKA)
        j = int(min(ties, key=lambda t: (abs(rel_b[t] - rel_a[i]), t)))
        best.append({"layer_a": la, "layer_b": b.layers[j], "cka": _f(mat[i, j]), "cka_ci": [_f(lo[i, j]),
                     _f(hi[i, j])], "layer_b_ci": [_label(mlo[i]), _label(mhi[i])],
                     "relative_depth_a": rel_a[i], "relative_depth_b": rel_b[j],
                     "offset_layers": pos_b[j] - pos_a[i], "offset_depth": rel_b[j] - rel_a[i]})
    name_a, name_b = a.name, b.name
    if name_a == name_b:
        name_a, name_b = f"{name_a} [A]", f"{name_b} [B]"
    result = {"a": {"name": name_a, "run_dir": str(a.run_dir), "layers": a.layers, "depth": a.depth},
              "b": {"name": name_b, "run_dir": str(b.run_dir), "layers": b.layers, "depth": b.depth},
              "token_set": token_set, "n_images": int(len(images)), "n_common": int(len(common)),
              "n_boot": int(n_boot), "seed": int(seed), "method": "debiased linear CKA (Kornblith et al. 2019; "
              "unbiased HSIC of Song et al. 2012 as in Nguyen, Raghu & Kornblith 2021); 95% percentile bootstrap "
              "CIs over images",
              "cka": _grid(mat), "cka_ci_low": _grid(lo), "cka_ci_high": _grid(hi), "best_match": best}
    if all(m["layer_b"] is None for m in best):
        raise VitdepthError(f"every layer of {a.name} has a constant {token_set!r} feature over the images; "
                            "nothing to align: use another --token-set")
    result["sentences"] = [_sentence(best[i], name_a, name_b) for i in _representative(a, best)]
    result["summary"] = _summary(best, name_a, name_b, len(images), token_set)
    return result


def _f(v: float) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _grid(m: np.ndarray) -> list[list[float | None]]:
    return [[_f(v) for v in row] for row in m]


def _sentence(m: dict, name_a: str, name_b: str) -> str:
    lo, hi = m["layer_b_ci"]
    ci = m["cka_ci"]
    cka_txt = "n/a" if m["cka"] is None else f"{m['cka']:.2f}"
    ci_txt = "" if None in ci else f" [{ci[0]:.2f}, {ci[1]:.2f}]"
    match = f"layer {lo}" if lo == hi else f"layers {lo}–{hi}"
    return (f"layer {m['layer_a']} of {name_a} ≈ layer {m['layer_b']} of {name_b} (CKA {cka_txt}{ci_txt}; "
            f"95% CI of the match: {match})")


def _representative(a: _Side, best: list[dict]) -> list[int]:
    """Indices of A's layers worth a sentence: the quartiles of depth (L/4, L/2, 3L/4, L) and the largest offset."""
    valid = [i for i, m in enumerate(best) if m["layer_b"] is not None]
    pos = a.positions()
    picks = set()
    for q in (0.25, 0.5, 0.75, 1.0):
        target = round(q * a.depth)
        picks.add(min(valid, key=lambda i: abs(pos[i] - target)))
    picks.add(max(valid, key=lambda i: abs(best[i]["offset_depth"])))
    return sorted(picks)


def _summary(best: list[dict], name_a: str, name_b: str, n: int, token_set: str) -> str:
    best = [m for m in best if m["layer_b"] is not None]
    dl = float(np.mean([m["offset_layers"] for m in best]))
    dd = float(np.mean([m["offset_depth"] for m in best]))
    if abs(dl) < 0.05:
        where = f"at the same layer on average ({dd:+.2f} in relative depth ℓ/L)"
    else:
        where = (f"on average {abs(dl):.1f} layers {'deeper' if dl > 0 else 'shallower'} ({dd:+.2f} in relative "
                 "depth ℓ/L)")
    worst = max(best, key=lambda m: abs(m["offset_depth"]))
    steps = [layer_order(m["layer_b"]) for m in best]
    back = sum(1 for x, y in zip(steps, steps[1:], strict=False) if y < x)
    path = "never steps back" if not back else f"steps back {back} time{'s' if back > 1 else ''}"
    return (f"Matched by debiased linear CKA ({token_set} tokens, {n} images), each layer of {name_a} is most similar "
            f"to a layer of {name_b} {where}; the largest offset in relative depth is layer {worst['layer_a']} of "
            f"{name_a} ≈ layer {worst['layer_b']} of {name_b} ({worst['offset_depth']:+.2f}). The matching path "
            f"{path} as {name_a} gets deeper.")


def _write_csv(path: Path, result: dict) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["layer_a", "layer_b", "cka", "ci_low", "ci_high"])
        for i, la in enumerate(result["a"]["layers"]):
            for j, lb in enumerate(result["b"]["layers"]):
                w.writerow([la, lb] + ["" if v is None else repr(v) for v in
                                       (result["cka"][i][j], result["cka_ci_low"][i][j], result["cka_ci_high"][i][j])])


def write_alignment(directory: Path, result: dict, figures: bool = True, report: bool = True,
                    formats: tuple[str, ...] = ("png",)) -> None:
    """Write ``align.json``, ``cka.csv`` and (``figures``) ``figures/cka.<format>`` (+ ``report.html``) into
    ``directory`` (created)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "align.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
    _write_csv(directory / "cka.csv", result)
    if figures:
        from .report.figures import write_cka_figure

        write_cka_figure(directory / "figures" / "cka", result, formats)
        if report:
            from .report.html import write_align_report

            write_align_report(directory)


def _output_dir(out: str | Path, overwrite: bool, inputs: list[Path]) -> OutputDir:
    return OutputDir(out, "align", overwrite=overwrite, inputs=inputs)


def align_runs(run_a: str | Path, run_b: str | Path, out: str | Path, *, token_set: str = "mean",
               samples: int = 1024, n_boot: int = 200, seed: int = 0, overwrite: bool = False,
               figures: bool = True, formats: tuple[str, ...] = ("png",)) -> Path:
    """Align the layers of two runs made on the same images and write the output directory ``out``.

    Args:
        run_a, run_b: run directories written by ``vitdepth analyze`` (with their ``cache/``); A on the y axis.
        out: the output directory (kind ``align``): align.json, cka.csv, figures/cka.<format>, report.html.
        token_set: ``mean`` (mean patch token; every model) or ``cls`` (models with a [CLS] token).
        samples: images drawn by ``seed`` from those analyzed in both runs (all when fewer). Memory holds
            (layers_A + layers_B)·samples²·8 bytes of Grams.
        n_boot: bootstrap replicates over the images (CIs of each CKA and of the matching layer).
        seed: the subset and the bootstrap.
        overwrite: replace an existing alignment directory.
        figures: write the heat map and the report.

    Returns:
        ``out``.

    Raises:
        VitdepthError: not run directories, runs on different images, a run without a cache or without the token
            set, fewer than 8 common images, an existing ``out`` without ``overwrite``; all before any feature is
            read.
    """
    _check_options(samples, n_boot)
    od = _output_dir(out, overwrite, [Path(run_a), Path(run_b)])
    od.check()
    res_a, res_b = load_run(run_a), load_run(run_b)
    a, b, common = _prepare(res_a, res_b, token_set)
    result = _compute(a, b, common, token_set, samples, n_boot, seed)
    with od:
        write_alignment(od.tmp, result, figures=figures, formats=formats)
        out = od.commit()
    return Path(out)


def align_pair(res_a: RunResults, res_b: RunResults, token_set: str = "mean") -> tuple[_Side, _Side, np.ndarray]:
    """The checks of :func:`align_runs` for two loaded runs (used by ``compare --align`` before it writes)."""
    return _prepare(res_a, res_b, token_set)


def compute_alignment(prepared: tuple[_Side, _Side, np.ndarray], token_set: str = "mean", samples: int = 1024,
                      n_boot: int = 200, seed: int = 0) -> dict:
    """align.json's content for a pair checked by :func:`align_pair`."""
    a, b, common = prepared
    return _compute(a, b, common, token_set, samples, n_boot, seed)


def align_summary(out: str | Path) -> str:
    """The sentences and the summary of an alignment directory, for the terminal."""
    result = json.loads((Path(out) / "align.json").read_text())
    return "\n".join([*result["sentences"], result["summary"]])


# --------------------------------------------------------------------------------------------------------------
# Within one model
# --------------------------------------------------------------------------------------------------------------


def _blocks(mat: np.ndarray, layers: list[str], threshold: float = BLOCK_CKA) -> list[dict]:
    """Maximal runs of ≥ 3 consecutive layers whose pairwise CKA is all ≥ ``threshold`` (greedy, left to right)."""
    out, i, n = [], 0, len(layers)
    while i < n:
        j = i
        while j + 1 < n and np.nanmin(mat[i:j + 2, i:j + 2]) >= threshold:
            j += 1
        if j - i + 1 >= 3:
            out.append({"first": layers[i], "last": layers[j], "n_layers": j - i + 1,
                        "min_cka": _f(np.nanmin(mat[i:j + 1, i:j + 1]))})
        i = j + 1
    return out


def self_alignment(run_dir: str | Path, *, token_set: str = "mean", samples: int = 1024, n_boot: int = 200,
                   seed: int = 0) -> dict:
    """Layer × layer debiased linear CKA within one run (diagonal exactly 1), with bootstrap CIs.

    Reads ``run.json``, ``per_image.npz`` and ``cache/`` only (the run may still be being built).

    Raises:
        VitdepthError: no cache, no such token set, fewer than 8 analyzed images.
    """
    _check_options(samples, n_boot)
    run_dir = Path(run_dir)
    try:
        run = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        raise VitdepthError(f"{run_dir} has no readable run.json; create the run with vitdepth analyze") from None
    side = _open_side(run_dir, run, token_set)
    if len(side.dataset_index) < MIN_COMMON:
        raise VitdepthError(f"{run_dir} has {len(side.dataset_index)} analyzed images (at least {MIN_COMMON} needed)")
    images = _subset(side.dataset_index, samples, seed)
    grams, ok = _grams(side, token_set, _rows_of(side, images))
    if not ok.all():
        grams = [g[np.ix_(ok, ok)] for g in grams]
        images = images[ok]
    if len(images) < MIN_COMMON:
        raise VitdepthError(f"{run_dir}: only {len(images)} images have finite cached features")
    mat = cka_matrix(grams)
    boot = bootstrap_cka(grams, n_boot=n_boot, seed=seed)
    lo, hi = percentile_ci(boot.values)
    blocks = _blocks(mat, side.layers)
    if blocks:
        big = max(blocks, key=lambda b: b["n_layers"])
        summary = (f"Layers {big['first']}–{big['last']} of {side.name} form the largest block of mutually similar "
                   f"layers (pairwise CKA ≥ {BLOCK_CKA:.2f}, {big['n_layers']} layers)")
        summary += f"; {len(blocks)} such blocks in all." if len(blocks) > 1 else "."
    else:
        summary = (f"No three consecutive layers of {side.name} are all similar to one another (pairwise CKA ≥ "
                   f"{BLOCK_CKA:.2f}): the representation keeps changing with depth.")
    return {"model": side.name, "layers": side.layers, "depth": side.depth, "token_set": token_set,
            "n_images": int(len(images)), "n_boot": int(n_boot), "seed": int(seed),
            "method": "debiased linear CKA (Kornblith et al. 2019; Nguyen, Raghu & Kornblith 2021); 95% percentile "
                      "bootstrap CIs over images",
            "cka": _grid(mat), "cka_ci_low": _grid(lo), "cka_ci_high": _grid(hi),
            "block_threshold": BLOCK_CKA, "blocks": blocks, "summary": summary}


def write_self_alignment(run_dir: Path, *, token_set: str = "mean", samples: int = 1024, n_boot: int = 200,
                         seed: int = 0, figures: bool = True, formats: tuple[str, ...] = ("png",)) -> dict | None:
    """Write ``cka_self.json`` (and, with ``figures``, ``figures/cka_self.<format>``) into a run directory.

    Returns the result, or None (nothing written) when the run cannot have one: no cache, no such token set,
    fewer than 8 images with finite features. Meant for the analysis post-pass, on the directory being built.
    """
    run_dir = Path(run_dir)
    try:
        result = self_alignment(run_dir, token_set=token_set, samples=samples, n_boot=n_boot, seed=seed)
    except VitdepthError:
        return None
    (run_dir / "cka_self.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
    if figures:
        from .report.figures import write_cka_self_figure

        write_cka_self_figure(run_dir / "figures" / "cka_self", result, formats)
    return result


# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``align`` subcommand to an argparse ``subparsers`` object; its handler is ``args.handler``."""
    from .cli import SEED, _int_in

    p = subparsers.add_parser(
        "align", help="align the layers of two runs by debiased linear CKA (which layer of B matches layer ℓ of A)",
        description="Layer x layer debiased linear CKA between two runs made on the same images, from their cached "
                    "features (no model needed): heat map, matching path with bootstrap CIs, sentences such as "
                    "'layer 12 of ViT-B ≈ layer 22 of ViT-L'.",
        epilog="examples:\n  vitdepth align runs/B runs/L --out runs/B-L-align\n"
               "  vitdepth align runs/S runs/B --out runs/S-B-cls --token-set cls --samples 512",
        formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("run_a", help="run directory of model A (y axis), written by vitdepth analyze")
    p.add_argument("run_b", help="run directory of model B (x axis), on the same images")
    p.add_argument("--out", required=True, help="alignment directory to write")
    p.add_argument("--token-set", choices=TOKEN_SETS, default="mean",
                   help="pooled features: mean patch token (every model) or [CLS] (default: mean)")
    p.add_argument("--samples", type=_int_in("--samples", MIN_COMMON), default=1024,
                   help="images drawn from those analyzed in both runs (memory: (layers_A + layers_B) x N^2 x 8 "
                        "bytes; default: 1024)")
    p.add_argument("--boot", type=_int_in("--boot", 1), default=200, help="bootstrap replicates (default: 200)")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the subset and the bootstrap (default: 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing alignment directory")
    p.add_argument("--figure-format", default="png", metavar="FORMATS",
                   help="figure files: png, pdf, svg, comma-separated (default: png; the report embeds the PNG)")
    p.add_argument("--quiet", action="store_true", help="print nothing")
    p.set_defaults(handler=_handle)
    return p


def _handle(args: argparse.Namespace) -> int:
    from .report.figures import parse_formats

    out = align_runs(args.run_a, args.run_b, args.out, token_set=args.token_set, samples=args.samples,
                     n_boot=args.boot, seed=args.seed, overwrite=args.overwrite,
                     formats=parse_formats(args.figure_format))
    if not args.quiet:
        print(align_summary(out))
        print(f"alignment report: {Path(out) / 'report.html'}")
    return 0
