"""Smoke test of ``benchmarks/bench_gpu.py --device cpu --quick``: it runs, prints its table and verdicts, and
writes the results JSON with positive, finite rates and ratios (the figures themselves are not checked: the
benchmark is meant for a GPU, and CPU timings on a shared machine are noise)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_gpu.py"


@pytest.mark.slow
def test_bench_gpu_quick_cpu(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    res = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout

    assert "pass / bare inference" in out
    assert "pass/bare median" in out and "peak RSS MiB" in out  # on CPU the memory column is peak RSS
    for dtype, goal in (("fp32", 1.3), ("bf16", 1.5)):
        line = re.search(rf"^target \S+ {dtype}: pass/bare <= {goal}: median ([0-9.]+) -> (PASS|FAIL)", out, re.M)
        assert line, f"no PASS/FAIL line for the {dtype} target in:\n{out[-2000:]}"
        assert float(line.group(1)) > 0

    data = json.loads((tmp_path / "results_quick.json").read_text())
    for key in ("machine", "device", "models", "dtypes", "images", "batch_size", "repeats", "analyze_has_dtype",
                "memory", "configs", "targets", "benchmark_wall_s"):
        assert key in data, key
    assert data["device"] == "cpu" and data["quick"] is True and data["analyze_has_dtype"] is True
    assert sorted(data["dtypes"]) == ["bf16", "fp32"]
    assert len(data["configs"]) == len(data["models"]) * 2
    for name, cfg in data["configs"].items():
        for key in ("bare_images_per_s", "pass_images_per_s", "data_images_per_s"):
            assert math.isfinite(cfg[key]) and cfg[key] > 0, (name, key, cfg[key])
        ratio = cfg["ratio_median_min_max"]
        assert len(ratio) == 3 and all(math.isfinite(r) and r > 0 for r in ratio), (name, ratio)
        assert ratio[1] <= ratio[0] <= ratio[2]
        assert len(cfg["runs"]["bare"]) == len(cfg["runs"]["pass"]) == data["repeats"]
        for run in cfg["runs"]["pass"]:
            assert run["analyzed"] == data["images"]
            assert run["run_dtype"] == cfg["dtype"]  # analyze recorded the autocast dtype it was given
        for key in ("peak_mib_bare", "peak_mib_pass"):  # Linux: sampled from /proc/self/statm
            assert cfg[key] is not None and cfg[key] > 0, (name, key)
    assert {t["dtype"] for t in data["targets"]} == {"fp32", "bf16"}
    assert all(isinstance(t["met"], bool) for t in data["targets"])
