"""Per-layer metrics: pure functions (``functional``), probes, statistics and the catalogue.

Nothing here imports timm, transformers, the adapters or the data sources (design §2).
"""

from .catalog import METRICS as METRICS
from .catalog import MetricInfo as MetricInfo
from .catalog import list_metrics as list_metrics
from .curves import PerImageCurves as PerImageCurves
