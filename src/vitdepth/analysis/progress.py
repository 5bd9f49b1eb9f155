"""Progress of long work: a bar where someone watches, plain lines in logs, nothing under ``--quiet``.

- A terminal or a Jupyter notebook gets a ``tqdm.auto`` bar (a widget in a notebook) with images/s and ETA.
- Anything else (a log file, CI, a pipe) gets plain lines: one every :data:`LINE_EVERY_S` seconds at most
  and at the end, so a log shows the run is alive without a carriage-return mess.
- Each step after the pass (isi_rec fits, probes, figures, report) is one timed line (:class:`Stages`), so the
  minutes after the pass's bar reaches 100% are never silent.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

#: Seconds between two plain progress lines when nobody watches a bar (logs, CI).
LINE_EVERY_S = 10.0


def _interactive(stream) -> bool:
    """A terminal, or a Jupyter kernel (whose stderr is no TTY but shows tqdm.auto's widget)."""
    if hasattr(stream, "isatty") and stream.isatty():
        return True
    return "ipykernel" in sys.modules


class Progress:
    """``with Progress(total, "analyze") as p: p.update(n)``.

    Args:
        total: items to do.
        label: what is being done (the bar's description).
        unit: the items' unit.
        quiet: show nothing.
        stream: where to write (default: stderr).
        initial: items already done (a resumed run).
    """

    def __init__(self, total: int, label: str, unit: str = "img", quiet: bool = False, stream=None,
                 initial: int = 0):
        self.total, self.label, self.unit = total, label, unit
        self.stream = stream or sys.stderr
        self.done = self._start_done = initial
        self.start = time.perf_counter()
        self._last_line = self.start
        self._bar = None
        self.mode = "off" if quiet else ("bar" if _interactive(self.stream) else "lines")

    def __enter__(self) -> Progress:
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, initial=self.done, desc=self.label, unit=self.unit,
                             file=self.stream, dynamic_ncols=True, smoothing=0.1, leave=True)
        return self

    def update(self, n: int) -> None:
        """Count ``n`` more items."""
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.mode == "lines":
            now = time.perf_counter()
            if now - self._last_line >= LINE_EVERY_S or self.done >= self.total:
                self._last_line = now
                self._line(now)

    def _line(self, now: float) -> None:
        elapsed = now - self.start
        rate = (self.done - self._start_done) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        pct = 100.0 * self.done / max(self.total, 1)
        self.stream.write(f"{self.label}: {self.done}/{self.total} {self.unit} ({pct:.0f}%), {rate:.1f} {self.unit}/s, "
                          f"ETA {eta:.0f}s\n")
        self.stream.flush()

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class Stages:
    """One timed line per step after the pass (``ridge probes ... 1.2s``); silent when quiet.

    ``with stages("probes_s", "ridge probes"): ...`` times the step under ``probes_s`` in
    :attr:`seconds`. The steps after the pass take seconds to minutes each, and output that stays
    silent for that long looks hung, in a terminal, a notebook or a log alike.
    """

    def __init__(self, quiet: bool = False, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = not quiet
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
