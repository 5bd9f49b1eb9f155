"""Output directories that never lose a user's files or a finished run.

Every directory vitdepth writes (a run, a comparison, a demo, a training family) goes through
:class:`OutputDir`, which does what careful command-line tools do (git, rsync):

- **checks first**, before any expensive work: the location is not a file, a symlink, the current
  directory, an ancestor of the current directory, one of the command's inputs or an ancestor of one; its
  parent is writable and has room for what the command will write (when the command knows it);
- **a lock**: an exclusive ``flock`` on ``.NAME.lock`` beside the output for as long as the command writes
  it, so a second command on the same output fails at once naming the holder (pid, command, start time);
- **a marker**: a complete output carries :data:`MARKER` (``.vitdepth-output.json``: kind, version, the
  list of files vitdepth wrote). ``--overwrite`` replaces only a directory whose marker is complete and
  of the same kind, and refuses when it holds files vitdepth did not write (a user's ``notes.md``);
- **an atomic swap**: the new output is built in ``.NAME.partial-PID`` (a resumable output, a run, in
  ``.NAME.partial``, where an interrupted run keeps its checkpoint until ``--resume``); on commit it is
  exchanged with the old one in one step (Linux ``renameat2(RENAME_EXCHANGE)``), so the output path always
  holds a complete output, and the old one is removed last. Where the exchange is not available the old output is moved
  aside to ``.NAME.old-PID``, the new one renamed in, and the old one removed last. A process killed in
  between leaves stale directories; the next command on the same output removes them (or moves an old
  output back whose new one never arrived).

Directories written before markers existed (a ``run.json`` by vitdepth, or a ``compare.json``) count as
complete outputs of their kind and list no files: replacing them still refuses unknown files by name
(those that are not one of the kind's own names).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from . import __version__
from ._errors import VitdepthError

MARKER = ".vitdepth-output.json"
KINDS = ("run", "compare", "demo", "train", "align")
#: Names a kind writes at its top level (used for directories written before the marker existed).
LEGACY_NAMES = {
    "run": {"run.json", "layers.csv", "layers.parquet", "per_image.npz", "cache", "figures", "phases.json",
            "report.html"},
    "compare": {"compare.json", "figures", "report.html"},
    "demo": {"S", "B", "L", "compare"},
}
#: Environment variable naming a step of :meth:`OutputDir.commit` at which to kill the process (tests only).
FAULT_ENV = "VITDEPTH_FAULT_INJECT"
#: Folder of a resumable output's partial directory that holds the checkpoint of its work so far.
CHECKPOINT_DIR = "checkpoint"
#: Partial directories this process is writing (their own incomplete results may be read back meanwhile).
_WRITING: set[Path] = set()


def is_own_partial(path: Path) -> bool:
    """Whether ``path`` is a partial directory this process is writing right now."""
    return Path(os.path.abspath(path)) in _WRITING


def partial_dir(out: str | os.PathLike) -> Path:
    """Where a resumable output (a run) is built, and kept with its checkpoint when interrupted."""
    out = Path(os.path.abspath(out))
    return out.parent / f".{out.name}.partial"


def has_checkpoint(partial: Path) -> bool:
    """Whether a partial directory holds a checkpoint to resume from (any rank's: under torchrun a rank that
    was stopped before its first checkpoint starts its share again, the others continue theirs)."""
    return any((partial / CHECKPOINT_DIR).glob("rank-*.npz"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_marker(path: Path) -> dict | None:
    """The marker of an output directory, or None (legacy run / compare directories get a synthetic one)."""
    marker = path / MARKER
    if marker.is_file():
        try:
            data = json.loads(marker.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return data if isinstance(data, dict) else None
    run = path / "run.json"
    if run.is_file():
        try:
            data = json.loads(run.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if isinstance(data, dict) and "vitdepth_version" in data:
            return {"kind": "run", "complete": True, "legacy": True}
    if (path / "compare.json").is_file():
        return {"kind": "compare", "complete": True, "legacy": True}
    parts = [path / name for name in LEGACY_NAMES["demo"]]
    if all(p.is_dir() and read_marker(p) is not None for p in parts):
        return {"kind": "demo", "complete": True, "legacy": True}
    return None


def is_vitdepth_output(path: Path) -> bool:
    """Whether ``path`` is a directory vitdepth wrote (complete or not); data scans skip these."""
    return path.is_dir() and ((path / MARKER).is_file() or read_marker(path) is not None)


def _files(root: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = Path(dirpath).relative_to(root)
        out += [(rel / f).as_posix() for f in sorted(filenames) if not (rel == Path(".") and f == MARKER)]
    return out


def _unknown_files(path: Path, marker: dict) -> list[str]:
    if marker.get("legacy"):
        allowed = LEGACY_NAMES.get(marker["kind"], set())
        unknown = sorted(e.name for e in os.scandir(path) if e.name not in allowed)
        if marker["kind"] == "demo":  # its parts are legacy runs and a comparison: look inside them too
            for name in sorted(allowed):
                part = read_marker(path / name)
                unknown += [f"{name}/{f}" for f in _unknown_files(path / name, part)] if part else [name]
        return unknown
    written = set(marker.get("files", []))
    return [f for f in _files(path) if f not in written]


def check_writable(location: Path, need_bytes: int = 0, what: str = "--out") -> None:
    """Check that a directory can be created at ``location`` with ``need_bytes`` of room, before the work.

    Raises:
        VitdepthError: naming the location, what is wrong and the fix.
    """
    parent = location.parent
    while not parent.exists():  # the first existing ancestor is where the directories will be created
        parent = parent.parent
    if not parent.is_dir():
        raise VitdepthError(f"{what} {location}: {parent} is not a directory; choose another {what}")
    probe = parent / f".vitdepth-write-test-{os.getpid()}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as e:
        raise VitdepthError(f"{what} {location} cannot be written ({os.strerror(e.errno) if e.errno else e} in "
                            f"{parent}); choose a writable location") from None
    if need_bytes:
        free = shutil.disk_usage(parent).free
        if free < need_bytes:
            raise VitdepthError(f"{what} {location}: not enough disk space (needs {_size(need_bytes)}, "
                                f"{_size(free)} free on {parent}); free space or choose another {what}")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def disk_full_error(e: OSError, location: Path, need_bytes: int | None = None) -> VitdepthError:
    """One line for ENOSPC while writing ``location``."""
    try:
        free = _size(shutil.disk_usage(location if location.exists() else location.parent).free)
    except OSError:
        free = "unknown"
    need = f"needs about {_size(need_bytes)}, " if need_bytes else ""
    return VitdepthError(f"disk full while writing {location} ({need}{free} free); free space or choose another "
                         "location")


class OutputLock:
    """An exclusive ``flock`` on ``.NAME.lock`` beside an output, for as long as a command writes it.

    A second command on the same output fails at once with one line naming the holder (pid, host, command, start
    time). The lock file is removed on release; a command that opened it just before is detected by its inode and
    retries on the new file, so two holders can never coexist.

    Args:
        out: the output path.
        flag: the option that names it, for messages.
    """

    def __init__(self, out: str | os.PathLike, flag: str = "--out") -> None:
        self.given = Path(out)
        self.out = Path(os.path.abspath(self.given))
        self.flag = flag
        self.lock_path = self.out.parent / f".{self.out.name}.lock"
        self._lock_fd: int | None = None

    def __enter__(self) -> OutputLock:
        self._acquire()
        return self

    def __exit__(self, *exc) -> None:
        self._release()

    def _acquire(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                self._busy(fd, e)
            try:  # the holder before us may have unlinked the file after we opened it: lock the current one
                if os.fstat(fd).st_ino == os.stat(self.lock_path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:300],
                "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._lock_fd = fd

    def _busy(self, fd: int, e: OSError) -> None:
        """Raise the one-line 'held by' error (or re-raise an unexpected lock failure)."""
        if e.errno not in (errno.EAGAIN, errno.EACCES):
            os.close(fd)
            raise e
        try:
            holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        except (ValueError, OSError):
            holder = {}
        os.close(fd)
        who = (f"pid {holder.get('pid')} on {holder.get('host')}, `{holder.get('command')}`, since "
               f"{holder.get('started')}") if holder else "another process"
        raise VitdepthError(f"{self.flag} {self.given} is being written by another vitdepth command ({who}); "
                            "wait for it or choose another directory") from None

    def _release(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None
            try:
                self.lock_path.unlink()
            except OSError:
                pass


class OutputDir:
    """One output directory being written: checks, lock, partial directory, atomic commit (module docstring).

    Example::

        with OutputDir(out, "run", overwrite=cfg.overwrite, inputs=[data_root]) as od:
            write_everything_into(od.tmp)
            od.commit()   # without commit, the partial directory is removed on exit

    Args:
        out: the output directory.
        kind: one of :data:`KINDS`.
        overwrite: replace an existing complete output of the same kind (and discard an interrupted one's
            checkpoint).
        inputs: paths the command reads (an input is never replaced, nor an ancestor of one).
        need_bytes: room the command needs (checked against the free space).
        flag: the option that names the output, for messages.
        resumable: build in ``.NAME.partial`` (:func:`partial_dir`) and keep it when the work stops with a
            checkpoint in it (:attr:`keep_checkpoint`), so a later command can continue it.
        resume: continue the interrupted work in the partial directory (which must hold a checkpoint).
    """

    def __init__(self, out: str | os.PathLike, kind: str, overwrite: bool = False, inputs=(),
                 need_bytes: int = 0, flag: str = "--out", resumable: bool = False, resume: bool = False) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.given = Path(out)
        self.kind, self.overwrite, self.flag = kind, overwrite, flag
        self.inputs = [Path(p) for p in inputs if p]
        self.need_bytes = need_bytes
        self.out = Path(os.path.abspath(self.given))
        self.lock = OutputLock(self.out, flag)
        self.resumable, self.resume = resumable or resume, resume
        self.tmp = (partial_dir(self.out) if self.resumable
                    else self.out.parent / f".{self.out.name}.partial-{os.getpid()}")
        #: set by the command when it stops in a way a resume can continue (interrupted, crashed, disk full)
        self.keep_checkpoint = False
        self._committed = False

    # -- checks -----------------------------------------------------------------------------------------------
    def check(self) -> None:
        """Every check that needs no lock (also run by :meth:`__enter__`)."""
        out, flag = self.out, self.flag
        if self.given.is_symlink():
            raise VitdepthError(f"{flag} {self.given} is a symbolic link; pass the directory it points to, or "
                                "another path")
        if out.exists() and not out.is_dir():
            raise VitdepthError(f"{flag} {self.given} is a file, not a directory; choose another {flag}")
        cwd = Path.cwd().resolve()
        real = out.resolve()
        if real == cwd or real in cwd.parents:
            raise VitdepthError(f"{flag} {self.given} is the current directory or one of its parents; vitdepth never "
                                f"replaces it: choose a new directory for {flag}")
        for p in self.inputs:
            rp = Path(os.path.abspath(p)).resolve()
            if rp == real or real in rp.parents:
                raise VitdepthError(f"{flag} {self.given} is an input of this command ({p}) or holds one; choose "
                                    f"another {flag}")
        if out.exists():
            if not self.overwrite:
                raise VitdepthError(f"{flag} {self.given} already exists; pass --overwrite to replace it or choose "
                                    f"another {flag}")
            self._check_replaceable()
        if self.resumable:
            self._check_resume()
        check_writable(out, self.need_bytes, flag)

    def _check_resume(self) -> None:
        """--resume needs a checkpoint; a new run does not silently discard one."""
        waiting = has_checkpoint(self.tmp)
        if self.resume and not waiting:
            raise VitdepthError(f"--resume: there is no interrupted {self.kind} to resume at {self.given} (no "
                                f"checkpoint in {self.tmp}); drop --resume to start it")
        if waiting and not self.resume and not self.overwrite:
            about = _checkpoint_progress(self.tmp)
            raise VitdepthError(f"{self.flag} {self.given} has an interrupted {self.kind} waiting to be resumed"
                                f"{about}; pass --resume to continue it, or --overwrite to discard it and start over")

    def _check_replaceable(self) -> None:
        marker = read_marker(self.out)
        if marker is None:
            if not any(self.out.iterdir()):
                return  # an empty directory holds nothing to lose
            raise VitdepthError(f"{self.flag} {self.given} exists and was not written by vitdepth (no {MARKER}); "
                                "--overwrite only replaces vitdepth's own outputs: choose another directory")
        if marker.get("kind") != self.kind:
            raise VitdepthError(f"{self.flag} {self.given} is a vitdepth {marker.get('kind')} directory, not a "
                                f"{self.kind}; --overwrite only replaces the same kind: choose another directory")
        if not marker.get("complete"):
            raise VitdepthError(f"{self.flag} {self.given} is an incomplete vitdepth {self.kind}; remove it yourself "
                                "or choose another directory")
        unknown = _unknown_files(self.out, marker)
        if unknown:
            shown = ", ".join(unknown[:3]) + (f" (+{len(unknown) - 3} more)" if len(unknown) > 3 else "")
            raise VitdepthError(f"{self.flag} {self.given} holds files vitdepth did not write ({shown}); move them "
                                "out or choose another directory (--overwrite never deletes them)")

    # -- stale state ----------------------------------------------------------------------------------------
    def _recover(self) -> None:
        """Clean up after killed processes (we hold the lock, so nobody else is writing this output)."""
        parent, name = self.out.parent, self.out.name
        for entry in sorted(parent.glob(f".{name}.old-*")):
            pid = entry.name.rsplit("-", 1)[-1]
            if pid.isdigit() and _pid_alive(int(pid)) and int(pid) != os.getpid():
                continue
            if not self.out.exists():
                entry.rename(self.out)  # the new output never arrived: the old one comes back
            elif read_marker(entry) is not None:
                shutil.rmtree(entry, ignore_errors=True)
        for entry in sorted(parent.glob(f".{name}.partial-*")):
            pid = entry.name.rsplit("-", 1)[-1]
            if pid.isdigit() and (not _pid_alive(int(pid)) or int(pid) == os.getpid()):
                shutil.rmtree(entry, ignore_errors=True)

    def __enter__(self) -> OutputDir:
        self.check()
        self.lock.__enter__()
        try:
            self._recover()
            self.check()  # again under the lock: another command may have finished meanwhile
            # the resumable partial directory: nobody else holds the lock, so it is ours to keep (--resume) or to
            # remove (stale, or a checkpoint that --overwrite discards; check() refused the other cases)
            if self.resumable and self.tmp.exists() and not (self.resume and has_checkpoint(self.tmp)):
                shutil.rmtree(self.tmp)
            if not self.tmp.exists():
                self.tmp.mkdir(parents=True)
            (self.tmp / MARKER).write_text(json.dumps(self._marker(complete=False)))
        except BaseException:
            self.lock.__exit__(None, None, None)
            raise
        _WRITING.add(self.tmp)
        return self

    def _marker(self, complete: bool) -> dict:
        return {"kind": self.kind, "complete": complete, "vitdepth_version": __version__, "pid": os.getpid(),
                "created": time.strftime("%Y-%m-%d %H:%M:%S"), "files": _files(self.tmp) if complete else []}

    def commit(self) -> Path:
        """Mark the partial directory complete and swap it in atomically; returns the output path."""
        shutil.rmtree(self.tmp / CHECKPOINT_DIR, ignore_errors=True)  # the work is done: nothing left to resume
        (self.tmp / MARKER).write_text(json.dumps(self._marker(complete=True)))
        if not self.out.exists():
            os.rename(self.tmp, self.out)
        else:
            self._check_replaceable()  # nothing appeared in it while we worked
            if _exchange(self.tmp, self.out):
                # one atomic step: the output path now holds the new output and the partial path the old one, which
                # a kill here leaves as a stale partial directory (removed by the next command on this output)
                _fault("after-swap")
                shutil.rmtree(self.tmp)
            else:  # no RENAME_EXCHANGE (not Linux, or the filesystem lacks it): old aside, new in, old removed last
                old = self.out.parent / f".{self.out.name}.old-{os.getpid()}"
                os.rename(self.out, old)
                _fault("after-swap")
                os.rename(self.tmp, self.out)
                shutil.rmtree(old)
        _fault("after-rename")
        self._committed = True
        return self.given

    def __exit__(self, *exc) -> None:
        _WRITING.discard(self.tmp)
        try:
            if not self._committed and not (self.keep_checkpoint and has_checkpoint(self.tmp)):
                shutil.rmtree(self.tmp, ignore_errors=True)
        finally:
            self.lock.__exit__(None, None, None)


def _checkpoint_progress(partial: Path) -> str:
    """`` (640/2000 images done, saved 2026-12-02 09:10:00)`` from a checkpoint's note, or ``""``."""
    try:
        about = json.loads((partial / CHECKPOINT_DIR / "rank-0.json").read_text())
    except (OSError, ValueError):
        return ""
    if about.get("pass_complete"):
        return f" (the pass is done, saved {about.get('saved')})"
    if "done" in about and "total" in about:
        share = " of rank 0's share" if about.get("world_size", 1) > 1 else ""
        return f" ({about['done']}/{about['total']} images{share} done, saved {about.get('saved')})"
    return ""


def interrupted_run_message(out: Path) -> str | None:
    """For a run path that does not exist but has an interrupted run waiting: what to say instead, else None."""
    partial = partial_dir(out)
    if not has_checkpoint(partial):
        return None
    try:
        command = json.loads((partial / CHECKPOINT_DIR / "rank-0.json").read_text()).get("resume_command")
    except (OSError, ValueError):
        command = None
    how = f"resume it with: {command}" if command else "resume it with the same command and --resume"
    return f"{out} is an interrupted vitdepth run{_checkpoint_progress(partial)}, not a finished one; {how}"


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with Linux's ``renameat2(RENAME_EXCHANGE)``; False where that is not available.

    Hand-written (ctypes) because the standard library has no atomic exchange of two directories.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _fault(step: str) -> None:
    if os.environ.get(FAULT_ENV) == step:
        os._exit(137)  # as SIGKILL would: no cleanup
