"""The results table: the only interface between computing and analysing (style rule 13).

``layers.csv`` holds tidy rows ``model, layer, depth, metric, token_set, value, ci_low,
ci_high, n`` (design §6). Phases, comparison and reports read only this and ``run.json``.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

from ._errors import VitdepthError

ROW_FIELDS = ("model", "layer", "depth", "metric", "token_set", "value", "ci_low", "ci_high", "n")


def layer_depth(layer: str, depth: int) -> float:
    """Relative depth ℓ/L; ``pre`` sits one step before layer 0, at −1/L."""
    return (-1 if layer == "pre" else int(layer)) / depth


def layer_order(layer: str) -> int:
    """Sort key: pre → −1, ℓ → ℓ."""
    return -1 if layer == "pre" else int(layer)


@dataclass
class RunResults:
    """A run directory loaded back: ``run.json`` and the ``layers.csv`` rows."""

    path: Path
    run: dict
    rows: list[dict]

    @property
    def model(self) -> str:
        """Display name of the analysed model."""
        return self.run["model"]["name"]

    def curve(self, metric: str, token_set: str = "") -> list[dict]:
        """Rows of one metric (and token set), in layer order."""
        rows = [r for r in self.rows if r["metric"] == metric and r["token_set"] == token_set]
        return sorted(rows, key=lambda r: layer_order(r["layer"]))


def write_layers(rows: list[dict], run_dir: Path) -> None:
    """Write ``layers.csv`` (and ``layers.parquet`` when pyarrow is installed)."""
    with open(run_dir / "layers.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=ROW_FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(r[k]) for k in ROW_FIELDS})
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return
    table = pa.table({k: [r[k] for r in rows] for k in ROW_FIELDS})
    pq.write_table(table, run_dir / "layers.parquet")


def _fmt(v):
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    return v


def _parse(r: dict) -> dict:
    out = dict(r)
    for k in ("depth", "value", "ci_low", "ci_high"):
        out[k] = float(r[k]) if r[k] not in ("", None) else math.nan
    out["n"] = int(r["n"])
    return out


def load_run(run_dir: str | Path) -> RunResults:
    """Load ``run.json`` and ``layers.csv`` of a run directory."""
    path = Path(run_dir)
    if not (path / "run.json").is_file() or not (path / "layers.csv").is_file():
        raise VitdepthError(f"{path} is not a vitdepth run directory (needs run.json and layers.csv); "
                            "create one with vitdepth analyze")
    run = json.loads((path / "run.json").read_text())
    with open(path / "layers.csv", newline="") as f:
        rows = [_parse(r) for r in csv.DictReader(f)]
    return RunResults(path, run, rows)
