"""``vitdepth demo``: analyze the shipped digits S/B/L family, compare the sizes, write both reports.

The three models were trained by ``vitdepth train --recipe digits --sizes S,B,L`` (seed 0) and
ship in ``vitdepth/demo_models`` (config.json + model.safetensors each), so the demo needs no
download and no training; ``tools/build_demo_family.sh`` rebuilds them.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

from ._errors import VitdepthError

SIZES = ("S", "B", "L")


def demo_models_dir() -> Path:
    """Directory of the shipped demo family."""
    return Path(str(resources.files("vitdepth").joinpath("demo_models")))


def run_demo(out: str | Path = "vitdepth-demo", overwrite: bool = True, quiet: bool = False,
             batch_size: int = 256) -> dict:
    """Analyze S, B and L on the digits data, compare them; returns paths and timings.

    The demo computes every metric the paper measures (``--metrics paper``); the logistic probe, which adds a
    few seconds per model and nothing to the phase picture, is left to ``vitdepth analyze``.
    """
    from .analysis.run import AnalyzeConfig, analyze
    from .compare import compare_runs

    out = Path(out)
    if out.exists() and not overwrite:
        raise VitdepthError(f"{out} already exists; pass --overwrite or another --out")
    root = demo_models_dir()
    missing = [s for s in SIZES if not (root / s / "model.safetensors").is_file()]
    if missing:
        raise VitdepthError(f"the demo family is missing sizes {', '.join(missing)} in {root}; rebuild it with "
                            "bash tools/build_demo_family.sh")
    t0 = time.perf_counter()
    runs = []
    for size in SIZES:
        t = time.perf_counter()
        runs.append(analyze(AnalyzeConfig(model=f"file:{root / size}", data="digits", out=str(out / size),
                                          name=f"ViT-{size}", batch_size=batch_size, overwrite=True, quiet=True,
                                          metrics="paper")))
        if not quiet:
            print(f"analyzed ViT-{size} in {time.perf_counter() - t:.1f}s -> {runs[-1]}", flush=True)
    cmp_dir = compare_runs(runs, out / "compare", overwrite=True)
    return {"runs": runs, "compare": cmp_dir, "seconds": time.perf_counter() - t0}
