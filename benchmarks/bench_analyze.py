"""vitdepth benchmarks: analysis cost against bare inference, against a naive pipeline, and memory scaling.

Parts (see docs/benchmarks.md for what each measures and the recorded figures):

a. ``analyze`` with the default metrics (all but the logistic probe) and ``--metrics core`` against bare inference
   of the same model (its own forward, taps off, under ``torch.inference_mode``), same data, batch size,
   loading path and process, for a random-init ViT-S/16 at 224 px on 256 synthetic images (the targets of
   issues 2, 4 and 15). Runs alternate (bare, analyze, analyze, bare, ...) and the median ratio is
   reported, so drift on a shared machine does not bias it. Then a breakdown of ``analyze`` (run.json timings)
   and a profile of the streaming pass: an ablation ladder (hooks → attention recompute → metrics → full pass),
   exclusive per-component timers and the aten ops that grow over the bare forward (torch.profiler).
b. ``vitdepth analyze`` against ``naive_pipeline.py`` (HF eager attention with all hidden states and attentions
   kept + scikit-learn logistic regression per layer + P×P cosine matrices), as whole processes (wall time and
   peak RSS from ``os.wait4``), on a small HF ViT trained here on digits (``digits_vit.py``), reading the 1,797
   digits as PNG files of an ImageFolder tree (issue 15's workload: ``analyze hf:DIR --data folder:DIR``).
c. CPU scale proof (issue "Analysis at ImageNet scale"), whole ``vitdepth analyze`` processes of a random-init
   ViT-Ti/16 at 224 px with the default metrics: 1,000 against 8,000 synthetic images (peak RSS from ``os.wait4``
   within +5 %, wall time within 10 % of linear in N, RSS attributed to phases, wall time to run.json steps); then
   ``torchrun --standalone --nproc-per-node 2`` (gloo) against one process on the same 1,000 images: wall-time ratio
   and peak RSS recorded, layers.csv asserted equal (per-image metrics and probe accuracies identical, the isi_rec
   family within 1e-6 relative; the exit status is 1 when they differ). Skipped, with the reason printed, when
   vitdepth's analysis does not join a process group yet (``--c-gloo on`` forces it).
d. ``vitdepth demo`` as a whole process (issue 15: under 20 s after installation) with its runs' step times, and
   the start-up of quick commands (``--help``, ``models``, ``metrics``) against ``python -c "import torch"``.

Usage::

    .venv/bin/python benchmarks/bench_analyze.py            # all parts ((a)+(b) ~15 min on 2 cores; (c) runs
                                                            # five analyze processes, one of 8,000 images)
    .venv/bin/python benchmarks/bench_analyze.py --part a   # or b, c; repeatable
    .venv/bin/python benchmarks/bench_analyze.py --quick    # smoke version (~3 min)
    .venv/bin/python benchmarks/bench_analyze.py --part c --quick --c-sizes 32,64   # (c) code path only

Only ratios measured within one run are meaningful on a shared machine; absolute times are printed alongside.
Outputs go to ``runs/bench/`` (git-ignored); all figures are also written to ``runs/bench/results.json``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable

A_MODEL = "timm:vit_small_patch16_224"
A_DATA = "synthetic"
# (c): ViT-Ti/16 (same 197 tokens as (a)'s ViT-S/16, ~4x fewer FLOPs), so that its 8,000-image process fits in the
# benchmark on 2 cores; sizes and data are set in part c
C_MODEL = "timm:vit_tiny_patch16_224"
BATCH = 32

CHILD_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
             "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONWARNINGS": "ignore"}


# ----------------------------------------------------------------------------------------------- helpers

def table(headers: list[str], rows: list[list], title: str | None = None) -> str:
    """A Markdown pipe table (pastes into docs/benchmarks.md as is)."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    out = "\n".join(lines)
    return f"\n{title}\n\n{out}\n" if title else f"\n{out}\n"


def _fmt(c) -> str:
    if isinstance(c, float):
        return f"{c:.3g}" if abs(c) < 1000 else f"{c:.0f}"
    return str(c)


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def run_child(cmd: list[str], log: Path, env: dict | None = None) -> dict:
    """Run one whole process through ``measure_process.py``: wall time and peak RSS of exactly that process.

    The launcher is a fresh bare Python, so the child's ``ru_maxrss`` does not inherit this (large) process's
    peak through fork + exec (see measure_process.py).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    res = log.with_suffix(".measure.json")
    with open(log, "w") as f:
        rc = subprocess.call([PY, "-S", str(HERE / "measure_process.py"), str(res), *cmd], stdout=f,
                             stderr=subprocess.STDOUT, cwd=ROOT, env={**CHILD_ENV, **(env or {})})
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {rc}; see {log}:\n" + log.read_text()[-3000:])
    return json.loads(res.read_text())


def machine_info() -> dict:
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import vitdepth

    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None

    head = git("rev-parse", "--short", "HEAD")
    from_repo = Path(vitdepth.__file__).resolve().is_relative_to(ROOT / "src")
    dirty = git("diff-index", "--quiet", "HEAD", "--", "src") if from_repo else None
    return {"date": _dt.datetime.now().isoformat(timespec="minutes"), "cpus": os.cpu_count(), "cpu": cpu,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "platform": platform.platform(),
            "vitdepth": f"{vitdepth.__version__} from {Path(vitdepth.__file__).parent}",
            "repo HEAD": (head.stdout.strip() if head and head.returncode == 0 else "?")
            + (" (src/ has uncommitted changes)" if dirty and dirty.returncode == 1 else "")
            + ("" if from_repo else " (vitdepth NOT imported from this repo's src/)")}


def median_ratio(num: list[float], den: list[float]) -> tuple[float, float, float]:
    r = [a / b for a, b in zip(num, den, strict=True)]
    return statistics.median(r), min(r), max(r)


# ----------------------------------------------------------------------------------------------- part a

# analyze's steps timed from outside (wrappers in this process; whichever of these exist in the installed vitdepth)
STEP_LABELS = [
    ("vitdepth.analysis.run", "create_model", "model build"),
    ("vitdepth.analysis.run:_Pass", "batch", "streaming pass: forward + taps + metrics + cache (excl. data loading)"),
    ("vitdepth.analysis.run", "_probe_rows", "ridge probes (+ collapse stats) from the cache"),
    ("vitdepth.analysis.run", "_logistic_rows", "logistic probes"),
    ("vitdepth.analysis.run", "_per_image_rows", "bootstrap CIs of per-image curves"),
    ("vitdepth.analysis.run", "_isi_rec_rows", "isi_rec: ridge fits from streaming statistics"),
    ("vitdepth.analysis.run", "_truncation", "truncation: FLOP count + latency of the cut model"),
    ("vitdepth.analysis.run", "write_layers", "write layers.csv / parquet"),
    ("vitdepth.report.figures", "write_run_figures", "figures"),
    ("vitdepth.report.html", "write_run_report", "HTML report"),
]


def install_step_timers() -> tuple[dict, list]:
    """Wrap analyze's steps with accumulating timers; returns (timers, handles for uninstall_step_timers)."""
    import importlib

    timers: dict[str, float] = defaultdict(float)
    saved = []
    for where, attr, label in STEP_LABELS:
        mod_name, _, cls_name = where.partition(":")
        try:
            owner = importlib.import_module(mod_name)
        except ImportError:
            continue
        owner = getattr(owner, cls_name, None) if cls_name else owner
        fn = getattr(owner, attr, None) if owner is not None else None
        if not callable(fn):
            continue

        def wrapped(*a, _fn=fn, _label=label, **k):
            t0 = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                timers[_label] += time.perf_counter() - t0

        setattr(owner, attr, wrapped)
        saved.append((owner, attr, fn))
    return timers, saved


def uninstall_step_timers(saved: list) -> None:
    for owner, attr, fn in reversed(saved):
        setattr(owner, attr, fn)


def part_a(args, work: Path, results: dict) -> None:

    import numpy as np
    import torch

    import vitdepth.report.figures  # noqa: F401  (import matplotlib now, so no timed run pays it first)
    from vitdepth.analysis.run import AnalyzeConfig, analyze
    from vitdepth.data import build_transform, create_source, iterate_batches, stratified_subset
    from vitdepth.models import create_model

    n = 64 if args.quick else 256
    repeats = args.repeats or (2 if args.quick else 3)
    # issue 15's targets: the default metric selection (every metric but the logistic probe) at most 1.3x bare
    # inference for the whole call and its pass at most 1.15x the bare data + forward loop; --metrics core is
    # issue 4's single-pass set (1.3x), kept for comparison
    configs = {"default metrics": {}, "--metrics core": {"metrics": "core"}}
    targets = {"default metrics": 1.3, "--metrics core": 1.3}
    pass_targets = {"default metrics": 1.15}
    names = ["bare", *configs]
    print(f"\n== (a) analyze vs bare inference: {A_MODEL} --random-init, {A_DATA} samples={n}, batch {BATCH}, "
          f"{repeats} rotating cycles of {', '.join(names)}")

    def bare() -> dict:
        c0 = time.process_time()
        t0 = time.perf_counter()
        source = create_source(A_DATA, seed=0)
        idx = stratified_subset(np.asarray(source.labels), n, 0)
        tm = create_model(A_MODEL, random_init=True, seed=0)
        transform = build_transform(tm.preprocess)
        t1 = time.perf_counter()
        with torch.inference_mode():
            for batch in iterate_batches(source, idx, transform, BATCH):
                tm.output(batch.images.to(tm.device, tm.dtype))
        t2 = time.perf_counter()
        return {"wall_s": t2 - t0, "loop_s": t2 - t1, "cpu_s": time.process_time() - c0}

    def full(extra: dict) -> dict:
        timers, saved = install_step_timers()
        try:
            c0 = time.process_time()
            t0 = time.perf_counter()
            out = analyze(AnalyzeConfig(model=A_MODEL, random_init=True, data=A_DATA, samples=n, batch_size=BATCH,
                                        out=str(work / "a_analyze"), overwrite=True, quiet=True, **extra))
            wall = time.perf_counter() - t0
            cpu = time.process_time() - c0
        finally:
            uninstall_step_timers(saved)
        timings = json.loads((out / "run.json").read_text())["timings"]
        return {"wall_s": wall, "cpu_s": cpu, "loop_s": timings["pass_s"], "steps": dict(timers), **timings}

    # warm-up: one forward so oneDNN / allocator start-up is paid by no timed run
    tm = create_model(A_MODEL, random_init=True, seed=0)
    with torch.inference_mode():
        tm.output(torch.zeros(BATCH, 3, 224, 224))
    del tm

    runs: dict[str, list[dict]] = {k: [] for k in names}
    for r in range(repeats):
        k = r % len(names)
        for which in names[k:] + names[:k]:
            res = bare() if which == "bare" else full(configs[which])
            runs[which].append(res)
            print(f"  cycle {r}: {which:16s} {res['wall_s']:7.1f} s (data+forward loop / pass {res['loop_s']:.1f} s, "
                  f"CPU {res['cpu_s']:.1f} s)")
    rows, summary = [], {}
    for cfg_name in configs:
        fulls, bares = runs[cfg_name], runs["bare"]
        ratio = median_ratio([f["wall_s"] for f in fulls], [b["wall_s"] for b in bares])
        ratio_pass = median_ratio([f["pass_s"] for f in fulls], [b["loop_s"] for b in bares])
        ratio_cpu = median_ratio([f["cpu_s"] for f in fulls], [b["cpu_s"] for b in bares])
        goal, pass_goal = targets[cfg_name], pass_targets.get(cfg_name)
        rows += [[f"{cfg_name}: analyze wall / bare wall (whole call)", *ratio, f"≤ {goal}", verdict(ratio[0] <= goal)],
                 [f"{cfg_name}: pass / bare data+forward loop", *ratio_pass, f"≤ {pass_goal}" if pass_goal else "",
                  verdict(ratio_pass[0] <= pass_goal) if pass_goal else ""],
                 [f"{cfg_name}: CPU time / bare CPU time (whole call)", *ratio_cpu, "", ""]]
        summary[cfg_name] = {"ratio_median_min_max": ratio, "pass_ratio_median_min_max": ratio_pass,
                             "cpu_ratio_median_min_max": ratio_cpu, "target": goal, "target_met": ratio[0] <= goal,
                             "pass_target": pass_goal,
                             "pass_target_met": None if pass_goal is None else ratio_pass[0] <= pass_goal}
    print(table(["quantity (per cycle, then median over cycles)", "median", "min", "max", "target", ""], rows,
                title=f"(a) ratios over {repeats} rotating cycles (bare = model build + data + forward, taps off)"))

    step_names = [label for _, _, label in STEP_LABELS]
    med_bare = statistics.median(b["wall_s"] for b in runs["bare"])
    header = ["step of analyze (median s; absolute times for orientation only)", *configs]
    srows = []
    for label in step_names:
        vals = [statistics.median(f["steps"].get(label, 0.0) for f in runs[c]) for c in configs]
        if any(v > 0 for v in vals):
            srows.append([label, *vals])
    meds = {c: statistics.median(f["wall_s"] for f in runs[c]) for c in configs}
    accounted = {c: sum(statistics.median(f["steps"].get(lb, 0.0) for f in runs[c]) for lb in step_names)
                 for c in configs}
    srows.append(["rest (source, splits, data loading, npz, run.json, rename)",
                  *[meds[c] - accounted[c] for c in configs]])
    srows.append(["whole analyze call", *[meds[c] for c in configs]])
    srows.append(["bare inference (model build + data + forward), for reference", *[med_bare for _ in configs]])
    print(table(header, srows, title="(a) where analyze's time goes"))
    results["a"] = {"model": A_MODEL, "data": A_DATA, "samples": n, "batch_size": BATCH, "repeats": repeats,
                    "runs": runs, "summary": summary, "analyze": runs[next(iter(configs))],
                    "target_met": summary[next(iter(configs))]["target_met"]}
    try:
        results["a"]["profile"] = profile_pass(args, work)
    except Exception as e:  # the profile pokes at internals (_Pass, taps); the ratios above do not
        print(f"  (a) pass profile skipped: {type(e).__name__}: {e} — vitdepth internals changed; update "
              "profile_pass() in benchmarks/bench_analyze.py")
        results["a"]["profile"] = {"error": repr(e)}


def profile_pass(args, work: Path) -> dict:
    """Where the pass's time goes over bare inference, measured inside real ``analyze`` calls.

    ``analyze`` runs on the first few batches of (a)'s data with ``_Pass.batch`` wrapped (in this process only):
    for every batch the wrapper also runs the ablation variants on the same images, in rotating order, so each
    rung is timed against the same data at nearly the same moment. The full rung is the real, configured pass
    (default metrics), called exactly once per batch.
    """
    import inspect

    import torch

    from vitdepth.analysis import layer_metrics as lm_mod
    from vitdepth.analysis import run as run_mod
    from vitdepth.analysis.cache import FeatureCache
    from vitdepth.analysis.run import AnalyzeConfig, analyze
    from vitdepth.metrics import PerImageCurves
    from vitdepth.metrics import functional as F
    from vitdepth.models import taps as taps_mod

    n_batches = 1 if args.quick else 3
    rounds = 1 if args.quick else 2

    class _StopAfterPass(Exception):
        pass

    def pass_only(cfg_kwargs):
        """analyze() up to the end of the streaming pass: the first post-pass step raises (nothing is kept)."""
        first_post = getattr(run_mod, "_probe_rows", None)
        if first_post is None:
            return analyze(AnalyzeConfig(**cfg_kwargs))

        def stop(*_a, **_k):
            raise _StopAfterPass

        run_mod._probe_rows = stop
        try:
            analyze(AnalyzeConfig(**cfg_kwargs))
        except _StopAfterPass:
            pass
        finally:
            run_mod._probe_rows = first_post

    cfg = {"model": A_MODEL, "random_init": True, "data": A_DATA, "samples": n_batches * BATCH,
           "batch_size": BATCH, "out": str(work / "a_profile"), "overwrite": True, "quiet": True, "figures": False}
    takes_metrics = len(inspect.signature(run_mod.per_image_values).parameters) >= 3
    orig_batch = run_mod._Pass.batch

    def noop(_t):
        pass

    def ladder(state):
        tm = state.tm

        def metrics_only(t):
            if takes_metrics:
                run_mod.per_image_values(t, tm.has_cls, state.metrics)
            else:
                run_mod.per_image_values(t, tm.has_cls)

        return [
            ("bare forward (tm.output)", lambda x: tm.output(x)),
            ("+ hooks (taps, attention off, no-op sink)", lambda x: tm.run(x, noop, attention=False)),
            ("+ attention recompute (no-op sink)", lambda x: tm.run(x, noop, attention=True)),
            ("+ per-image metrics", lambda x: tm.run(x, metrics_only, attention=True)),
        ]

    full_name = "full pass batch (+ pooled feats, curves, ISI stats, cache)"
    times: dict[str, list[float]] = defaultdict(list)
    counter = [0]

    def batch_ladder(self, images, rows, first_row, span):
        variants = ladder(self) + [(full_name, lambda x: orig_batch(self, images, rows, first_row, span))]
        k = counter[0] % len(variants)
        counter[0] += 1
        for name, fn in variants[k:] + variants[:k]:
            t0 = time.perf_counter()
            fn(images)
            times[name].append(time.perf_counter() - t0)

    print(f"\n== (a) profile of the pass: {n_batches} batches × {rounds} rounds inside analyze(), variants in "
          "rotating order")
    run_mod._Pass.batch = batch_ladder
    try:
        pass_only({**cfg, "samples": BATCH})  # warm-up
        times.clear()
        for _ in range(rounds):
            pass_only(cfg)
    finally:
        run_mod._Pass.batch = orig_batch
    order = ["bare forward (tm.output)", "+ hooks (taps, attention off, no-op sink)",
             "+ attention recompute (no-op sink)", "+ per-image metrics", full_name]
    med = {name: statistics.median(times[name]) for name in order}
    base = med[order[0]]
    rows, prev = [], None
    for name in order:
        rows.append([name, med[name] * 1e3, med[name] / base, "" if prev is None else (med[name] - prev) / base])
        prev = med[name]
    print(table(["variant (per batch of 32)", "median ms", "× bare", "step / bare"], rows,
                title="(a) ablation ladder (medians; steps are noisy on a shared machine)"))

    # exclusive per-component timers inside the real pass (wrappers installed in this process only)
    timers: dict[str, float] = defaultdict(float)
    stack: list[list] = []
    inside = [False]

    def wrap(owner, attr, label):
        fn = getattr(owner, attr)

        def wrapped(*a, **k):
            if not inside[0] and label != "outer":
                return fn(*a, **k)
            stack.append([label, 0.0])
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                dt = time.perf_counter() - t0
                _, child = stack.pop()
                timers[label] += dt - child
                if stack:
                    stack[-1][1] += dt

        setattr(owner, attr, wrapped)
        return owner, attr, fn

    known = {
        "attention_entropy": "attention entropy (p log p over B·H·T·T)",
        "attention_row_entropy": "attention row entropy (p log p over B·H·T·T)",
        "isi_attention": "isi / attn_delta (cosines x_in vs x_mid)",
        "token_similarity": "token_sim",
        "token_similarity_centered": "token_sim_centered",
        "cls_patch_similarity": "cls_patch_sim",
    }

    def own_functions(mod, prefix):
        return [(mod, n, known.get(n, f"{n} ({prefix})")) for n, v in sorted(vars(mod).items())
                if callable(v) and not n.startswith("_") and not isinstance(v, type)
                and (getattr(v, "__module__", "") or "").startswith("vitdepth.metrics")]

    stateful = [(cls_, "update", f"{cls_.__name__}.update (streaming statistics)")
                for cls_ in vars(run_mod).values()
                if isinstance(cls_, type) and cls_.__module__.startswith("vitdepth.metrics")
                and callable(getattr(cls_, "update", None)) and cls_ is not PerImageCurves]
    bare_t: list[float] = []
    real_batch = run_mod._Pass.batch

    def batch_components(self, images, rows, first_row, span):
        t0 = time.perf_counter()
        self.tm.output(images)
        bare_t.append(time.perf_counter() - t0)
        inside[0] = True
        try:
            stack.append(["model forward + hooks + np.stack (rest of the batch)", 0.0])
            t0 = time.perf_counter()
            real_batch(self, images, rows, first_row, span)
            dt = time.perf_counter() - t0
            label, child = stack.pop()
            timers[label] += dt - child
        finally:
            inside[0] = False

    labels = [
        (taps_mod, "attention_probs", "attention recompute (q·kᵀ, softmax), hook"),
        *own_functions(F, "metrics.functional"),
        *[x for x in own_functions(lm_mod, "layer_metrics") if x[1] not in ("per_image_values", "pooled_features")],
        (run_mod, "per_image_values", "per-image metric glue (rest of per_image_values)"),
        (run_mod, "pooled_features", "pooled features (mean, cls)"),
        (run_mod._Pass, "sink", "sink rest (isfinite check, fp16 copy, anything unwrapped)"),
        *stateful,
        (PerImageCurves, "update", "per-image curve updates"),
        (FeatureCache, "write", "feature cache writes (pwrite)"),
    ]
    labels = [x for x in labels if callable(getattr(x[0], x[1], None))]
    saved = [wrap(*x) for x in labels]
    run_mod._Pass.batch = batch_components
    try:
        for _ in range(rounds):
            pass_only(cfg)
    finally:
        run_mod._Pass.batch = real_batch
        for owner, attr, fn in reversed(saved):
            setattr(owner, attr, fn)
    n_calls = len(bare_t)
    bare_ms = statistics.median(bare_t) * 1e3
    comp = {label: timers[label] / n_calls * 1e3 for label in timers}
    total = sum(comp.values())
    rows = [[label, ms, ms / bare_ms] for label, ms in sorted(comp.items(), key=lambda kv: -kv[1])]
    rows.append(["total (full pass batch)", total, total / bare_ms])
    rows.append(["bare forward, same batches (median)", bare_ms, 1.0])
    print(table(["component (exclusive)", "ms / batch", "/ bare forward"], rows,
                title="(a) pass components, exclusive wall time per batch (perf_counter wrappers)"))

    # the model and the first batch again, for the what-if micro-benchmarks and torch.profiler
    import numpy as np

    from vitdepth.data import build_transform, create_source, iterate_batches, stratified_subset
    from vitdepth.models import create_model

    tm = create_model(A_MODEL, random_init=True, seed=0)
    source = create_source(A_DATA, seed=0)
    idx = stratified_subset(np.asarray(source.labels), 256, 0)[: n_batches * BATCH]
    batches = [b.images for b in iterate_batches(source, idx, build_transform(tm.preprocess), BATCH)]
    whatif = what_if(tm, batches[0], rounds)

    # aten ops that grow over the bare forward (torch.profiler): bare forwards vs one profiled analyze pass
    from torch.profiler import ProfilerActivity, profile

    def op_times(fn) -> dict[str, float]:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        return {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}

    def bare_all():
        with torch.inference_mode():
            for x in batches:
                tm.output(x)

    prof_box: dict = {}

    def batch_profiled(self, images, rows, first_row, span):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            real_batch(self, images, rows, first_row, span)
        for e in prof.key_averages():
            prof_box[e.key] = prof_box.get(e.key, 0.0) + e.self_cpu_time_total / 1e3

    ops_bare = op_times(bare_all)
    run_mod._Pass.batch = batch_profiled
    try:
        pass_only(cfg)
    finally:
        run_mod._Pass.batch = real_batch
    per = 1.0 / len(batches)
    ops_bare = {k: v * per for k, v in ops_bare.items()}
    ops_full = {k: v * per for k, v in prof_box.items()}
    diff = sorted(((ops_full.get(k, 0) - ops_bare.get(k, 0), k) for k in set(ops_full) | set(ops_bare)),
                  reverse=True)[:12]
    rows = [[k, ops_bare.get(k, 0.0), ops_full.get(k, 0.0), d] for d, k in diff]
    rows.append(["all ops", sum(ops_bare.values()), sum(ops_full.values()),
                 sum(ops_full.values()) - sum(ops_bare.values())])
    print(table(["aten op", "bare ms", "full pass ms", "added ms"], rows,
                title=f"(a) torch.profiler: self-CPU time by op per batch ({len(batches)} batches), bare forward vs "
                      "full pass batch"))
    return {"ladder_ms": {k: v * 1e3 for k, v in med.items()}, "components_ms": comp, "bare_ms": bare_ms,
            "what_if_ms_per_layer": whatif, "ops_added_ms": {k: d for d, k in diff}, "n_batches": n_batches,
            "rounds": rounds}


def what_if(tm, x, rounds: int) -> dict:
    """Micro-benchmarks of the forms of two costs of the pass, on real tensors of one block.

    Nothing here changes vitdepth. The pass now uses the chunked form (with ``softmax_and_entropy_``, which
    also drops the log pass) and a per-image sum for the finiteness check; the whole-batch rows show what
    that saves.
    """
    import statistics as st

    import torch

    from vitdepth.metrics import functional as F
    from vitdepth.models.taps import attention_probs

    attention_entropy = getattr(F, "attention_row_entropy", None) or F.attention_entropy

    site, grabbed = tm.sites.qk[0], {}
    hooks = [site.q.register_forward_hook(lambda m, a, o: grabbed.__setitem__("q", o)),
             site.k.register_forward_hook(lambda m, a, o: grabbed.__setitem__("k", o)),
             tm.sites.blocks[0].register_forward_hook(lambda m, a, o: grabbed.__setitem__("tokens", o))]
    with torch.inference_mode():
        tm.output(x)
    for h in hooks:
        h.remove()
    q, k, tokens = grabbed["q"], grabbed["k"], grabbed["tokens"]
    if site.layout != "heads":
        return {}

    def chunked(step):
        return torch.cat([attention_entropy(attention_probs(q[i:i + step], k[i:i + step], site.scale))
                          for i in range(0, len(q), step)])

    variants = {
        "attention probs + log-pass entropy, whole batch": lambda: attention_entropy(
            attention_probs(q, k, site.scale)),
        "same, 4 images at a time (B·H·T·T stays in cache)": lambda: chunked(4),
        "same, 1 image at a time": lambda: chunked(1),
        "isfinite over all tokens (torch.isfinite(tokens).all())": lambda: bool(torch.isfinite(tokens).all()),
        "isfinite of per-token sums (tokens.sum(-1)); same verdict unless a finite sum overflows": lambda: bool(
            torch.isfinite(tokens.sum(-1)).all()),
    }
    ref = variants["attention probs + log-pass entropy, whole batch"]()
    times = {}
    with torch.inference_mode():
        for name, fn in variants.items():
            fn()
            ts = []
            for _ in range(5 * rounds + 1):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            times[name] = st.median(ts) * 1e3
        same = all(torch.equal(chunked(s), ref) for s in (4, 1))
    print(table(["variant (one block, batch of 32)", "ms / layer"], [[k, v] for k, v in times.items()],
                title=f"(a) micro-benchmarks on block-1 tensors (chunked results bit-identical: {same})"))
    return times


# ----------------------------------------------------------------------------------------------- part b

def part_b(args, work: Path, results: dict) -> None:
    epochs = 3 if args.quick else 20
    model_dir = work / ("digits_vit_quick" if args.quick else "digits_vit")
    summary_file = model_dir / "bench_training.json"
    if not summary_file.is_file() or json.loads(summary_file.read_text()).get("epochs") != epochs or args.retrain:
        print(f"\n== (b) training the digits ViT ({epochs} epochs) into {model_dir} (not timed)")
        run_child([PY, str(HERE / "digits_vit.py"), str(model_dir), "--epochs", str(epochs)], work / "b_train.log")
    training = json.loads(summary_file.read_text())
    repeats = args.repeats or (1 if args.quick else 3)
    print(f"\n== (b) vitdepth analyze vs naive pipeline, whole processes, digits (1,797 PNG files), "
          f"{repeats} rotating cycles; model: {training['arch']}, head test acc "
          f"{training['head_test_accuracy']:.3f}")

    floor_code = ("import torch, transformers; from transformers import ViTForImageClassification; "
                  f"ViTForImageClassification.from_pretrained({str(model_dir)!r})")
    folder = digits_png_folder(work / "digits_png")  # issue 15's workload: the digits as PNG files
    naive_json = work / "b_naive.json"
    naive_cmd = [PY, str(HERE / "naive_pipeline.py"), str(model_dir), "--out", str(naive_json),
                 "--batch-size", str(BATCH), "--folder", str(folder)]
    configs = analyze_configs()

    def analyze_cmd(cfg_name):
        out = work / f"b_analyze_{cfg_name.replace(' ', '_').replace('-', '')}"
        return out, [PY, "-m", "vitdepth", "analyze", f"hf:{model_dir}", "--data", f"folder:{folder}",
                     "--out", str(out), "--overwrite", "--quiet", "--batch-size", str(BATCH), *configs[cfg_name]]

    floor = run_child([PY, "-c", floor_code], work / "b_floor.log")
    print(f"  floor (python + torch + transformers + load model): {floor['wall_s']:.1f} s, "
          f"{floor['maxrss_mib']:.0f} MiB")
    names = ["naive", *configs]
    procs: dict[str, list[dict]] = {k: [] for k in names}
    naive_out, ana_run = [], {k: [] for k in configs}
    for r in range(repeats):
        k = r % len(names)
        for which in names[k:] + names[:k]:
            if which == "naive":
                res = run_child(naive_cmd, work / f"b_naive_{r}.log")
                naive_out.append(json.loads(naive_json.read_text()))
            else:
                out_dir, cmd = analyze_cmd(which)
                res = run_child(cmd, work / f"b_{out_dir.name}_{r}.log")
                run = json.loads((out_dir / "run.json").read_text())
                ana_run[which].append({**run["timings"], "out": str(out_dir)})
            procs[which].append(res)
            print(f"  cycle {r}: {which:16s} {res['wall_s']:6.1f} s {res['maxrss_mib']:7.0f} MiB")

    import csv

    nv = naive_out[-1]
    med = {k: (statistics.median(x["wall_s"] for x in v), statistics.median(x["maxrss_mib"] for x in v))
           for k, v in procs.items()}
    rows, summary = [], {}
    for cfg_name in configs:
        speed = median_ratio([x["wall_s"] for x in procs["naive"]], [x["wall_s"] for x in procs[cfg_name]])
        mem = median_ratio([x["maxrss_mib"] for x in procs[cfg_name]], [x["maxrss_mib"] for x in procs["naive"]])
        with open(Path(ana_run[cfg_name][-1]["out"]) / "layers.csv") as f:
            lrows = list(csv.DictReader(f))
        acc = {(r["token_set"], r["layer"]): float(r["value"]) for r in lrows if r["metric"] == "probe_acc"}
        sim = {r["layer"]: float(r["value"]) for r in lrows if r["metric"] == "token_sim"}
        best = {}
        for ts in ("mean", "cls"):
            a_layer, a_acc = max(((layer, v) for (t, layer), v in acc.items() if t == ts), key=lambda z: z[1])
            n_i = max(range(len(nv["probe_acc"][ts])), key=lambda i: nv["probe_acc"][ts][i])
            best[ts] = {"analyze": (a_layer, a_acc), "naive": (nv["layers"][n_i], nv["probe_acc"][ts][n_i])}
        sim_diff = max(abs(sim[layer] - v) for layer, v in zip(nv["layers"], nv["token_sim"], strict=True))
        acc_gap = best["mean"]["naive"][1] - best["mean"]["analyze"][1]
        t_a, m_a = med[cfg_name]
        t_n, m_n = med["naive"]
        rows += [
            [f"{cfg_name}: wall time, whole process (median s)", t_n, t_a, speed[0], "naive/analyze ≥ 3",
             verdict(speed[0] >= 3)],
            [f"{cfg_name}: peak RSS, whole process (median MiB)", m_n, m_a, mem[0], "analyze/naive ≤ 0.25",
             verdict(mem[0] <= 0.25)],
            [f"{cfg_name}: wall time above floor (s)", t_n - floor["wall_s"], t_a - floor["wall_s"],
             (t_n - floor["wall_s"]) / max(t_a - floor["wall_s"], 1e-9), "(explanatory)", ""],
            [f"{cfg_name}: peak RSS above floor (MiB)", m_n - floor["maxrss_mib"], m_a - floor["maxrss_mib"],
             (m_a - floor["maxrss_mib"]) / max(m_n - floor["maxrss_mib"], 1e-9), "(explanatory)", ""],
            [f"{cfg_name}: best mean-pool probe acc (layer)",
             f"{best['mean']['naive'][1]:.4f} ({best['mean']['naive'][0]})",
             f"{best['mean']['analyze'][1]:.4f} ({best['mean']['analyze'][0]})", f"{-acc_gap * 100:+.1f} pts",
             "within 3 pts", verdict(acc_gap <= 0.03)],
            [f"{cfg_name}: best cls probe acc (layer)", f"{best['cls']['naive'][1]:.4f} ({best['cls']['naive'][0]})",
             f"{best['cls']['analyze'][1]:.4f} ({best['cls']['analyze'][0]})", "", "", ""],
            [f"{cfg_name}: token_sim, max |difference| over layers", "", "", f"{sim_diff:.1e}", "(cross-check)", ""],
        ]
        summary[cfg_name] = {"speedup_median_min_max": speed, "mem_ratio_median_min_max": mem, "best": best,
                             "token_sim_max_abs_diff": sim_diff, "median_wall_s": t_a, "median_maxrss_mib": m_a,
                             "targets_met": {"speed": speed[0] >= 3, "memory": mem[0] <= 0.25,
                                             "accuracy": acc_gap <= 0.03}}
    print(table(["quantity", "naive", "vitdepth analyze", "ratio", "target", ""], rows,
                title=f"(b) naive vs analyze ({repeats} rotating cycles; floor = python + torch + transformers + "
                      f"model load: {floor['wall_s']:.1f} s, {floor['maxrss_mib']:.0f} MiB)"))
    nt = nv["timings"]
    n_wall = procs["naive"][-1]["wall_s"]
    brow = [["interpreter + imports (analyze: wall − run.json total_s)",
             n_wall - nt["total_in_process_s"] + nt["imports_s"]],
            ["load data + model (analyze: + transformers import, post-pass metrics, CIs, tables)", nt["load_s"]],
            ["forward (naive: eager, all states kept; analyze: SDPA + taps + metrics)", nt["forward_s"]],
            ["concatenate per layer", nt["concat_s"]],
            ["probes (naive: LogisticRegression; analyze: ridge (+ logistic) from the cache)", nt["probes_s"]],
            ["P×P token similarity + attention entropy (analyze: inside the pass)", nt["similarity_s"]],
            ["figures", "—"],
            ["whole process (parent's wall clock)", n_wall]]
    for cfg_name in configs:
        at, a_wall = ana_run[cfg_name][-1], procs[cfg_name][-1]["wall_s"]
        probes = at.get("probes_s", 0.0) + at.get("logistic_s", 0.0)
        a_other = at["total_s"] - at["pass_s"] - probes - at.get("figures_s", 0.0)
        for row, v in zip(brow, [a_wall - at["total_s"], a_other, at["pass_s"], "—", probes, "—",
                                 at.get("figures_s", 0.0), a_wall], strict=True):
            row.append(v)
    print(table(["step (last run of each)", "naive s", *[f"analyze, {c} s" for c in configs]], brow,
                title=f"(b) breakdown (the naive pipeline held {nv['held_bytes'] / 2**20:.0f} MiB of activations)"))
    first = next(iter(configs))
    results["b"] = {"training": training, "floor": floor, "processes": procs, "repeats": repeats,
                    "summary": summary, "naive_timings": nt, "analyze_timings": ana_run,
                    "naive_held_bytes": nv["held_bytes"], "targets_met": summary[first]["targets_met"]}


def digits_png_folder(root: Path) -> Path:
    """The 1,797 digits written once as PNG files in an ImageFolder tree (``root/<digit>/<index>.png``).

    The pixels are those of vitdepth's ``digits`` source, and the file names keep the digits' order within a class,
    so vitdepth's folder source and the naive pipeline list them in the same order and draw the same split.
    """
    from vitdepth.data import create_source

    done = root / ".complete"
    if not done.is_file():
        src = create_source("digits")
        for i in range(len(src)):
            d = root / str(int(src.labels[i]))
            d.mkdir(parents=True, exist_ok=True)
            src.load(i).save(d / f"{i:04d}.png")
        done.write_text(str(len(src)))
    return root


def analyze_configs() -> dict[str, list[str]]:
    """CLI arguments per analyze configuration: the defaults, and ``--metrics core`` where vitdepth has it."""
    import dataclasses

    from vitdepth.analysis.run import AnalyzeConfig

    configs = {"default metrics": []}
    if "metrics" in {f.name for f in dataclasses.fields(AnalyzeConfig)}:
        configs["--metrics core"] = ["--metrics", "core"]
    return configs


# ----------------------------------------------------------------------------------------------- part c

FIXED_MMAP = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
C_SIZES = (1000, 8000)  # issue "Analysis at ImageNet scale": 1,000 vs 8,000 images
C_SIZES_QUICK = (64, 256)
C_RSS_GROWTH = 0.05  # target: peak RSS at the larger N at most +5 % over the smaller N's (flat in N)
C_WALL_SLACK = 0.10  # target: wall time at the larger N at most 10 % over linear scaling from the smaller N
C_ISI_RTOL = 1e-6  # gloo vs one process: isi_rec family within this relative difference; the rest identical
TIMING_KEYS = ["pass_s", "isi_rec_s", "probes_s", "logistic_s", "bootstrap_s", "truncation_s", "phases_s",
               "figures_s", "report_s", "total_s"]
nan = float("nan")

# One torchrun worker, run as ``python -c _TORCHRUN_WORKER DIR analyze ...``: ``python -m vitdepth analyze ...`` in
# this very process (torchrun's signals reach it), which at exit writes its own peak RSS (getrusage, before
# interpreter teardown) and wall time to DIR/worker_$RANK.json. ru_maxrss keeps the high-water mark of the
# process torchrun forked it from (Linux carries it through exec), so the launcher's RSS at spawn is a floor.
_TORCHRUN_WORKER = (
    "import atexit, json, os, resource, runpy, sys, time\n"
    "t0 = time.perf_counter()\n"
    "path = os.path.join(sys.argv[1], 'worker_%s.json' % os.environ.get('RANK', '0'))\n"
    "def done():\n"
    "    with open(path, 'w') as f:\n"
    "        json.dump({'rank': int(os.environ.get('RANK', '0')), 'wall_s': time.perf_counter() - t0,\n"
    "                   'maxrss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,\n"
    "                   'omp_num_threads': os.environ.get('OMP_NUM_THREADS')}, f)\n"
    "atexit.register(done)\n"
    "sys.argv = ['vitdepth', *sys.argv[2:]]\n"
    "runpy.run_module('vitdepth', run_name='__main__', alter_sys=True)\n"
)


def c_sizes(args) -> tuple[int, int]:
    if args.c_sizes:
        n1, n2 = (int(v) for v in args.c_sizes.split(","))
        return n1, n2
    return C_SIZES_QUICK if args.quick else C_SIZES


def analyze_supports_torchrun() -> tuple[bool, str]:
    """Whether ``vitdepth analyze`` joins a torchrun process group (else two ranks would run two whole analyses)."""
    import vitdepth.analysis as pkg

    where = Path(pkg.__file__).parent
    if any("distributed" in p.read_text() for p in where.glob("*.py")):
        return True, ""
    return False, (f"vitdepth's analysis code ({where}) never mentions a process group (no vitdepth.distributed / "
                   "torch.distributed), so under torchrun each rank would run the whole analysis; --c-gloo on "
                   "forces the comparison")


def part_c(args, work: Path, results: dict) -> None:
    from vitdepth.analysis.layer_metrics import PER_IMAGE_IDS

    n1, n2 = c_sizes(args)
    data = f"synthetic:n={n2}"  # the smaller N is a stratified subset of the same images
    # default allocator (what users get): the small size twice (its spread is the run-to-run noise of peak RSS)
    # and the large one once; --c-fixed-mmap adds both with glibc's mmap threshold fixed at 1 MiB, which stops glibc
    # from keeping freed multi-MiB tensors in its heap, to separate allocator retention from memory vitdepth holds
    settings = {"default": ({}, [n1, n2] if args.quick else [n1, n2, n1])}
    if args.c_fixed_mmap:
        settings["fixed_mmap"] = (FIXED_MMAP, [n1, n2])
    print(f"\n== (c) scale of vitdepth analyze, whole processes: {args.c_model} --random-init, {data}, samples {n1} "
          f"and {n2}, default metrics, batch {BATCH}"
          + ("; default malloc, then MALLOC_MMAP_THRESHOLD_=1MiB" if args.c_fixed_mmap else "; default malloc"))
    runs: dict[str, dict[int, list[dict]]] = {}
    for setting, (env, order) in settings.items():
        out: dict[int, list[dict]] = {n1: [], n2: []}
        for k, n in enumerate(order):
            tag = f"{setting}_{n}_{k}"
            phases_json = work / f"c_phases_{tag}.json"
            cmd = [PY, str(HERE / "rss_phases.py"), str(phases_json), "analyze", args.c_model, "--random-init",
                   "--data", data, "--samples", str(n), "--out", str(work / f"c_analyze_{n}"), "--overwrite",
                   "--quiet", "--batch-size", str(BATCH)]
            r = run_child(cmd, work / f"c_analyze_{tag}.log", env=env)
            run = json.loads((work / f"c_analyze_{n}" / "run.json").read_text())
            r["phases"] = json.loads(phases_json.read_text())
            r["layers"] = len(run["model"]["layers"])
            r["timings"] = run["timings"]
            r["images_per_s"] = run["timings"]["images_per_s"]
            r["model"] = run["model"]
            out[n].append(r)
            print(f"  {setting:10s} samples {n:5d}: {r['wall_s']:6.1f} s, peak RSS {r['maxrss_mib']:7.1f} MiB "
                  f"(own peak before teardown {r['phases']['self_maxrss_before_teardown_mib']:.1f} MiB), "
                  f"pass {r['timings']['pass_s']:.1f} s")
        runs[setting] = out

    # per-image scalar curves kept: one float64 per image, layer and per-image metric, plus the per-image probe
    # correctness of the two token sets (what the probe-curve breakpoint CIs resample)
    n_metrics = len(PER_IMAGE_IDS) + 2
    first = runs["default"][n2][0]
    layers = first["layers"]
    allowance = (n2 - n1) * layers * n_metrics * 8 / 2**20
    h, w = first["model"]["preprocess"]["input_size"]
    tokens = (h // 16) * (w // 16) + len(first["model"]["prefix_tokens"])  # both C models are /16
    dim = first["model"]["embed_dim"]
    token_level = n2 * tokens * dim * 4 / 2**20  # what one layer of N × T × d float32 tokens would take

    summary = {}
    for setting, out in runs.items():
        whole = {n: statistics.median(r["maxrss_mib"] for r in out[n]) for n in (n1, n2)}
        own = {n: statistics.median(r["phases"]["self_maxrss_before_teardown_mib"] for r in out[n]) for n in (n1, n2)}
        wall = {n: statistics.median(r["wall_s"] for r in out[n]) for n in (n1, n2)}
        pass_s = {n: statistics.median(r["timings"]["pass_s"] for r in out[n]) for n in (n1, n2)}
        spread = max(max(r["maxrss_mib"] for r in out[n]) - min(r["maxrss_mib"] for r in out[n]) for n in (n1, n2))
        trace = out[n2][0]["phases"]["rss_after_batch_mib"]
        k = max(1, len(trace) // 8)
        summary[setting] = {"whole": whole, "own": own, "delta": whole[n2] - whole[n1],
                            "growth": whole[n2] / whole[n1] - 1, "own_delta": own[n2] - own[n1], "spread": spread,
                            "wall": wall, "wall_ratio": wall[n2] / wall[n1],
                            "wall_vs_linear": wall[n2] / wall[n1] / (n2 / n1),
                            "pass_per_image_ratio": (pass_s[n2] / n2) / (pass_s[n1] / n1),
                            "after_batch_first": (min(trace[:k]), max(trace[:k])) if trace else (nan, nan),
                            "after_batch_last": (min(trace[-k:]), max(trace[-k:])) if trace else (nan, nan),
                            "trace_k": k}

    d = summary["default"]
    cols = list(summary)
    multi = len(runs["default"][n1]) > 1

    def span(x):
        return f"{x[0]:.0f}–{x[1]:.0f}"

    print(table(["quantity (MiB)", *[{"default": "default malloc", "fixed_mmap": "MALLOC_MMAP_THRESHOLD_=1MiB"}[c]
                                     for c in cols]], [
        [f"peak RSS, N={n1} (whole process, os.wait4{', median' if multi else ''})",
         *[summary[c]["whole"][n1] for c in cols]],
        [f"peak RSS, N={n2} (whole process, os.wait4)", *[summary[c]["whole"][n2] for c in cols]],
        ["difference", *[summary[c]["delta"] for c in cols]],
        [f"growth (target ≤ +{C_RSS_GROWTH:.0%})", *[f"{summary[c]['growth']:+.1%}" for c in cols]],
        ["difference of the child's own peak before interpreter teardown", *[summary[c]["own_delta"] for c in cols]],
        [f"run-to-run spread at N={n1} (max − min)", d["spread"] if multi else "not measured",
         *["—" for _ in cols[1:]]],
        [f"RSS after each batch, first {d['trace_k']} batches (min–max), N={n2}",
         *[span(summary[c]["after_batch_first"]) for c in cols]],
        [f"RSS after each batch, last {d['trace_k']} batches (min–max), N={n2}",
         *[span(summary[c]["after_batch_last"]) for c in cols]],
        [f"allowance: {n2 - n1} × {layers} layers × {n_metrics} per-image curves × 8 B", *[allowance for _ in cols]],
        [f"for scale: one layer of N={n2} × {tokens} × {dim} float32 tokens", *[token_level for _ in cols]],
    ], title="(c) memory growth with the number of images"))

    # phases whose own peak grows with N (with the fixed mmap threshold where measured: no allocator retention): a
    # phase is flagged when its growth exceeds the largest growth of the phases before it (retained memory carries
    # over) by more than the curves' allowance + 10 MiB
    ref = "fixed_mmap" if "fixed_mmap" in runs else "default"
    pf1, pf2 = runs[ref][n1][0]["phases"], runs[ref][n2][0]["phases"]
    growing, carried = [], 0.0
    common = set(pf1["peak_rss_mib"]) & set(pf2["peak_rss_mib"])
    for p in sorted(common, key=lambda p: pf2["phase_start_s"].get(p, 1e9)):
        if p.startswith("other"):  # its samples come from both ends of the run
            continue
        g = pf2["peak_rss_mib"][p] - pf1["peak_rss_mib"][p]
        if g - max(carried, 0.0) > allowance + 10.0:
            growing.append((p, g))
        carried = max(carried, g)
    rss_ok = d["growth"] <= C_RSS_GROWTH
    status = verdict(rss_ok)
    if not rss_ok and "fixed_mmap" in summary and summary["fixed_mmap"]["growth"] <= C_RSS_GROWTH:
        status += " with the default allocator; met with a fixed mmap threshold (glibc heap retention)"
    elif not rss_ok and multi and d["delta"] <= d["spread"]:
        status += f"; the difference is within the run-to-run spread ({d['spread']:.0f} MiB)"
    if growing:
        status += "; phases growing with N: " + ", ".join(f"'{p}' +{g:.0f} MiB" for p, g in growing)
    print(f"  target: peak RSS at N={n2} ≤ {1 + C_RSS_GROWTH:.2f} × peak RSS at N={n1}: {status}")

    # wall time: linear scaling would multiply it by n2/n1; the fixed costs (interpreter, imports, model build,
    # N-independent post-pass work) keep a sound run below that, so the target only bounds it from above
    linear = n2 / n1
    wall_ok = d["wall_ratio"] <= (1 + C_WALL_SLACK) * linear
    pass_ok = abs(d["pass_per_image_ratio"] - 1) <= C_WALL_SLACK
    t1, t2 = runs["default"][n1][0]["timings"], runs["default"][n2][0]["timings"]
    srows = []
    for key in TIMING_KEYS + [k for k in t2 if k not in TIMING_KEYS and k != "images_per_s"]:
        if key in t1 and key in t2:
            ratio = t2[key] / t1[key] if t1[key] > 0 else nan
            flag = "superlinear" if ratio > (1 + C_WALL_SLACK) * linear and t2[key] > 1.0 else ""
            srows.append([key, t1[key], t2[key], ratio, flag])
    w1, w2 = runs["default"][n1][0]["wall_s"], runs["default"][n2][0]["wall_s"]
    srows.append(["process outside analyze (wall − total_s: interpreter, imports)", w1 - t1.get("total_s", nan),
                  w2 - t2.get("total_s", nan), "", ""])
    srows.append(["whole process (os.wait4)", w1, w2, w2 / w1, ""])
    print(table(["step (run.json timings, s; first run of each size)", f"N={n1}", f"N={n2}", "ratio", ""], srows,
                title=f"(c) wall time by step (linear scaling: ratio {linear:.3g})"))
    print(f"  target: wall time at N={n2} ≤ {1 + C_WALL_SLACK:.1f} × linear ({d['wall_ratio']:.3g} vs "
          f"{(1 + C_WALL_SLACK) * linear:.3g}): {verdict(wall_ok)}; pass time per image at N={n2} / at N={n1}: "
          f"{d['pass_per_image_ratio']:.3f} (within ±{C_WALL_SLACK:.0%}: {verdict(pass_ok)})")

    for setting, label in (("default", "default malloc"), ("fixed_mmap", "MALLOC_MMAP_THRESHOLD_=1MiB")):
        if setting not in runs:
            continue
        ph1, ph2 = runs[setting][n1][0]["phases"], runs[setting][n2][0]["phases"]
        names = sorted(set(ph1["peak_rss_mib"]) | set(ph2["peak_rss_mib"]),
                       key=lambda p: ph2["phase_start_s"].get(p, ph1["phase_start_s"].get(p, 1e9)))
        rows = [[p, ph1["peak_rss_mib"].get(p, nan), ph2["peak_rss_mib"].get(p, nan),
                 ph2["peak_rss_mib"].get(p, nan) - ph1["peak_rss_mib"].get(p, nan)] for p in names]
        rows.append(["RSS at the end of main()", ph1["rss_at_end_mib"], ph2["rss_at_end_mib"],
                     ph2["rss_at_end_mib"] - ph1["rss_at_end_mib"]])
        print(table([f"phase (peak RSS while in it, MiB; {label})", f"N={n1}", f"N={n2}", "difference"], rows,
                    title="(c) peak RSS by phase, first run of each size, in order (5 ms sampler in the child)"))
    for out in runs.values():
        for rs in out.values():
            for r in rs:
                r.pop("model", None)
    results["c"] = {"model": args.c_model, "data": data, "sizes": [n1, n2], "batch_size": BATCH, "runs": runs,
                    "summary": summary, "growing_phases": growing, "growing_phases_setting": ref,
                    "allowance_mib": allowance, "token_layer_mib": token_level,
                    "targets": {"rss_flat": {"growth": d["growth"], "limit": C_RSS_GROWTH, "met": rss_ok,
                                             "status": status},
                                "wall_linear": {"ratio": d["wall_ratio"], "linear": linear,
                                                "limit": (1 + C_WALL_SLACK) * linear, "met": wall_ok},
                                "pass_per_image": {"ratio": d["pass_per_image_ratio"], "met": pass_ok}},
                    "target_met": rss_ok and wall_ok}
    results["c"]["gloo"] = c_gloo(args, work, n1, data)


def c_gloo(args, work: Path, n: int, data: str) -> dict:
    """One process against ``torchrun --nproc-per-node 2`` (gloo) on the same images: wall time, peak RSS, equality."""
    supported, why = analyze_supports_torchrun()
    if args.c_gloo == "off" or (args.c_gloo == "auto" and not supported):
        why = "--c-gloo off" if args.c_gloo == "off" else why
        print(f"\n== (c) 2-process gloo run vs one process: skipped: {why}")
        return {"skipped": why}
    threads = max(1, (os.cpu_count() or 2) // 2)
    print(f"\n== (c) 2-process gloo run (torchrun --standalone --nproc-per-node 2, OMP_NUM_THREADS={threads} per "
          f"worker) vs one process (torch's default threads), {args.c_model} --random-init, {data} samples {n}, "
          f"batch {BATCH}, whole processes")
    common = ["analyze", args.c_model, "--random-init", "--data", data, "--samples", str(n), "--overwrite", "--quiet",
              "--batch-size", str(BATCH)]
    d1, d2, wdir = work / "c_gloo_1proc", work / "c_gloo_2proc", work / "c_gloo_workers"
    wdir.mkdir(parents=True, exist_ok=True)
    for old in wdir.glob("worker_*.json"):
        old.unlink()
    out: dict = {"samples": n, "batch_size": BATCH, "omp_num_threads_per_worker": threads}
    try:
        one = run_child([PY, "-m", "vitdepth", *common, "--out", str(d1)], work / "c_gloo_1proc.log")
        two = run_child([PY, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--no-python",
                         PY, "-c", _TORCHRUN_WORKER, str(wdir), *common, "--out", str(d2)], work / "c_gloo_2proc.log",
                        env={"OMP_NUM_THREADS": str(threads)})
    except RuntimeError as e:
        print(f"  (c) gloo comparison FAILED: {e}")
        return {**out, "error": str(e), "equal": False}
    workers = [json.loads(p.read_text()) for p in sorted(wdir.glob("worker_*.json"))]
    t1 = json.loads((d1 / "run.json").read_text())["timings"]
    t2 = json.loads((d2 / "run.json").read_text())["timings"] if (d2 / "run.json").exists() else {}
    eq = compare_runs(d1, d2)
    w_rss = [w["maxrss_mib"] for w in workers]
    rows = [
        ["wall time, whole process (s; torchrun: launcher + rendezvous + workers)", one["wall_s"], two["wall_s"],
         two["wall_s"] / one["wall_s"]],
        ["analyze pass (run.json pass_s; rank 0 for torchrun)", t1["pass_s"], t2.get("pass_s", nan),
         t2.get("pass_s", nan) / t1["pass_s"]],
        ["analyze call (run.json total_s; rank 0 for torchrun)", t1["total_s"], t2.get("total_s", nan),
         t2.get("total_s", nan) / t1["total_s"]],
        ["peak RSS (MiB), os.wait4: torchrun = max over launcher and workers", one["maxrss_mib"], two["maxrss_mib"],
         two["maxrss_mib"] / one["maxrss_mib"]],
        ["peak RSS (MiB), per worker (getrusage at exit)", "", ", ".join(f"{v:.0f}" for v in w_rss), ""],
        ["peak RSS (MiB), sum of the workers' peaks (upper bound of the job's)", one["maxrss_mib"],
         sum(w_rss) if w_rss else nan, sum(w_rss) / one["maxrss_mib"] if w_rss else nan],
    ]
    print(table(["quantity", "1 process", "2 processes (gloo)", "2 / 1"], rows, title="(c) torchrun vs one process"))
    ok = eq["equal"]
    print(f"  equality of layers.csv: per-image metrics and probe accuracies identical "
          f"({eq['exact_rows']} rows, {len(eq['exact_mismatches'])} differ), isi_rec family within "
          f"{C_ISI_RTOL:g} relative (max {eq['isi_max_rel']:.2e} over {eq['isi_rows']} rows), same rows: "
          f"{not eq['missing']}: {verdict(ok)}")
    for m in (eq["exact_mismatches"] + eq["isi_mismatches"])[:10]:
        print(f"    differs: {m}")
    if eq["other_max_rel"]:
        print("  other metrics (not asserted), max relative difference: "
              + ", ".join(f"{k} {v:.1e}" for k, v in sorted(eq["other_max_rel"].items())))
    return {**out, "one_process": one, "two_processes": two, "workers": workers, "timings_1": t1, "timings_2": t2,
            "wall_ratio": two["wall_s"] / one["wall_s"], "comparison": eq, "equal": ok}


def compare_runs(d1: Path, d2: Path) -> dict:
    """layers.csv of two runs: per-image and probe rows identical, the isi_rec family within C_ISI_RTOL."""
    import csv
    import math

    from vitdepth.metrics.catalog import METRICS

    isi = {"isi_rec", "r2_self", "r2_all"}
    exact = {m for m, info in METRICS.items() if info.kind in ("per_image", "probe")}

    def load(d: Path) -> dict:
        p = d / "layers.csv"
        if not p.exists():
            return {}
        with open(p, newline="") as f:
            return {(r["metric"], r["token_set"], r["layer"]): r for r in csv.DictReader(f)}

    def num(s: str) -> float:
        return float(s) if s not in ("", None) else nan

    def rel(a: float, b: float) -> float:
        if a == b or (math.isnan(a) and math.isnan(b)):
            return 0.0
        return abs(a - b) / max(abs(a), abs(b))

    a, b = load(d1), load(d2)
    missing = sorted(set(a) ^ set(b))
    out = {"exact_rows": 0, "exact_mismatches": [], "isi_rows": 0, "isi_max_rel": 0.0, "isi_mismatches": [],
           "other_max_rel": {}, "missing": [list(k) for k in missing[:20]], "rows": len(a)}
    for key in sorted(set(a) & set(b)):
        ra, rb = a[key], b[key]
        metric = key[0]
        fields = [f for f in ("value", "ci_low", "ci_high", "n") if f in ra]
        if metric in exact:
            out["exact_rows"] += 1
            if any(not (num(ra[f]) == num(rb[f]) or (math.isnan(num(ra[f])) and math.isnan(num(rb[f]))))
                   for f in fields):
                out["exact_mismatches"].append(f"{'/'.join(key)}: " + ", ".join(f"{f} {ra[f]} vs {rb[f]}"
                                                                             for f in fields if ra[f] != rb[f]))
        elif metric in isi:
            out["isi_rows"] += 1
            r = max(rel(num(ra[f]), num(rb[f])) for f in fields)
            out["isi_max_rel"] = max(out["isi_max_rel"], r)
            if r > C_ISI_RTOL:
                out["isi_mismatches"].append(f"{'/'.join(key)}: relative difference {r:.2e}")
        else:
            r = max(rel(num(ra[f]), num(rb[f])) for f in fields)
            out["other_max_rel"][metric] = max(out["other_max_rel"].get(metric, 0.0), r)
    out["equal"] = bool(a) and not missing and not out["exact_mismatches"] and not out["isi_mismatches"]
    return out


# ----------------------------------------------------------------------------------------------- part d

D_TARGET_S = 20.0  # issue 15: `vitdepth demo` under 20 s after installation on the 2-core dev machine
STARTUP_COMMANDS = {"vitdepth --help": ["--help"], "vitdepth models": ["models"], "vitdepth metrics": ["metrics"]}


def part_d(args, work: Path, results: dict) -> None:
    """``vitdepth demo`` as a user runs it (one whole process, installed package), and command start-up."""
    repeats = args.repeats or (1 if args.quick else 3)
    print(f"\n== (d) vitdepth demo, whole process, {repeats} runs; start-up of quick commands (5 runs each)")
    startup = {}
    for label, argv in {"python -c 'import torch' (floor of any analysis)": None, **STARTUP_COMMANDS}.items():
        cmd = [PY, "-c", "import torch"] if argv is None else [PY, "-m", "vitdepth", *argv]
        walls = [run_child(cmd, work / "d_startup.log")["wall_s"] for _ in range(5)]
        startup[label] = statistics.median(walls)
    print(table(["command (median of 5 whole processes)", "wall s"], [[k, v] for k, v in startup.items()],
                title="(d) start-up"))
    demos, per_model = [], []
    for r in range(repeats):
        res = run_child([PY, "-m", "vitdepth", "demo", "--out", str(work / "d_demo"), "--quiet"],
                        work / f"d_demo_{r}.log")
        demos.append(res)
        per_model.append({size: json.loads((work / "d_demo" / size / "run.json").read_text())["timings"]
                          for size in ("S", "B", "L")})
        print(f"  run {r}: {res['wall_s']:.1f} s, {res['maxrss_mib']:.0f} MiB")
    wall = statistics.median(x["wall_s"] for x in demos)
    keys = ["pass_s", "isi_rec_s", "probes_s", "cka_self_s", "figures_s", "total_s"]
    rows = [[size, *[statistics.median(m[size].get(k, 0.0) for m in per_model) for k in keys]]
            for size in ("S", "B", "L")]
    print(table(["model (median s)", *keys], rows, title="(d) the demo's runs (run.json timings)"))
    print(table(["quantity", "value", "target", ""],
                [["vitdepth demo, whole process (median s)", wall, f"< {D_TARGET_S:g}", verdict(wall < D_TARGET_S)]]))
    results["d"] = {"startup_s": startup, "demo": demos, "demo_timings": per_model, "demo_median_s": wall,
                    "target_met": wall < D_TARGET_S}


# ----------------------------------------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", action="append", choices=["a", "b", "c", "d"],
                    help="run only these parts (repeatable)")
    ap.add_argument("--quick", action="store_true", help="smoke version: fewer images and repeats")
    ap.add_argument("--repeats", type=int, default=None, help="alternating pairs for (a) and (b)")
    ap.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "bench")
    ap.add_argument("--retrain", action="store_true", help="(b) retrain the digits ViT even if it exists")
    ap.add_argument("--c-model", default=C_MODEL, help="(c) model spec (default: ViT-Ti/16; "
                    "timm:vit_small_patch16_224 is (a)'s model, ~4-6 min per 2,048-image process on 2 cores)")
    ap.add_argument("--c-sizes", default=None, metavar="N1,N2",
                    help=f"(c) the two dataset sizes (default {C_SIZES[0]},{C_SIZES[1]}; --quick "
                         f"{C_SIZES_QUICK[0]},{C_SIZES_QUICK[1]}); the gloo comparison runs on N1")
    ap.add_argument("--c-gloo", choices=["auto", "on", "off"], default="auto",
                    help="(c) the 2-process torchrun (gloo) run against one process: auto runs it when vitdepth's "
                         "analysis joins a process group")
    ap.add_argument("--c-fixed-mmap", action="store_true",
                    help="(c) also run both sizes with MALLOC_MMAP_THRESHOLD_=1MiB (allocator retention diagnostic)")
    args = ap.parse_args()
    parts = sorted(set(args.part or ["a", "b", "c", "d"]))
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    print("vitdepth benchmark", " ".join(sys.argv[1:]))
    print(table(["field", "value"], [[k, v] for k, v in info.items()]))
    results: dict = {"machine": info, "quick": args.quick, "parts": parts}
    t0 = time.perf_counter()
    for p in parts:
        {"a": part_a, "b": part_b, "c": part_c, "d": part_d}[p](args, work, results)
    results["benchmark_wall_s"] = time.perf_counter() - t0
    name = "results_quick.json" if args.quick else "results.json"
    (work / name).write_text(json.dumps(results, indent=2, default=str))
    print(f"\nbenchmark wall time {results['benchmark_wall_s'] / 60:.1f} min; figures in {work / name}")
    if results.get("c", {}).get("gloo", {}).get("equal") is False:  # (c) asserts equality of the gloo run
        print("(c) FAILED: the 2-process gloo run does not reproduce the one-process results (see above)")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
