"""Never lose a user's files or a finished run (issue 10, items 1-5, 12, 15, 17): sentinels must survive."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vitdepth import VitdepthError, cli
from vitdepth.outputs import FAULT_ENV, MARKER, OutputDir

VITDEPTH = [sys.executable, "-m", "vitdepth"]
FAST = ["--data", "digits", "--samples", "60", "--metrics", "core", "--quiet"]


def _cli(*args, cwd=None, env=None, timeout=300):
    return subprocess.run([*VITDEPTH, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def _one_line_error(proc):
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("vitdepth: error")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_file_model):
    """Two small completed runs of the shipped-format tiny model."""
    root = tmp_path_factory.mktemp("runs")
    for name in ("a", "b"):
        proc = _cli("analyze", f"file:{tiny_file_model}", *FAST, "--out", str(root / name))
        assert proc.returncode == 0, proc.stderr
    return root


def test_compare_overwrite_in_a_folder_with_the_inputs_keeps_everything(runs, tmp_path):
    """Item 1: `compare A B --out . --overwrite` in the inputs' folder must not empty it."""
    (runs / "thesis.tex").write_text("precious")
    proc = _cli("compare", "a", "b", "--out", ".", "--overwrite", cwd=runs)
    assert "current directory" in _one_line_error(proc)
    assert (runs / "thesis.tex").read_text() == "precious" and (runs / "a" / "run.json").is_file()


@pytest.mark.parametrize("target", ["input", "user_folder", "parent_of_input"])
def test_compare_overwrite_never_replaces_an_input_or_a_user_folder(runs, tmp_path, target):
    """Item 2: --overwrite replaces only vitdepth's own complete comparison."""
    user = tmp_path / "thesis"
    user.mkdir()
    (user / "thesis.tex").write_text("precious")
    out = {"input": runs / "a", "user_folder": user, "parent_of_input": runs}[target]
    proc = _cli("compare", str(runs / "a"), str(runs / "b"), "--out", str(out), "--overwrite")
    _one_line_error(proc)
    assert (user / "thesis.tex").read_text() == "precious"
    assert (runs / "a" / "run.json").is_file() and (runs / "b" / "layers.csv").is_file()


def test_compare_overwrite_replaces_its_own_output_but_not_a_users_file_in_it(runs, tmp_path):
    out = tmp_path / "cmp"
    assert _cli("compare", str(runs / "a"), str(runs / "b"), "--out", str(out)).returncode == 0
    assert json.loads((out / MARKER).read_text())["complete"] is True
    assert _cli("compare", str(runs / "a"), str(runs / "b"), "--out", str(out), "--overwrite").returncode == 0
    (out / "notes.md").write_text("mine")
    proc = _cli("compare", str(runs / "a"), str(runs / "b"), "--out", str(out), "--overwrite")
    assert "notes.md" in _one_line_error(proc)
    assert (out / "notes.md").read_text() == "mine"


def test_demo_never_deletes_a_users_file(tmp_path):
    """Item 3: `vitdepth demo --out D` with a user's notes in D/compare keeps them (and refuses)."""
    d = tmp_path / "D"
    (d / "compare").mkdir(parents=True)
    (d / "compare" / "notes.md").write_text("mine")
    proc = _cli("demo", "--out", str(d), "--quiet")
    _one_line_error(proc)
    assert (d / "compare" / "notes.md").read_text() == "mine"


def test_two_analyze_runs_to_one_out_cannot_both_succeed(tiny_file_model, tmp_path):
    """Item 4: started together, exactly one writes the directory; the other fails in one line naming the holder."""
    out = tmp_path / "race"
    procs = [subprocess.Popen([*VITDEPTH, "analyze", f"file:{tiny_file_model}", *FAST, "--out", str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0 and codes[1] != 0, results
    loser = next(err for code, err in results if code != 0)
    assert "Traceback" not in loser
    assert "being written by another vitdepth command" in loser or "already exists" in loser
    assert json.loads((out / MARKER).read_text())["kind"] == "run"
    assert not list(tmp_path.glob(".race.*"))


def test_lock_names_the_holder(tmp_path):
    out = tmp_path / "x"
    with OutputDir(out, "run"):
        with pytest.raises(VitdepthError, match=rf"being written by another vitdepth command \(pid {os.getpid()}"):
            with OutputDir(out, "run"):
                pass


@pytest.mark.parametrize("step", ["after-swap", "after-rename"])
def test_kill_during_the_swap_loses_nothing(tiny_file_model, tmp_path, step):
    """Item 5: a kill inside --overwrite's swap leaves a complete run at --out, which compare accepts; the next
    command on that output removes the leftovers."""
    out = tmp_path / "run"
    # only the killed command needs its own process; the others run in this one (a process start costs seconds)
    assert cli.main(["analyze", f"file:{tiny_file_model}", *FAST, "--out", str(out)]) == 0
    env = {**os.environ, FAULT_ENV: step}
    proc = _cli("analyze", f"file:{tiny_file_model}", *FAST, "--out", str(out), "--overwrite", env=env)
    assert proc.returncode == 137
    assert json.loads((out / MARKER).read_text())["complete"] is True
    assert cli.main(["compare", str(out), str(out), "--out", str(tmp_path / "cmp"), "--quiet"]) == 0
    assert cli.main(["analyze", f"file:{tiny_file_model}", *FAST, "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / MARKER).read_text())["complete"] is True
    assert not list(tmp_path.glob(".run.*")), list(tmp_path.glob(".run.*"))


def test_moved_aside_output_comes_back(tmp_path):
    """Without an atomic exchange, a kill after the old output was moved aside: the next command restores it."""
    out = tmp_path / "r"
    with OutputDir(out, "run") as od:
        (od.tmp / "x").write_text("old")
        od.commit()
    out.rename(tmp_path / ".r.old-999999999")  # a dead pid's moved-aside output
    with OutputDir(out, "run", overwrite=True):
        pass  # entering recovers; not committing leaves the old one in place
    assert (out / "x").read_text() == "old" and not list(tmp_path.glob(".r.*"))


def test_stale_partial_of_a_dead_process_is_removed(tmp_path):
    out = tmp_path / "r"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f".r.partial-{dead}"
    stale.mkdir()
    (stale / MARKER).write_text("{}")
    with OutputDir(out, "run") as od:
        (od.tmp / "x").write_text("1")
        od.commit()
    assert not stale.exists() and (out / "x").is_file()


@pytest.mark.parametrize("case", ["file", "symlink", "readonly", "proc"])
def test_bad_out_fails_before_loading_anything(tmp_path, case):
    """Item 15: --out that is a file, a symlink, unwritable or under /proc: one line, before the model loads."""
    if case == "file":
        out = tmp_path / "f"
        out.write_text("precious")
    elif case == "symlink":
        real = tmp_path / "real"
        real.mkdir()
        out = tmp_path / "link"
        out.symlink_to(real)
    elif case == "readonly":
        blocker = tmp_path / "blocker"
        blocker.write_text("a file where a directory would have to be")
        out = blocker / "sub" / "run"
    else:
        out = Path("/proc/vitdepth-test/run")
    t0 = time.perf_counter()
    proc = _cli("analyze", "timm:vit_large_patch16_224", "--random-init", *FAST, "--out", str(out), "--overwrite")
    _one_line_error(proc)
    assert time.perf_counter() - t0 < 60  # a ViT-L was never built
    if case == "file":
        assert out.read_text() == "precious"


def test_disk_full_is_one_line(tmp_path, monkeypatch):
    import shutil as _shutil

    from vitdepth.outputs import check_writable

    monkeypatch.setattr(_shutil, "disk_usage", lambda p: _shutil._ntuple_diskusage(100, 99, 1))
    with pytest.raises(VitdepthError, match="not enough disk space"):
        check_writable(tmp_path / "out", need_bytes=10 << 20)


@pytest.mark.parametrize("args, needle", [
    (["--seed", "-1"], "--seed"), (["--seed", "99999999999999999999"], "--seed"),
    (["--samples", "0"], "--samples"), (["--samples", "-5"], "--samples"), (["--batch-size", "0"], "--batch-size"),
])
def test_bad_numbers_are_one_line(args, needle, tmp_path):
    """Item 12."""
    proc = _cli("analyze", "timm:vit_tiny_patch16_224", "--random-init", "--out", str(tmp_path / "o"), *args)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and needle in proc.stderr
    assert not (tmp_path / "o").exists()


def test_unexpected_error_is_one_line_with_debug_hint(monkeypatch, capsys):
    from vitdepth import cli

    def boom(_args):
        raise ZeroDivisionError("division by zero somewhere deep")

    monkeypatch.setattr(cli, "_cmd_models", boom)
    assert cli.main(["models"]) == 1
    err = capsys.readouterr().err
    assert "unexpected ZeroDivisionError: division by zero somewhere deep" in err and "--debug" in err
    assert "Traceback" not in err
    with pytest.raises(ZeroDivisionError):
        cli.main(["--debug", "models"])


def test_incomplete_run_is_refused_by_load_run(tmp_path):
    import shutil

    from vitdepth.results import load_run

    with OutputDir(tmp_path / "r", "run") as od:
        (od.tmp / "run.json").write_text("{}")
        (od.tmp / "layers.csv").write_text("model,layer\n")
        other = tmp_path / "elsewhere" / ".r.partial-1"  # another process's run in progress
        shutil.copytree(od.tmp, other)
        with pytest.raises(VitdepthError, match="incomplete vitdepth run"):
            load_run(other)


def test_disk_full_mid_run_is_one_line_and_leaves_nothing(monkeypatch, tmp_path):
    import errno

    from conftest import tiny_timm_vit
    from vitdepth.analysis.run import AnalyzeConfig, analyze
    from vitdepth.models import tap_module

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("vitdepth.analysis.run.create_model", lambda *a, **k: tap_module(tiny_timm_vit(), "t"))
    monkeypatch.setattr("vitdepth.analysis.run.write_layers", full)
    with pytest.raises(VitdepthError, match=r"disk full while writing .* free") as err:
        analyze(AnalyzeConfig(model="timm:t", data="digits", samples=60, out=str(tmp_path / "o"), quiet=True,
                              figures=False, metrics="core"))
    assert "\n" not in str(err.value)
    assert not list(tmp_path.iterdir())


def test_train_holds_a_lock_on_its_out(tmp_path, monkeypatch):
    """A second `vitdepth train` on the same --out fails in one line naming the holder."""
    from vitdepth.outputs import OutputLock
    from vitdepth.train.loop import TrainConfig, train

    out = tmp_path / "fam"
    with OutputLock(out):
        with pytest.raises(VitdepthError, match="being written by another vitdepth command"):
            train(TrainConfig(recipe="digits", out=str(out), sizes=["S"], epochs=1, samples=200, max_steps=1,
                              quiet=True, monitor=False))
