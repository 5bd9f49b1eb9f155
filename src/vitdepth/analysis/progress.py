"""A small progress line (items/s, ETA) on a terminal; silent when quiet or not a TTY."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Progress:
    """``with Progress(total, "analyze") as p: p.update(n)``."""

    def __init__(self, total: int, label: str, unit: str = "img", quiet: bool = False, stream=None):
        self.total, self.label, self.unit = total, label, unit
        self.stream = stream or sys.stderr
        self.enabled = not quiet and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.done = 0
        self.start = time.perf_counter()
        self._last = 0.0

    def __enter__(self) -> Progress:
        return self

    def update(self, n: int) -> None:
        """Count ``n`` more items and redraw at most ~10 times a second."""
        self.done += n
        now = time.perf_counter()
        if self.enabled and (now - self._last > 0.1 or self.done >= self.total):
            self._last = now
            elapsed = now - self.start
            rate = self.done / elapsed if elapsed > 0 else 0.0
            eta = (self.total - self.done) / rate if rate > 0 else float("nan")
            width = 24
            filled = int(width * self.done / max(self.total, 1))
            bar = "#" * filled + "." * (width - filled)
            self.stream.write(f"\r{self.label} [{bar}] {self.done}/{self.total} {self.unit} "
                              f"{rate:6.1f} {self.unit}/s ETA {eta:5.0f}s ")
            self.stream.flush()

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


class Stages:
    """One line per post-pass step (``ridge probes ... 1.2s``) on a terminal; silent when quiet or not a TTY.

    ``with stages("probes_s", "ridge probes"): ...`` times the step under ``probes_s`` in
    :attr:`seconds`. The steps after the pass take seconds each, and a terminal that stays silent
    for that long looks hung.
    """

    def __init__(self, quiet: bool = False, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = not quiet and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.seconds: dict[str, float] = {}  # key -> wall time of every finished step (for run.json)

    @contextmanager
    def __call__(self, key: str, label: str) -> Iterator[None]:
        start = time.perf_counter()
        if self.enabled:
            self.stream.write(f"{label} ...")
            self.stream.flush()
        try:
            yield
        finally:
            self.seconds[key] = time.perf_counter() - start
            if self.enabled:
                self.stream.write(f" {self.seconds[key]:.1f}s\n")
                self.stream.flush()
