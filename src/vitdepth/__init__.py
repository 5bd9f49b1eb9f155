"""vitdepth: layer-by-layer depth diagnostics for vision transformers.

Reproduces and extends the analysis of "Mechanisms of Non-Monotonic Scaling in Vision
Transformers" (arXiv 2511.21635): per-layer probes, token similarity, an Information
Scrambling Index and attention statistics, computed in one streaming pass.
"""

__version__ = "0.1.0"

from ._errors import VitdepthError as VitdepthError  # noqa: E402


def __getattr__(name):
    # Lazy public API: `import vitdepth` stays cheap (no torch import) for the CLI's --help.
    if name in ("AnalyzeConfig", "analyze"):
        from .analysis import run

        return getattr(run, name)
    if name in ("create_model", "list_adapters"):
        from . import models

        return getattr(models, name)
    if name == "load_run":
        from .results import load_run

        return load_run
    raise AttributeError(f"module 'vitdepth' has no attribute {name!r}")
