"""Run ``vitdepth analyze`` (the CLI's ``main``) in this process and record the peak RSS of each phase.

Used by benchmark (c) as the child process: the parent still takes the whole process's peak memory from
``os.wait4``; this wrapper only adds an attribution of that peak to phases (imports, model creation, data
loading, the streaming pass, probes, bootstrap CIs, writing tables and npz, figures). A daemon thread reads
``/proc/self/statm`` every 5 ms; phases are tagged by wrapping vitdepth functions in this process only
(nothing in ``src/`` is changed). Linux only.

Usage::

    .venv/bin/python benchmarks/rss_phases.py PHASES.json analyze MODEL --data SPEC --out DIR [...]
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402

_PAGE = os.sysconf("SC_PAGE_SIZE")
_phase = ["imports"]
_peak: dict[str, float] = {}
_start: dict[str, float] = {}
_stop = threading.Event()
_after_batch: list[float] = []


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE / 2**20


def _sample() -> None:
    while not _stop.is_set():
        p, r = _phase[0], _rss_mib()
        if r > _peak.get(p, 0.0):
            _peak[p] = r
        _stop.wait(0.005)


def _tag(owner, name: str, label: str) -> None:
    fn = getattr(owner, name, None)
    if not callable(fn):  # a step this vitdepth version does not have
        return

    def wrapped(*args, **kwargs):
        before = _phase[0]
        _phase[0] = label
        _start.setdefault(label, time.perf_counter() - T0)
        try:
            return fn(*args, **kwargs)
        finally:
            _phase[0] = before

    setattr(owner, name, wrapped)


def main() -> int:
    out_json, argv = sys.argv[1], sys.argv[2:]
    threading.Thread(target=_sample, daemon=True).start()
    from vitdepth import cli
    from vitdepth.analysis import run as R
    from vitdepth.report import figures as FG

    _phase[0] = "other (setup, run.json, rename)"
    _start["imports"] = 0.0
    _start[_phase[0]] = time.perf_counter() - T0
    _tag(R, "create_model", "create_model")
    _tag(R.np, "savez_compressed", "write per_image.npz")
    iterate = R.iterate_batches

    def iterate_tagged(*args, **kwargs):  # data loading happens in next(), between the pass's batches
        it = iterate(*args, **kwargs)
        while True:
            before = _phase[0]
            _phase[0] = "data loading"
            _start.setdefault("data loading", time.perf_counter() - T0)
            try:
                batch = next(it)
            except StopIteration:
                return
            finally:
                _phase[0] = before
            yield batch

    R.iterate_batches = iterate_tagged
    _tag(R._Pass, "batch", "pass (taps + metrics + cache)")
    tagged_batch = R._Pass.batch

    def batch_traced(*args, **kwargs):  # RSS after every batch: a trend would mean memory grows with N
        out = tagged_batch(*args, **kwargs)
        _after_batch.append(round(_rss_mib(), 2))
        return out

    R._Pass.batch = batch_traced
    _tag(R, "_probe_rows", "probes")
    _tag(R, "_logistic_rows", "logistic probes")
    _tag(R, "_per_image_rows", "bootstrap CIs")
    _tag(R, "_isi_rec_rows", "isi_rec fits")
    _tag(R, "_truncation", "truncation (FLOPs, latency)")
    _tag(R, "write_layers", "write tables")
    _tag(FG, "write_run_figures", "figures")
    try:
        from vitdepth.report import html as HT

        _tag(HT, "write_run_report", "HTML report")
    except ImportError:
        pass
    rc = cli.main(argv)
    _stop.set()
    self_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open(out_json, "w") as f:
        json.dump({"peak_rss_mib": _peak, "phase_start_s": _start, "self_maxrss_before_teardown_mib": self_peak,
                   "rss_at_end_mib": _rss_mib(), "rss_after_batch_mib": _after_batch}, f, indent=2)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
