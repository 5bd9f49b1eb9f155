"""Pooled-feature cache: per token set, one raw fp16 file of shape (n_layers, n_items, d).

Layer-major so a probe reads one layer as one contiguous block. Files are written with
positioned writes rather than a writable memmap, so written pages do not stay mapped into the
process and peak memory does not grow with the number of images (design §7). The files are
plain ``np.memmap``-able arrays; ``meta.json`` records their shapes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

DTYPE = np.float16


class FeatureCache:
    """Write and read pooled features (``cls``, ``mean``) per layer, rows = analysis positions."""

    def __init__(self, directory: Path, layers: dict[str, list[str]], n_items: int, dim: int):
        self.dir = Path(directory)
        self.layers = layers
        self.n_items, self.dim = n_items, dim
        self.row_bytes = dim * np.dtype(DTYPE).itemsize

    @classmethod
    def create(cls, directory: Path, layers: dict[str, list[str]], n_items: int, dim: int) -> FeatureCache:
        """Create empty (zero-filled, sparse) files for every token set."""
        directory.mkdir(parents=True, exist_ok=True)
        cache = cls(directory, layers, n_items, dim)
        for ts, names in layers.items():
            with open(cache.path(ts), "wb") as f:
                f.truncate(len(names) * n_items * cache.row_bytes)
        meta = {"dtype": "float16", "layout": "(layer, item, dim)", "n_items": n_items, "dim": dim,
                "layers": layers}
        (directory / "meta.json").write_text(json.dumps(meta, indent=2))
        return cache

    @classmethod
    def open(cls, directory: Path) -> FeatureCache:
        """Open an existing cache from its ``meta.json``."""
        meta = json.loads((Path(directory) / "meta.json").read_text())
        return cls(Path(directory), meta["layers"], meta["n_items"], meta["dim"])

    def path(self, token_set: str) -> Path:
        """File of one token set."""
        return self.dir / f"{token_set}.f16"

    def write(self, token_set: str, first_row: int, feats: np.ndarray) -> None:
        """Write features (n_layers, B, d) for the contiguous rows first_row … first_row + B − 1."""
        feats = np.ascontiguousarray(feats, dtype=DTYPE)
        n_layers, b, d = feats.shape
        if n_layers != len(self.layers[token_set]) or d != self.dim or first_row + b > self.n_items:
            raise ValueError(f"cache write of shape {feats.shape} at row {first_row} does not fit "
                             f"({len(self.layers[token_set])}, {self.n_items}, {self.dim})")
        fd = os.open(self.path(token_set), os.O_WRONLY)
        try:
            for li in range(n_layers):
                os.pwrite(fd, feats[li].tobytes(), (li * self.n_items + first_row) * self.row_bytes)
        finally:
            os.close(fd)

    def write_rows(self, token_set: str, layer_index: int, first_row: int, rows: np.ndarray) -> None:
        """Write fp16 rows (B, d) of one layer at rows first_row … first_row + B − 1 (shards copied in)."""
        rows = np.ascontiguousarray(rows, dtype=DTYPE)
        if rows.ndim != 2 or rows.shape[1] != self.dim or first_row + len(rows) > self.n_items:
            raise ValueError(f"cache rows of shape {rows.shape} at row {first_row} do not fit ({self.n_items}, "
                             f"{self.dim})")
        fd = os.open(self.path(token_set), os.O_WRONLY)
        try:
            os.pwrite(fd, rows.tobytes(), (layer_index * self.n_items + first_row) * self.row_bytes)
        finally:
            os.close(fd)

    def read_rows(self, token_set: str, layer_index: int, start: int, stop: int) -> np.ndarray:
        """The fp16 rows start … stop − 1 of one layer, as stored."""
        with open(self.path(token_set), "rb") as f:
            f.seek((layer_index * self.n_items + start) * self.row_bytes)
            data = f.read((stop - start) * self.row_bytes)
        return np.frombuffer(data, dtype=DTYPE).reshape(stop - start, self.dim)

    def read(self, token_set: str, layer_index: int, rows: np.ndarray, chunk: int = 4096) -> Iterator[np.ndarray]:
        """Yield float32 features of the given (sorted) rows at one layer, ``chunk`` rows at a time."""
        base = layer_index * self.n_items * self.row_bytes
        with open(self.path(token_set), "rb") as f:
            for start in range(0, len(rows), chunk):
                sel = rows[start:start + chunk]
                lo, hi = int(sel[0]), int(sel[-1]) + 1
                f.seek(base + lo * self.row_bytes)
                block = np.frombuffer(f.read((hi - lo) * self.row_bytes), dtype=DTYPE).reshape(hi - lo, self.dim)
                yield block[sel - lo].astype(np.float32)
