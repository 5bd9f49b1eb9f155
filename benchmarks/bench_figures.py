"""Time a run's figures (``write_run_figures``) on existing run directories, as ``analyze`` draws them.

Usage::

    vitdepth demo --out /tmp/figdemo --quiet           # once: S, B, L run directories and a comparison
    python benchmarks/bench_figures.py /tmp/figdemo/S /tmp/figdemo/B /tmp/figdemo/L [--repeat 3] [--profile]
        [--formats png,pdf] [--compare] [--module /tmp/old_figures.py]

Each timing runs in a fresh subprocess (matplotlib not yet imported, as in ``vitdepth analyze``), writes into a
temporary ``figures/`` and prints the best and median wall time and the best CPU time (``process_time``, steadier
on a shared machine) of ``--repeat`` runs next to the run's recorded ``timings.figures_s``: once cold (the
matplotlib import included) and once warm (matplotlib imported and its fonts loaded beforehand, as in ``analyze``
after the layer x layer CKA figure). ``--profile`` prints the top of a cProfile of one in-process call instead.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import sys, time, json
from pathlib import Path
t0 = time.perf_counter()
from vitdepth.results import load_run
if sys.argv[5]:  # another version of figures.py (e.g. the previous commit's), loaded in its package
    import importlib.util
    spec = importlib.util.spec_from_file_location("vitdepth.report._figures_other", sys.argv[5])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    write_run_figures = mod.write_run_figures
else:
    from vitdepth.report.figures import write_run_figures
run_dir, out, formats = Path(sys.argv[1]), Path(sys.argv[2]), tuple(sys.argv[3].split(","))
warm = sys.argv[4] == "warm"
res = load_run(run_dir)
phases = json.loads((run_dir / "phases.json").read_text()) if (run_dir / "phases.json").is_file() else None
if warm:  # matplotlib imported and its fonts loaded, as after the run's layer x layer CKA figure
    import matplotlib.backends.backend_agg, matplotlib.figure, matplotlib.patches, PIL.PngImagePlugin
    _f = matplotlib.figure.Figure(figsize=(1, 1))
    matplotlib.backends.backend_agg.FigureCanvasAgg(_f)
    _f.text(0.5, 0.5, "0")
    _f.canvas.draw()
t1, c1 = time.perf_counter(), time.process_time()
written = write_run_figures(out, res.rows, res.model, formats=formats, phases=phases)
t2, c2 = time.perf_counter(), time.process_time()
print(json.dumps({"figures_s": t2 - t1, "cpu_s": c2 - c1, "load_s": t1 - t0, "n": len(written)}))
"""


def _time_once(run_dir: Path, formats: str, warm: bool, module: str = "") -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([sys.executable, "-c", CHILD, str(run_dir), tmp, formats, "warm" if warm else "cold",
                              module],
                             check=True,
                             capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _profile(run_dir: Path, formats: str) -> None:
    import cProfile
    import pstats

    from vitdepth.report.figures import write_run_figures
    from vitdepth.results import load_run

    res = load_run(run_dir)
    phases = json.loads((run_dir / "phases.json").read_text()) if (run_dir / "phases.json").is_file() else None
    with tempfile.TemporaryDirectory() as tmp:
        prof = cProfile.Profile()
        prof.enable()
        write_run_figures(Path(tmp), res.rows, res.model, formats=tuple(formats.split(",")), phases=phases)
        prof.disable()
    pstats.Stats(prof).sort_stats("cumulative").print_stats(35)


def _time_compare(dirs: list[Path]) -> None:
    import time

    from vitdepth.compare import OVERLAY
    from vitdepth.report.figures import write_compare_figures
    from vitdepth.results import load_run

    runs = [load_run(d) for d in dirs]
    phases = [json.loads((d / "phases.json").read_text()) for d in dirs]
    with tempfile.TemporaryDirectory() as tmp:
        write_compare_figures(Path(tmp), runs, phases, [d.name for d in dirs], OVERLAY)  # warm: imports
        t = time.perf_counter()
        n = len(write_compare_figures(Path(tmp), runs, phases, [d.name for d in dirs], OVERLAY))
        print(f"compare figures (the given runs overlaid): {n} files in {time.perf_counter() - t:.2f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--formats", default="png")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--module", default="", help="time this figures.py file instead (e.g. `git show HEAD:src/vitdepth/"
                   "report/figures.py > /tmp/old.py`), for before/after")
    p.add_argument("--compare", action="store_true", help="also time the overlay figures of the given runs")
    a = p.parse_args()
    for run_dir in a.runs:
        if a.profile:
            _profile(run_dir, a.formats)
            continue
        recorded = json.loads((run_dir / "run.json").read_text()).get("timings", {}).get("figures_s")
        rec = "?" if recorded is None else f"{recorded:.2f}"
        for warm in (False, True):
            times = [_time_once(run_dir, a.formats, warm, a.module) for _ in range(a.repeat)]
            fs, cpu = [t["figures_s"] for t in times], [t["cpu_s"] for t in times]
            print(f"{run_dir.name} ({'matplotlib loaded before' if warm else 'cold, import included'}): "
                  f"{times[0]['n']} files, wall best {min(fs):.2f} s, median {statistics.median(fs):.2f} s; "
                  f"CPU best {min(cpu):.2f} s (recorded in run.json: {rec} s)")
    if a.compare:
        _time_compare(a.runs)


if __name__ == "__main__":
    main()
