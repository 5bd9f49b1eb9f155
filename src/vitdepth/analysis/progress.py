"""A small progress line (items/s, ETA) on a terminal; silent when quiet or not a TTY."""

from __future__ import annotations

import sys
import time


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
