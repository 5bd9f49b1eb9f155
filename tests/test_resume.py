"""Resumable runs, out-of-memory retries and torchrun sharding (issue 12).

Every interrupted run here is resumed and compared with one uninterrupted run of the same command: layers.csv
byte for byte, phases.json with the measured latencies taken out ("timings aside").
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from vitdepth import VitdepthError
from vitdepth.cli import main as cli_main
from vitdepth.outputs import FAULT_ENV, partial_dir

VITDEPTH = [sys.executable, "-m", "vitdepth"]
# 150 digits in batches of 10: 15 batches, every metric family (phases need the probe curves)
RUN = ["--data", "digits", "--samples", "150", "--batch-size", "10", "--quiet"]


def _analyze(model, out, *extra, env=None, timeout=300):
    cmd = [*VITDEPTH, "analyze", f"file:{model}", *RUN, "--out", str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def _env(**kv):
    return {**os.environ, **kv}


def _phases_without_timings(run_dir: Path) -> dict:
    """phases.json with what a clock measured taken out (the latencies of the truncation estimate)."""
    phases = json.loads((run_dir / "phases.json").read_text())
    if phases.get("truncation"):
        phases["truncation"] = {k: v for k, v in phases["truncation"].items()
                                if not k.startswith("latency_") or k == "latency_source"}
    phases["recommendations"] = [re.sub(r"\(\d+% measured latency\)", "(latency)", r)
                                 for r in phases.get("recommendations", [])]
    return phases


def _assert_same_run(a: Path, b: Path) -> None:
    assert (a / "layers.csv").read_bytes() == (b / "layers.csv").read_bytes()
    assert _phases_without_timings(a) == _phases_without_timings(b)


@pytest.fixture(scope="module")
def reference(tiny_file_model, tmp_path_factory):
    """The uninterrupted run every resumed run must reproduce."""
    out = tmp_path_factory.mktemp("ref") / "ref"
    proc = _analyze(tiny_file_model, out)
    assert proc.returncode == 0, proc.stderr
    return out


def test_sigkill_after_the_first_checkpoint_then_resume_equals_an_uninterrupted_run(tiny_file_model, reference,
                                                                                     tmp_path):
    """Acceptance: SIGKILL (sent from outside) once the first checkpoint exists; --resume finishes the same run."""
    out = tmp_path / "o"
    cmd = [*VITDEPTH, "analyze", f"file:{tiny_file_model}", *RUN, "--out", str(out), "--checkpoint-every", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    note = partial_dir(out) / "checkpoint" / "rank-0.json"
    deadline = time.time() + 240
    while time.time() < deadline and not note.is_file() and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists(), "the run finished before it could be killed"
    done = json.loads(note.read_text())["done"]
    assert 0 < done < 150
    # the interrupted run is refused by compare / load_run, in one line that says how to resume
    cmp = subprocess.run([*VITDEPTH, "compare", str(reference), str(out), "--out", str(tmp_path / "c")],
                         capture_output=True, text=True)
    assert cmp.returncode != 0 and "interrupted vitdepth run" in cmp.stderr and "--resume" in cmp.stderr
    assert "Traceback" not in cmp.stderr and not (tmp_path / "c").exists()
    resumed = _analyze(tiny_file_model, out, "--checkpoint-every", "0", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_run(reference, out)
    assert not partial_dir(out).exists() and not (out / "checkpoint").exists()


@pytest.mark.parametrize("fault", ["kill-mid-checkpoint:2", "kill-after-pass"])
def test_sigkill_at_other_points_then_resume_equals_an_uninterrupted_run(tiny_file_model, reference, tmp_path,
                                                                         fault):
    """Killed while a checkpoint is half-written (the previous one stays valid), or after the pass (the fits
    start again from the pass's checkpoint, without running the model)."""
    out = tmp_path / "o"
    killed = _analyze(tiny_file_model, out, "--checkpoint-every", "0", env=_env(**{FAULT_ENV: fault}))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not out.exists()
    about = json.loads((partial_dir(out) / "checkpoint" / "rank-0.json").read_text())
    assert about["pass_complete"] == (fault == "kill-after-pass")
    resumed = _analyze(tiny_file_model, out, "--checkpoint-every", "0", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_run(reference, out)


def test_sigint_prints_the_resume_line_and_leaves_nothing_compare_accepts(tiny_file_model, reference, tmp_path):
    """Acceptance: SIGINT mid-pass saves a checkpoint, exits 130 with the resume command; compare refuses."""
    out = tmp_path / "o"
    cmd = [*VITDEPTH, "analyze", f"file:{tiny_file_model}", "--data", "digits", "--samples", "600", "--batch-size",
           "10", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = partial_dir(out) / "cache" / "meta.json"  # the pass has begun
    deadline = time.time() + 240
    while time.time() < deadline and not started.is_file() and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    line = [ln for ln in err.splitlines() if "resume with:" in ln]
    assert len(line) == 1 and "interrupted (SIGINT) at " in line[0], err
    command = line[0].split("resume with: ", 1)[1]
    assert command.endswith("--resume") and f"--out {out}" in command
    assert not out.exists()
    cmp = subprocess.run([*VITDEPTH, "compare", str(reference), str(out), "--out", str(tmp_path / "c")],
                         capture_output=True, text=True)
    assert cmp.returncode != 0 and "interrupted vitdepth run" in cmp.stderr
    with pytest.raises(VitdepthError, match="interrupted vitdepth run"):
        from vitdepth.results import load_run

        load_run(partial_dir(out))
    # a new run on the same --out does not silently discard the checkpoint
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 2 and "waiting to be resumed" in again.stderr and "--resume" in again.stderr


@pytest.fixture()
def interrupted(tiny_file_model, tmp_path):
    out = tmp_path / "o"
    killed = _analyze(tiny_file_model, out, "--checkpoint-every", "0",
                      env=_env(**{FAULT_ENV: "kill-after-checkpoint:2"}))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    return out


@pytest.mark.parametrize("change, needle", [
    (["--seed", "1"], "--seed"),
    (["--metrics", "core"], "--metrics"),
    (["--samples", "140"], "selected images"),
    (["--dtype", "bf16"], "--dtype"),
])
def test_resume_refuses_a_different_run_and_keeps_the_checkpoint(tiny_file_model, interrupted, change, needle):
    args = list(RUN)
    if change[0] in args:  # replace an option of RUN
        i = args.index(change[0])
        args[i + 1] = change[1]
    else:
        args += change
    cmd = [*VITDEPTH, "analyze", f"file:{tiny_file_model}", *args, "--out", str(interrupted), "--resume"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--resume refused" in proc.stderr and needle in proc.stderr, proc.stderr
    assert (partial_dir(interrupted) / "checkpoint" / "rank-0.npz").is_file()


def test_overwrite_discards_an_interrupted_run_and_resume_needs_one(tiny_file_model, interrupted, tmp_path):
    proc = _analyze(tiny_file_model, tmp_path / "nothing", "--resume")
    assert proc.returncode == 2 and "no interrupted run to resume" in proc.stderr
    fresh = _analyze(tiny_file_model, interrupted, "--overwrite", "--metrics", "core")
    assert fresh.returncode == 0, fresh.stderr
    assert not partial_dir(interrupted).exists() and (interrupted / "run.json").is_file()


def test_out_of_memory_halves_the_batch_and_changes_no_result(monkeypatch, tmp_path):
    """An injected out-of-memory error at batch sizes above 4 (mid-forward, after some layers' taps ran): the
    batch is retried in halves, a warning says so once, and every result equals the run without it."""
    from conftest import tiny_timm_vit
    from vitdepth.analysis.run import analyze

    kw = dict(data="digits", samples=120, batch_size=16, quiet=True, figures=False)
    plain = analyze(model=tiny_timm_vit(num_classes=10), out=str(tmp_path / "plain"), **kw)
    monkeypatch.setenv(FAULT_ENV, "oom-above:5")
    halved = analyze(model=tiny_timm_vit(num_classes=10), out=str(tmp_path / "halved"), **kw)
    warnings = json.loads((halved / "run.json").read_text())["warnings"]
    oom = [w for w in warnings if "out of memory" in w]
    assert oom == ["out of memory on cpu at batch size 16; continuing with batches of 8",
                   "out of memory on cpu at batch size 8; continuing with batches of 4"]
    a, b = np.load(plain / "per_image.npz"), np.load(halved / "per_image.npz")
    assert a.files == b.files
    for key in a.files:
        if a[key].dtype.kind == "f":
            np.testing.assert_allclose(b[key], a[key], rtol=1e-6, atol=1e-9, err_msg=key)
        else:
            np.testing.assert_array_equal(b[key], a[key], err_msg=key)
    rows_a = {(r["metric"], r["token_set"], r["layer"]): _num(r["value"]) for r in _csv(plain / "layers.csv")}
    rows_b = {(r["metric"], r["token_set"], r["layer"]): _num(r["value"]) for r in _csv(halved / "layers.csv")}
    assert rows_a.keys() == rows_b.keys()
    for k, v in rows_a.items():
        assert rows_b[k] == pytest.approx(v, rel=1e-6, abs=1e-9, nan_ok=True), k


def _num(text: str) -> float:
    return float(text) if text else float("nan")


def _csv(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_torchrun_two_processes_equal_one(tiny_file_model, tmp_path):
    """Acceptance: ``torchrun --nproc-per-node 2`` (gloo, CPU) on 200 digits gives the one-process run: per-image
    metrics and probe accuracies identical, isi_rec within float tolerance (sums added in another order)."""
    args = ["analyze", f"file:{tiny_file_model}", "--data", "digits", "--samples", "200", "--batch-size", "16",
            "--quiet", "--no-self-check"]
    assert cli_main([*args, "--out", str(tmp_path / "one")]) == 0  # in process: the subprocesses are torchrun's
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                "-m", "vitdepth"]
    two = subprocess.run([*torchrun, *args, "--out", str(tmp_path / "two")], capture_output=True, text=True,
                         env=_env(OMP_NUM_THREADS="1"), timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = np.load(tmp_path / "one" / "per_image.npz"), np.load(tmp_path / "two" / "per_image.npz")
    assert a.files == b.files
    for key in a.files:
        np.testing.assert_array_equal(b[key], a[key], err_msg=key)
    rows_a = {(r["metric"], r["token_set"], r["layer"]): r for r in _csv(tmp_path / "one" / "layers.csv")}
    rows_b = {(r["metric"], r["token_set"], r["layer"]): r for r in _csv(tmp_path / "two" / "layers.csv")}
    assert rows_a.keys() == rows_b.keys()
    for k, ra in rows_a.items():
        rb = rows_b[k]
        if k[0] in ("isi_rec", "r2_self", "r2_all"):
            assert float(rb["value"]) == pytest.approx(float(ra["value"]), rel=1e-6, abs=1e-9), k
        else:
            assert (rb["value"], rb["ci_low"], rb["ci_high"], rb["n"]) == \
                (ra["value"], ra["ci_low"], ra["ci_high"], ra["n"]), k
    run = json.loads((tmp_path / "two" / "run.json").read_text())
    assert run["data"]["analyzed"] == 200
    assert not list(tmp_path.glob(".two*"))


def test_torchrun_killed_and_resumed_per_rank_equals_one_process(tiny_file_model, tmp_path):
    """Each rank checkpoints its own share: both workers killed (SIGKILL) after their second checkpoint, the job
    resumed under torchrun with --resume, and the run equals the one-process run."""
    args = ["analyze", f"file:{tiny_file_model}", "--data", "digits", "--samples", "160", "--batch-size", "16",
            "--quiet", "--no-self-check", "--checkpoint-every", "0"]
    assert cli_main([*args, "--out", str(tmp_path / "one")]) == 0  # in process: the subprocesses are torchrun's
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                "-m", "vitdepth"]
    out = tmp_path / "two"
    killed = subprocess.run([*torchrun, *args, "--out", str(out)], capture_output=True, text=True,
                            env=_env(OMP_NUM_THREADS="1", **{FAULT_ENV: "kill-after-checkpoint:2"}), timeout=600)
    assert killed.returncode != 0 and not out.exists()
    # the first rank to reach its second checkpoint dies; torchrun then stops the other one wherever it is
    found = [partial_dir(out) / "checkpoint" / f"rank-{r}.json" for r in (0, 1)]
    notes = [json.loads(f.read_text()) for f in found if f.is_file()]
    assert notes and max(n["done"] for n in notes) == 32 and all(n["world_size"] == 2 for n in notes)
    resumed = subprocess.run([*torchrun, *args, "--out", str(out), "--resume"], capture_output=True, text=True,
                             env=_env(OMP_NUM_THREADS="1"), timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = np.load(tmp_path / "one" / "per_image.npz"), np.load(out / "per_image.npz")
    for key in a.files:
        np.testing.assert_array_equal(b[key], a[key], err_msg=key)
    probe = {(r["token_set"], r["layer"]): r["value"] for r in _csv(tmp_path / "one" / "layers.csv")
             if r["metric"] == "probe_acc"}
    assert probe == {(r["token_set"], r["layer"]): r["value"] for r in _csv(out / "layers.csv")
                     if r["metric"] == "probe_acc"}
