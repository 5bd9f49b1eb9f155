"""Start-up time of the commands users wait on, each a whole fresh process (issue "Fast where users wait", 2).

Times ``vitdepth --help``, ``vitdepth models``, ``vitdepth metrics`` and the errors for a bad model spec, a bad
data spec and a bad flag, next to two floors: a bare ``python -c pass`` and ``python -c "import torch"`` (what
every command paid before the imports were made lazy). Prints the median and best of ``--repeat`` runs per
command and which heavy libraries (torch, timm, transformers, scikit-learn, matplotlib) and whether numpy the
command loaded.

Usage::

    python benchmarks/bench_startup.py [--repeat 5] [--src DIR] [--json OUT.json]

``--src DIR`` times another checkout's ``src`` (e.g. ``git archive HEAD src | tar -x -C /tmp/before`` then
``--src /tmp/before/src``) with the same interpreter, for a before/after table. The machine's load shows in the
numbers: compare runs made back to back.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAVY = ("torch", "timm", "transformers", "sklearn", "matplotlib")
SHOWN = (*HEAVY, "numpy")  # numpy: not heavy, but the listings need none of it

# Runs the CLI as ``python -m vitdepth`` does, then reports the heavy modules it loaded (on stderr's last line).
_CLI = """
import json, sys
from vitdepth.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
sys.stdout.flush()
print("LOADED " + json.dumps([m for m in MODULES if m in sys.modules]), file=sys.stderr)
raise SystemExit(code)
""".replace("MODULES", repr(SHOWN))


def _cases(out: str) -> list[tuple[str, list[str], int]]:
    """(label, argv after ``python``, expected exit code)."""
    cli = ["-c", _CLI]
    return [
        ("python -c pass (floor)", ["-c", "pass"], 0),
        ('python -c "import torch" (floor)', ["-c", "import torch"], 0),
        ("vitdepth --help", [*cli, "--help"], 0),
        ("vitdepth models", [*cli, "models"], 0),
        ("vitdepth metrics", [*cli, "metrics"], 0),
        ("vitdepth analyze nosuchkind:x (bad model spec)", [*cli, "analyze", "nosuchkind:x", "--out", out], 2),
        ("vitdepth analyze ... --data nosuch:1 (bad data spec)",
         [*cli, "analyze", "timm:vit_tiny_patch16_224", "--data", "nosuch:1", "--out", out], 2),
        ("vitdepth analyze ... --device tpu (bad flag value)",
         [*cli, "analyze", "timm:vit_tiny_patch16_224", "--device", "tpu", "--out", out], 2),
    ]


def _time(argv: list[str], env: dict[str, str], expected: int) -> tuple[float, list[str] | None]:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if res.returncode != expected:
        raise SystemExit(f"{' '.join(argv[-4:])}: exit {res.returncode}, expected {expected}\n{res.stderr}")
    loaded = None
    for line in res.stderr.splitlines():
        if line.startswith("LOADED "):
            loaded = json.loads(line[len("LOADED "):])
    return wall, loaded


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5, help="processes per command (median and best reported)")
    ap.add_argument("--src", default=None, help="time this src directory instead of the installed vitdepth")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    env = dict(os.environ)
    if args.src:
        env["PYTHONPATH"] = os.pathsep.join([str(Path(args.src).resolve()), env.get("PYTHONPATH", "")]).rstrip(":")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, argv, expected in _cases(str(Path(tmp) / "never-written")):
            _time(argv, env, expected)  # warm the file cache once, untimed
            walls, loaded = [], None
            for _ in range(args.repeat):
                wall, loaded = _time(argv, env, expected)
                walls.append(wall)
            rows.append({"command": label, "median_s": statistics.median(walls), "best_s": min(walls),
                         "loaded": loaded})
    where = args.src or "installed vitdepth"
    print(f"start-up, whole processes, {args.repeat} runs each ({where}; {os.cpu_count()} CPUs)")
    width = max(len(r["command"]) for r in rows)
    print(f"{'command':<{width}}  {'median':>7}  {'best':>7}  libraries loaded")
    for r in rows:
        loaded = "-" if r["loaded"] is None else (", ".join(r["loaded"]) or "none")
        print(f"{r['command']:<{width}}  {r['median_s']:>6.2f}s  {r['best_s']:>6.2f}s  {loaded}")
    if args.json:
        Path(args.json).write_text(json.dumps({"src": where, "repeat": args.repeat, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
