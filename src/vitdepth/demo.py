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
#: images the demo runs the causal [CLS] tests on (of the 1797): each costs about 3 forwards per layer, so the
#: subset keeps the demo within a minute on a laptop CPU; ``vitdepth analyze --interventions cls`` takes all
INTERVENTION_SAMPLES = 120
#: images of the S → B → L CKA alignment (its bootstrap grows with the square of the count)
ALIGN_SAMPLES = 512


def demo_models_dir() -> Path:
    """Directory of the shipped demo family."""
    return Path(str(resources.files("vitdepth").joinpath("demo_models")))


def run_demo(out: str | Path = "vitdepth-demo", overwrite: bool = True, quiet: bool = False,
             batch_size: int = 256) -> dict:
    """Analyze S, B and L on the digits data, compare them; returns paths and timings.

    The demo computes every metric the paper measures (``--metrics paper``), the head lens and the causal [CLS]
    tests (``--interventions cls``); the logistic probe, which adds a few seconds per model and nothing to the phase
    picture, is left to ``vitdepth analyze``.
    """
    from .analysis.run import AnalyzeConfig, analyze
    from .compare import compare_runs
    from .outputs import OutputDir

    root = demo_models_dir()
    missing = [s for s in SIZES if not (root / s / "model.safetensors").is_file()]
    if missing:
        raise VitdepthError(f"the demo family is missing sizes {', '.join(missing)} in {root}; rebuild it with "
                            "bash tools/build_demo_family.sh")
    # the demo replaces its own previous output (marked by vitdepth), never a folder or files of the user's
    od = OutputDir(out, "demo", overwrite=overwrite)
    t0 = time.perf_counter()
    with od:
        runs = []
        for size in SIZES:
            t = time.perf_counter()
            runs.append(analyze(AnalyzeConfig(model=f"file:{root / size}", data="digits", out=str(od.tmp / size),
                                              name=f"ViT-{size}", batch_size=batch_size, quiet=True,
                                              metrics="paper,lens_acc,lens_kl", interventions=("cls",),
                                              intervention_samples=INTERVENTION_SAMPLES)))
            if not quiet:
                print(f"analyzed ViT-{size} in {time.perf_counter() - t:.1f}s", flush=True)
        compare_runs(runs, od.tmp / "compare", align=True, align_samples=ALIGN_SAMPLES)
        final = od.commit()
    runs = [final / size for size in SIZES]
    cmp_dir = final / "compare"
    return {"runs": runs, "compare": cmp_dir, "seconds": time.perf_counter() - t0}
