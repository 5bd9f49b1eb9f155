"""vitdepth GPU benchmark: the ``analyze`` pass against bare inference, per model and autocast dtype.

For each model (default: random-init ViT-B/16 and ViT-L/16 at 224 px) and dtype (default: bf16 and fp32) on 2,048
synthetic images, one process measures, alternating and rotating the order over ``--repeats`` cycles:

- **bare inference**: the model's own forward (taps off) under ``torch.inference_mode`` and, unless fp32,
  ``torch.autocast(device_type, dtype)``; the timed loop is data loading + host-to-device copy + forward, i.e.
  what ``analyze``'s ``timings.pass_s`` covers;
- **the analyze pass**: ``vitdepth.analyze(..., dtype=...)`` with the default metrics on the same model object,
  the same in-memory images, batch size, device and loading path (``iterate_batches`` over the same dataset);
  its ``run.json`` ``timings.pass_s`` / ``timings.images_per_s``.

It prints images/s of both, the median (min, max) over cycles of the per-cycle ratio pass / bare, and the peak
memory of each run (``torch.cuda.max_memory_allocated``, reset before every run; on ``--device cpu`` the peak RSS
of this process, sampled every 5 ms and reset before every run). The targets (issue "Analysis at ImageNet scale")
are pass / bare <= 1.3 at fp32 and <= 1.5 at bf16 for ViT-B/16; each is printed as PASS or FAIL.

Why the images are generated once and kept in memory: the procedural ``synthetic`` source makes ~270 images/s per
CPU core at 224 px, far below what one GPU infers, so streaming it would measure the generator in both runs and
hide the pass's overhead. The images are preprocessed once with the model's own transform and handed to both runs
as a map-style dataset of tensors (``analyze(data=dataset)``), so both load them through the same code.
Post-pass work that does not touch the pass (figures, HTML report, bootstrap resamples) is switched off or
reduced to save device time; it does not enter ``pass_s``.

Usage::

    .venv/bin/python benchmarks/bench_gpu.py                      # ViT-B/16 + ViT-L/16, bf16 + fp32, 2,048 images
    .venv/bin/python benchmarks/bench_gpu.py --models timm:vit_base_patch16_224 --dtypes fp32,bf16,fp16
    .venv/bin/python benchmarks/bench_gpu.py --device cpu --quick  # smoke: ViT-Ti at 32 px, 64 images (< 1 min)

Options: ``--images N``, ``--batch-size B`` (default 128 on CUDA, 32 on CPU), ``--repeats R`` (default 3),
``--metrics SPEC`` (passed to analyze; default: analyze's default), ``--image-size PX``, ``--threads N`` (torch
intra-op threads; ``--quick`` on CPU uses 1), ``--out DIR`` (default
``runs/bench/gpu``; results in ``results.json``, or ``results_quick.json`` with ``--quick``).

Needs ``AnalyzeConfig.dtype`` (``--dtype`` of ``vitdepth analyze``) for any dtype other than fp32; without it
the benchmark stops before measuring anything and says so.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import statistics
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from bench_analyze import machine_info, median_ratio, table  # noqa: E402  (benchmarks/ is not a package)

MODELS = ["timm:vit_base_patch16_224", "timm:vit_large_patch16_224"]
QUICK_MODELS = ["timm:vit_tiny_patch16_224"]
QUICK_IMAGE_SIZE = 32
TARGET_MODEL = "timm:vit_base_patch16_224"
TARGETS = {"fp32": 1.3, "bf16": 1.5}  # pass / bare, for TARGET_MODEL
DTYPE_NAMES = ("fp32", "bf16", "fp16")


class RssSampler:
    """Peak resident set size of this process between :meth:`reset` and :attr:`peak_mib` (Linux ``/proc``).

    ``ru_maxrss`` cannot be reset within a process, so a daemon thread reads ``/proc/self/statm`` every 5 ms.
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.available = Path("/proc/self/statm").exists()
        self._page = os.sysconf("SC_PAGE_SIZE") if self.available else 0
        self._peak = 0.0
        self._stop = threading.Event()
        if self.available:
            threading.Thread(target=self._run, args=(interval,), daemon=True).start()

    def _rss(self) -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page / 2**20

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._rss())
            self._stop.wait(interval)

    def reset(self) -> None:
        if self.available:
            self._peak = self._rss()

    @property
    def peak_mib(self) -> float | None:
        return max(self._peak, self._rss()) if self.available else None


class PreloadedImages:
    """A map-style dataset of preprocessed ``(3, H, W)`` float32 tensors and int labels, held in memory.

    ``targets`` and ``classes`` let :func:`vitdepth.data.source_from_object` take the labels without a pass over
    the items.
    """

    def __init__(self, images, targets: list[int], classes: list[str]) -> None:
        self.images, self.targets, self.classes = images, targets, classes

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.images[i], self.targets[i]


def preload(n: int, size: int, transform, workers: int) -> PreloadedImages:
    """``synthetic:n=N,size=S`` images through the model's transform, once, into one tensor."""
    import numpy as np
    import torch

    from vitdepth.data import create_source, iterate_batches

    source = create_source(f"synthetic:n={n},size={size}", seed=0)
    chunks = [b.images for b in iterate_batches(source, np.arange(n), transform, 256, num_workers=workers)]
    images = torch.cat(chunks).contiguous()
    if len(images) != n:
        raise RuntimeError(f"preloading synthetic images: got {len(images)} of {n}")
    return PreloadedImages(images, [int(v) for v in source.labels], list(source.class_names))


def main() -> int:  # noqa: C901 - a linear script: parse, check, measure, print, write
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke version: {QUICK_MODELS[0]} at {QUICK_IMAGE_SIZE} px, 64 images, 1 cycle")
    ap.add_argument("--models", default=None, help=f"comma-separated model specs (default: {','.join(MODELS)})")
    ap.add_argument("--dtypes", default="bf16,fp32", help=f"comma-separated, from {', '.join(DTYPE_NAMES)}")
    ap.add_argument("--images", type=int, default=None, help="synthetic images (default 2048; --quick 64)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 128 on CUDA, 32 on CPU, 16 with --quick")
    ap.add_argument("--repeats", type=int, default=None, help="rotating bare/pass cycles (default 3; --quick 1)")
    ap.add_argument("--image-size", type=int, default=None,
                    help=f"run the models at this size (default: their own; --quick {QUICK_IMAGE_SIZE})")
    ap.add_argument("--metrics", default=None, help="analyze's --metrics (default: analyze's default selection)")
    ap.add_argument("--num-workers", type=int, default=None, help="workers generating the images once, up front")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's; 1 for --quick on CPU)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "gpu")
    args = ap.parse_args()

    import inspect

    import torch

    from vitdepth.analysis import run as run_mod
    from vitdepth.analysis.run import AnalyzeConfig, analyze
    from vitdepth.data import build_transform, iterate_batches, source_from_object
    from vitdepth.models import create_model

    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    bad = [d for d in dtypes if d not in DTYPE_NAMES]
    if bad or not dtypes:
        ap.error(f"--dtypes: {', '.join(bad) or 'none given'} not in {', '.join(DTYPE_NAMES)}")
    has_dtype = "dtype" in {f.name for f in dataclasses.fields(AnalyzeConfig)}
    if not has_dtype and any(d != "fp32" for d in dtypes):
        where = Path(sys.modules["vitdepth"].__file__).parent
        print("bench_gpu: error: this vitdepth has no AnalyzeConfig.dtype (analyze --dtype), so the pass cannot run "
              f"under autocast; rerun with --dtypes fp32, or update vitdepth (imported from {where})", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"bench_gpu: error: --device {args.device} but torch {torch.__version__} sees no CUDA device; "
              "use --device cpu (e.g. with --quick)", file=sys.stderr)
        return 2
    cuda = device.type == "cuda"
    # a smoke run on a shared CPU: with every core busy elsewhere, intra-op threads that wait for each other make
    # a forward 10-100x slower (measured on the 2-core dev machine), so --quick uses one
    threads = args.threads or (1 if args.quick and not cuda else None)
    if threads:
        torch.set_num_threads(threads)
    models = [m.strip() if ":" in m else f"timm:{m.strip()}" for m in args.models.split(",")] if args.models \
        else (QUICK_MODELS if args.quick else MODELS)
    n = args.images or (64 if args.quick else 2048)
    batch = args.batch_size or (16 if args.quick else 128 if cuda else 32)
    repeats = args.repeats or (1 if args.quick else 3)
    image_size = args.image_size or (QUICK_IMAGE_SIZE if args.quick else None)
    workers = args.num_workers if args.num_workers is not None else min(8, max(0, (os.cpu_count() or 1) - 1))
    # --quick has no ViT-B: its targets are checked on the quick model, as a smoke test of the verdict only
    target_model = models[0] if args.quick else TARGET_MODEL
    work = args.out.resolve()
    work.mkdir(parents=True, exist_ok=True)
    rss = None if cuda else RssSampler()

    info = machine_info()
    if cuda:
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    print("vitdepth GPU benchmark", " ".join(sys.argv[1:]))
    print(table(["field", "value"], [[k, v] for k, v in info.items()]))
    print(f"== pass vs bare inference on {device}: {', '.join(models)}; dtypes {', '.join(dtypes)}; {n} synthetic "
          f"images{f' at {image_size} px' if image_size else ''}, batch {batch}, {repeats} rotating cycle(s)")

    def reset_peak() -> None:
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        else:
            rss.reset()

    def peak_mib() -> float | None:
        if cuda:
            return torch.cuda.max_memory_allocated(device) / 2**20
        return rss.peak_mib

    def autocast(dtype: str):
        if dtype == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[dtype])

    # load as analyze's pass does: pinned host memory and non-blocking copies on CUDA where its pass uses them
    pin = cuda and "pin_memory" in inspect.getsource(run_mod)

    def batches(source, transform, limit: int | None = None):
        import numpy as np

        kw = {"pin_memory": True} if pin else {}
        for b in iterate_batches(source, np.arange(limit or len(source)), transform, batch, num_workers=0, **kw):
            yield b.images.to(device, non_blocking=pin)

    def bare(tm, source, transform, dtype: str, limit: int | None = None) -> dict:
        count = limit or len(source)
        reset_peak()
        t0 = time.perf_counter()
        with torch.inference_mode(), autocast(dtype):
            for images in batches(source, transform, limit):
                tm.output(images.to(tm.dtype))
        if cuda:
            torch.cuda.synchronize(device)
        loop = time.perf_counter() - t0
        return {"loop_s": loop, "images_per_s": count / loop, "peak_mib": peak_mib()}

    def data_only(source, transform) -> float:
        t0 = time.perf_counter()
        for _ in batches(source, transform):
            pass
        if cuda:
            torch.cuda.synchronize(device)
        return len(source) / (time.perf_counter() - t0)

    def run_pass(tm, data, dtype: str, tag: str, samples: int | None = None) -> dict:
        kw = {"dtype": dtype} if has_dtype else {}
        cfg = AnalyzeConfig(model=tm, data=data, out=str(work / f"pass_{tag}"), samples=samples, batch_size=batch,
                            device=str(device), quiet=True, overwrite=True, figures=False, report=False,
                            n_boot=200, n_boot_phases=50, metrics=args.metrics, num_workers=0, **kw)
        param_dtype = tm.dtype
        reset_peak()
        t0 = time.perf_counter()
        out = analyze(cfg)
        wall = time.perf_counter() - t0
        peak = peak_mib()
        if tm.dtype != param_dtype:  # analyze must autocast, not cast the (shared) model; keep the runs comparable
            print(f"  warning: analyze changed the model's parameter dtype to {tm.dtype}; restored {param_dtype}")
            tm.model.to(param_dtype)
        run = json.loads((out / "run.json").read_text())
        t = run["timings"]
        return {"pass_s": t["pass_s"], "images_per_s": t["images_per_s"], "total_s": t.get("total_s", wall),
                "wall_s": wall, "peak_mib": peak, "analyzed": run["data"]["analyzed"],
                "run_dtype": run.get("config", {}).get("dtype", "fp32" if not has_dtype else None)}

    results: dict = {"machine": info, "quick": args.quick, "device": str(device), "models": models, "dtypes": dtypes,
                     "images": n, "batch_size": batch, "repeats": repeats, "image_size": image_size,
                     "torch_threads": torch.get_num_threads(),
                     "metrics": args.metrics, "analyze_has_dtype": has_dtype, "pinned_copies": pin,
                     "memory": "torch.cuda.max_memory_allocated" if cuda else "peak RSS of this process (5 ms sampler)",
                     "configs": {}}
    preloaded: dict[str, PreloadedImages] = {}
    t_start = time.perf_counter()
    for spec in models:
        t0 = time.perf_counter()
        tm = create_model(spec, random_init=True, seed=0, device=device, image_size=image_size)
        key = json.dumps(tm.preprocess.to_dict(), sort_keys=True, default=str)
        if key not in preloaded:
            preloaded.clear()  # one set of images in memory at a time
            size = int(tm.preprocess.input_size[-1]) if image_size is None else image_size
            preloaded[key] = preload(n, size, build_transform(tm.preprocess), workers)
        data = preloaded[key]
        source = source_from_object(data)
        transform = build_transform(tm.preprocess)  # never applied (the items are tensors); as analyze passes one
        data_ips = data_only(source, transform)
        print(f"\n  {spec}: {tm.identity.get('parameters', 0) / 1e6:.1f} M parameters; build + image preload "
              f"{time.perf_counter() - t0:.1f} s; data loading + copy alone {data_ips:.0f} images/s")
        for dtype in dtypes:
            name = f"{spec} {dtype}"
            tag = f"{spec.split(':')[-1]}_{dtype}"
            # warm-up: kernels for this dtype (bare) and analyze's first-call costs on a few batches (--quick, a smoke
            # run, leaves the second out: its analyze call costs more than its whole pass)
            bare(tm, source, transform, dtype, limit=min(n, batch))
            if not args.quick:
                run_pass(tm, data, dtype, tag, samples=min(n, 2 * batch))
            runs: dict[str, list[dict]] = {"bare": [], "pass": []}
            order = ["bare", "pass"]
            for r in range(repeats):
                for which in order[r % 2:] + order[:r % 2]:
                    res = bare(tm, source, transform, dtype) if which == "bare" else run_pass(tm, data, dtype, tag)
                    runs[which].append(res)
                    extra = f", analyze call {res['wall_s']:.1f} s" if which == "pass" else ""
                    peak = "n/a" if res["peak_mib"] is None else f"{res['peak_mib']:.0f} MiB"
                    print(f"  {name:38s} cycle {r}: {which:4s} {res['images_per_s']:8.1f} images/s "
                          f"(loop {res.get('loop_s', res.get('pass_s')):.2f} s, peak {peak}{extra})")
            ratio = median_ratio([p["pass_s"] for p in runs["pass"]], [b["loop_s"] for b in runs["bare"]])
            target = TARGETS.get(dtype) if spec == target_model else None
            results["configs"][name] = {
                "model": spec, "dtype": dtype, "runs": runs, "data_images_per_s": data_ips,
                "bare_images_per_s": statistics.median(b["images_per_s"] for b in runs["bare"]),
                "pass_images_per_s": statistics.median(p["images_per_s"] for p in runs["pass"]),
                "ratio_median_min_max": ratio,
                "peak_mib_bare": _max_or_none(b["peak_mib"] for b in runs["bare"]),
                "peak_mib_pass": _max_or_none(p["peak_mib"] for p in runs["pass"]),
                "target": target, "target_met": None if target is None else ratio[0] <= target}
        del tm
        if cuda:
            torch.cuda.empty_cache()

    mem = "peak GPU MiB" if cuda else "peak RSS MiB"
    rows = []
    for c in results["configs"].values():
        rows.append([c["model"], c["dtype"], c["bare_images_per_s"], c["pass_images_per_s"], *c["ratio_median_min_max"],
                     _na(c["peak_mib_bare"]), _na(c["peak_mib_pass"])])
    print(table(["model", "dtype", "bare images/s", "pass images/s", "pass/bare median", "min", "max",
                 f"bare {mem}", f"pass {mem}"], rows,
                title=f"pass / bare inference, {repeats} rotating cycle(s), medians over cycles ({device}, "
                      f"{n} images, batch {batch})"))
    verdicts = []
    note = f" (indicative: --quick checks the targets on {target_model})" if args.quick else ""
    for dtype, goal in TARGETS.items():
        c = results["configs"].get(f"{target_model} {dtype}")
        if c is None:
            line = f"target {target_model} {dtype}: pass/bare <= {goal}: not measured"
            met = None
        else:
            met = c["target_met"]
            line = (f"target {target_model} {dtype}: pass/bare <= {goal}: median {c['ratio_median_min_max'][0]:.3f} "
                    f"-> {'PASS' if met else 'FAIL'}{note}")
        verdicts.append({"model": target_model, "dtype": dtype, "target": goal, "met": met, "line": line})
        print(line)
    results["targets"] = verdicts
    results["benchmark_wall_s"] = time.perf_counter() - t_start
    path = work / ("results_quick.json" if args.quick else "results.json")
    path.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nbenchmark wall time {results['benchmark_wall_s'] / 60:.1f} min; figures in {path}")
    return 0


def _max_or_none(values) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return max(vals) if vals else None


def _na(v: float | None):
    return "n/a" if v is None else v


if __name__ == "__main__":
    raise SystemExit(main())
