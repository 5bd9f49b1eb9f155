"""Per-image scalar curves: the one deliberate per-sample state (design §4, style rule 7).

Every per-image metric keeps one float64 value per (image, layer) so means, bootstrap CIs and
later phase-breakpoint CIs all resample the same images. Size is N × layers × metrics floats;
token-level data is never stored.
"""

from __future__ import annotations

import numpy as np


class PerImageCurves:
    """values[metric] is an (n_items, n_layers) float64 array, NaN where nothing was recorded.

    Rows are positions in the analysis order, so shards written by different ranks (or resumed
    runs) merge by filling each other's NaNs.
    """

    def __init__(self, metric_ids: list[str], n_items: int, n_layers: int):
        self.n_items = n_items
        self.n_layers = n_layers
        self.values = {m: np.full((n_items, n_layers), np.nan) for m in metric_ids}

    def update(self, metric: str, layer_position: int, rows: np.ndarray, values) -> None:
        """Record per-image values (B,) of ``metric`` at one layer for the given rows."""
        vals = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype=np.float64)
        if vals.shape != rows.shape:
            raise ValueError(f"{metric}: got {vals.shape} values for {rows.shape} rows")
        self.values[metric][rows, layer_position] = vals

    def merge(self, other: PerImageCurves) -> PerImageCurves:
        """Fill this state's missing entries from ``other`` (disjoint shards of the same run)."""
        if other.values.keys() != self.values.keys() or other.n_layers != self.n_layers:
            raise ValueError("cannot merge per-image curves of different metrics or depths")
        for m, v in other.values.items():
            mine = self.values[m]
            take = np.isnan(mine) & ~np.isnan(v)
            mine[take] = v[take]
        return self

    def state_dict(self) -> dict[str, np.ndarray]:
        """Arrays keyed by metric id (saved to per_image.npz)."""
        return dict(self.values)

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore from :meth:`state_dict`."""
        for m in self.values:
            self.values[m] = np.asarray(state[m], dtype=np.float64)
