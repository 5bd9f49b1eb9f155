"""Per-layer metrics: pure functions (``functional``), probes, statistics and the catalogue.

Nothing here imports timm, transformers, the adapters or the data sources (design §2). The names below load on
first use (PEP 562), so importing one submodule (e.g. ``vitdepth.metrics.probes``) does not load the others.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

# name -> submodule that defines it; loaded by __getattr__ on first use
_LAZY = {
    "METRICS": "catalog",
    "MetricInfo": "catalog",
    "list_metrics": "catalog",
    "PerImageCurves": "curves",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:  # the eager imports, for type checkers and IDEs
    from .catalog import METRICS as METRICS
    from .catalog import MetricInfo as MetricInfo
    from .catalog import list_metrics as list_metrics
    from .curves import PerImageCurves as PerImageCurves


__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
