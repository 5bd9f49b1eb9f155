"""Checkpoints of the streaming pass, so an interrupted run continues where it stopped (``--resume``).

A checkpoint is one ``.npz`` per rank in the run's partial directory (``checkpoint/rank-R.npz``): every
additive state of the pass (the reconstruction-ISI sums, exactly as held, stored rows included), the per-image
arrays so far (metric curves, finite flags, which images loaded), the data cursor (positions of the rank's shard
done), the skipped images, timings, and the run's fingerprint. The feature cache is not copied: its rows up to
the cursor are already in the cache file, which is flushed to disk before the checkpoint that counts them.

Writes are atomic: the archive is written to a temporary name, flushed and renamed over the previous one, so
a process killed at any instant leaves either the previous checkpoint or the new one, never a torn file.
Loading uses ``np.load(allow_pickle=False)``: a checkpoint never runs code.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np

from .._errors import VitdepthError
from ..outputs import CHECKPOINT_DIR, FAULT_ENV

_META = "__meta__"


def checkpoint_file(run_tmp: Path, rank: int) -> Path:
    """The checkpoint archive of one rank."""
    return Path(run_tmp) / CHECKPOINT_DIR / f"rank-{rank}.npz"


def shard_cache_dir(run_tmp: Path, rank: int) -> Path:
    """Where a rank other than 0 keeps the feature cache of its shard (rank 0 writes the run's own cache)."""
    return Path(run_tmp) / CHECKPOINT_DIR / f"rank-{rank}-cache"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(path: Path, meta: dict, arrays: dict[str, np.ndarray], flush: list[Path] = ()) -> None:
    """Write ``meta`` (JSON-able) and ``arrays`` to ``path`` atomically, after flushing the files in ``flush``.

    The files in ``flush`` (the feature cache) hold rows the checkpoint counts as done, so they reach the disk
    first. A small ``.json`` beside the archive says how far the run got, for messages (the archive is the truth).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    for f in flush:
        _fsync(f)
    tmp = path.with_name(path.name + ".tmp")
    payload = {_META: np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays}
    with open(tmp, "wb") as f:
        np.savez(f, **payload)
        f.flush()
        os.fsync(f.fileno())
    _fault("kill-mid-checkpoint", meta)
    os.replace(tmp, path)
    _fsync(path.parent)
    about = {k: meta[k] for k in ("done", "total", "pass_complete", "resume_command") if k in meta}
    about["world_size"] = meta.get("fingerprint", {}).get("world_size", 1)
    about["saved"] = time.strftime("%Y-%m-%d %H:%M:%S")
    info = path.with_suffix(".json")
    info.with_name(info.name + ".tmp").write_text(json.dumps(about))
    os.replace(info.with_name(info.name + ".tmp"), info)
    _fault("kill-after-checkpoint", meta)


def load_checkpoint(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """``(meta, arrays)`` of a checkpoint written by :func:`save_checkpoint`."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(arrays.pop(_META).tobytes().decode())
    except (OSError, ValueError, KeyError) as e:
        raise VitdepthError(f"the checkpoint {path} cannot be read ({type(e).__name__}: {e}); pass --overwrite to "
                            "start the run over") from None
    return meta, arrays


def checkpoint_about(run_tmp: Path) -> dict | None:
    """What rank 0's checkpoint says about the run's progress (for messages), or None."""
    info = checkpoint_file(run_tmp, 0).with_suffix(".json")
    try:
        return json.loads(info.read_text())
    except (OSError, ValueError):
        return {} if checkpoint_file(run_tmp, 0).is_file() else None


#: What a resumed run must share with the interrupted one, with the option that sets it (for the message).
FINGERPRINT_NAMES = {
    "model": "the model or its weights", "data": "the data", "selection": "the selected images (--samples, --seed)",
    "splits": "the train/val/test splits", "metrics": "--metrics / --probe", "seed": "--seed",
    "dtype": "--dtype", "image_size": "--image-size", "preprocess": "--preprocess", "isi": "the isi_rec settings",
    "batch_size": "--batch-size", "world_size": "the number of processes (torchrun --nproc-per-node)",
}


def fingerprint_difference(saved: dict, now: dict) -> str | None:
    """A one-line description of the first setting that differs between two fingerprints, or None."""
    for key, what in FINGERPRINT_NAMES.items():
        if saved.get(key) != now.get(key):
            a, b = _short(saved.get(key)), _short(now.get(key))
            return f"{what} differ: the interrupted run had {a}, this command has {b}"
    return None


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


def _fault(step: str, meta: dict) -> None:
    """Test hook: ``VITDEPTH_FAULT_INJECT=kill-after-checkpoint:N`` kills the process with SIGKILL at that step of
    the N-th checkpoint it writes (counted from 1 within one process)."""
    spec = os.environ.get(FAULT_ENV, "")
    name, _, count = spec.partition(":")
    if name == step and count.isdigit() and meta.get("written_by_process") == int(count):
        os.kill(os.getpid(), signal.SIGKILL)
