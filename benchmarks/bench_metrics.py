"""Issue 4 benchmark: analyze with ``--metrics all`` and ``--metrics core`` against bare inference, in one process.

Same model (random-init ViT-S/16 at 224 px), same synthetic images, same batch size and loading path; runs alternate
(bare, core, all, then reversed) and the median ratios are printed. Targets on a 2-core CPU: all / bare ≤ 1.6 and
core / bare ≤ 1.3. Only ratios from one run mean anything on a shared machine.

Usage::

    .venv/bin/python benchmarks/bench_metrics.py [--samples 256] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

MODEL = "timm:vit_small_patch16_224"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args()

    import vitdepth.report.figures  # noqa: F401  (matplotlib import paid up front)
    from vitdepth.analysis.run import AnalyzeConfig, analyze
    from vitdepth.data import build_transform, create_source, iterate_batches, stratified_subset
    from vitdepth.models import create_model

    work = Path(tempfile.mkdtemp(prefix="bench_metrics_"))

    def bare() -> float:
        t0 = time.perf_counter()
        source = create_source("synthetic", seed=0)
        idx = stratified_subset(np.asarray(source.labels), args.samples, 0)
        tm = create_model(MODEL, random_init=True, seed=0)
        tf = build_transform(tm.preprocess)
        with torch.inference_mode():
            for b in iterate_batches(source, idx, tf, args.batch_size):
                tm.output(b.images)
        return time.perf_counter() - t0

    def analyzed(metrics: str) -> tuple[float, dict]:
        t0 = time.perf_counter()
        out = analyze(AnalyzeConfig(model=MODEL, random_init=True, data="synthetic", samples=args.samples,
                                    batch_size=args.batch_size, out=str(work / metrics), overwrite=True, quiet=True,
                                    metrics=metrics))
        return time.perf_counter() - t0, json.loads((out / "run.json").read_text())["timings"]

    times: dict[str, list[float]] = {"bare": [], "core": [], "all": []}
    parts: dict[str, list[dict]] = {"core": [], "all": []}
    for r in range(args.repeats):
        for which in (("bare", "core", "all") if r % 2 == 0 else ("all", "core", "bare")):
            if which == "bare":
                times["bare"].append(bare())
            else:
                t, timing = analyzed(which)
                times[which].append(t)
                parts[which].append(timing)
            print(f"run {r}: {which:<5} {times[which][-1]:7.1f} s", flush=True)
    bare_med = statistics.median(times["bare"])
    print(f"\nViT-S/16 random init, 224 px, {args.samples} synthetic images, batch {args.batch_size}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.repeats} alternating repeats")
    print("| run | median s | ratio to bare | target | pass s | probes s | figures s |")
    print("|---|---|---|---|---|---|---|")
    print(f"| bare inference | {bare_med:.1f} | 1.00 | | | | |")
    for which, target in (("core", 1.3), ("all", 1.6)):
        med = statistics.median(times[which])
        t = {k: statistics.median(p.get(k, float("nan")) for p in parts[which])
             for k in ("pass_s", "probes_s", "figures_s")}
        ok = "met" if med / bare_med <= target else "missed"
        print(f"| --metrics {which} | {med:.1f} | {med / bare_med:.2f} | ≤ {target} ({ok}) | {t['pass_s']:.1f} | "
              f"{t['probes_s']:.1f} | {t['figures_s']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
