"""The CLI end to end, and every bad-input path: one line, non-zero exit, nothing left behind."""

from __future__ import annotations

import csv
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_timm_vit
from vitdepth.cli import main
from vitdepth.models.checkpoint import save_checkpoint

TINY16 = dict(img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=2, num_classes=10)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A tiny file: checkpoint (16 px, patch 4) the test writes itself."""
    d = tmp_path_factory.mktemp("ckpt") / "tiny"
    model = tiny_timm_vit(**TINY16)
    pre = {"input_size": [16, 16], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear", "crop_pct": 1.0}
    save_checkpoint(model, d, {"arch": "timm.VisionTransformer", "model_args": TINY16, "preprocess": pre})
    return d


def _write_folder(root: Path, classes=("cat", "dog", "eel"), per_class=12, size=20) -> Path:
    rng = np.random.default_rng(0)
    for ci, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            arr = (rng.random((size, size, 3)) * 80 + ci * 80).astype(np.uint8)
            ext = "png" if i % 2 else "jpg"
            Image.fromarray(arr).save(root / c / f"{i}.{ext}")
    return root


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(".") and "partial" in p.name]


def test_analyze_digits_end_to_end(tmp_path, tiny_ckpt, capsys):
    out = tmp_path / "run"
    code, stdout, stderr = _run(["analyze", f"file:{tiny_ckpt}", "--data", "digits", "--samples", "300",
                                 "--out", str(out), "--batch-size", "64", "--figure-format", "png,pdf"], capsys)
    assert code == 0, stderr
    assert "best mean probe" in stdout and str(out) in stdout
    for f in ("run.json", "layers.csv", "layers.parquet", "per_image.npz", "cache/meta.json", "cache/mean.f16",
              "cache/cls.f16", "figures/similarity.png", "figures/isi.png", "figures/probe.png", "phases.json",
              "report.html", "figures/collapse.png", "figures/attention.png", "figures/isi_rec.pdf"):
        assert (out / f).is_file(), f
    run = json.loads((out / "run.json").read_text())
    assert run["data"]["analyzed"] == 300 and sum(run["data"]["splits"].values()) == 300
    assert run["model"]["weights"]["source"] == "file"
    assert run["model"]["layers"] == ["pre", "0", "1", "2", "3"]
    rows = list(csv.DictReader(open(out / "layers.csv")))
    assert list(rows[0]) == ["model", "layer", "depth", "metric", "token_set", "value", "ci_low", "ci_high", "n"]
    got = {(r["metric"], r["token_set"], r["layer"]) for r in rows}
    for layer in ("pre", "0", "1", "2", "3"):
        assert ("token_sim", "", layer) in got and ("probe_acc", "mean", layer) in got
    assert ("probe_acc", "cls", "pre") not in got and ("probe_acc", "cls", "0") in got
    assert ("isi_attn", "", "0") not in got and ("isi_attn", "", "3") in got
    from vitdepth.metrics import METRICS

    for r in rows:
        if METRICS[r["metric"]].kind == "split":  # statistics of the whole test split carry no CI
            assert r["ci_low"] == r["ci_high"] == ""
            continue
        assert float(r["ci_low"]) <= float(r["value"]) + 1e-12 <= float(r["ci_high"]) + 2e-12
        if r["layer"] == "pre":
            assert float(r["depth"]) == pytest.approx(-1 / 3)
    per_image = np.load(out / "per_image.npz")
    assert per_image["token_sim"].shape == (300, 5)
    ts_mean = np.nanmean(per_image["token_sim"], axis=0)
    csv_ts = {r["layer"]: float(r["value"]) for r in rows if r["metric"] == "token_sim"}
    np.testing.assert_allclose([csv_ts[x] for x in ("pre", "0", "1", "2", "3")], ts_mean, rtol=1e-12)
    # a random-init model on digits still decodes the class well above chance (10 classes)
    best = max(float(r["value"]) for r in rows if r["metric"] == "probe_acc")
    assert best > 0.5


def test_analyze_folder_with_unreadable_files(tmp_path, tiny_ckpt, capsys):
    data = _write_folder(tmp_path / "imgs")
    (data / "cat" / "broken.png").write_bytes(b"not an image at all")
    good = data / "dog" / "1.png"
    (data / "dog" / "truncated.png").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    out = tmp_path / "run"
    code, _, stderr = _run(["analyze", f"file:{tiny_ckpt}", "--data", f"folder:{data}", "--out", str(out),
                            "--quiet"], capsys)
    assert code == 0, stderr
    run = json.loads((out / "run.json").read_text())
    skipped = sorted(Path(s["item"]).name for s in run["data"]["skipped"])
    assert skipped == ["broken.png", "truncated.png"]
    assert run["data"]["analyzed"] == 36
    assert any("skipped" in w for w in run["warnings"])
    # one summary line on the console (issue 10, item 19)
    code, stdout, _ = _run(["analyze", f"file:{tiny_ckpt}", "--data", f"folder:{data}", "--out",
                            str(tmp_path / "loud")], capsys)
    assert code == 0 and "warning: 2 unreadable images were skipped" in stdout
    # --strict fails naming the file, and leaves nothing behind
    out2 = tmp_path / "strict"
    code, _, stderr = _run(["analyze", f"file:{tiny_ckpt}", "--data", f"folder:{data}", "--out", str(out2),
                            "--quiet", "--strict"], capsys)
    assert code == 2 and ("broken.png" in stderr or "truncated.png" in stderr)
    assert not out2.exists() and not _leftovers(tmp_path)


class _NotAStateDict:
    def __init__(self):
        self.weights = torch.zeros(2)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {_Evil.marker}",))


def _bad_inputs(tmp_path: Path, tiny_ckpt: Path):
    other = tmp_path / "other.pth"
    torch.save(tiny_timm_vit(embed_dim=48).state_dict(), other)
    obj = tmp_path / "obj.pth"
    torch.save({"model": _NotAStateDict()}, obj)
    _Evil.marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump(_Evil(), f)
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    single = _write_folder(tmp_path / "single", classes=("only",))
    exists = tmp_path / "exists"
    code = main(["analyze", f"file:{tiny_ckpt}", "--data", "digits", "--samples", "60", "--out", str(exists),
                 "--quiet"])
    assert code == 0
    m = ["--random-init"]
    return [
        (["timm:vit_tiny_patch16_22", *m], "digits", "did you mean timm:vit_tiny_patch16_224"),
        (["tim:vit_tiny_patch16_224", *m], "digits", "did you mean timm:vit_tiny_patch16_224"),
        (["vit_tiny_patch16_224"], "digits", "timm:vit_tiny_patch16_224"),
        (["timm:vit_tiny_patch16_224", "--checkpoint", str(other)], "digits", "does not fit"),
        (["timm:vit_tiny_patch16_224", "--checkpoint", str(obj)], "digits", "not a plain state dict"),
        (["timm:vit_tiny_patch16_224", "--checkpoint", str(evil)], "digits", "not a plain state dict"),
        (["timm:vit_tiny_patch16_224", "--checkpoint", str(tmp_path / "nope.pth")], "digits", "does not exist"),
        (["timm:vit_tiny_patch16_224"], "digits", "--random-init"),
        ([f"file:{tmp_path / 'missing'}"], "digits", "does not exist"),
        ([f"file:{tiny_ckpt}"], f"folder:{tmp_path / 'missing'}", "does not exist"),
        ([f"file:{tiny_ckpt}"], f"folder:{empty}", "no images"),
        ([f"file:{tiny_ckpt}"], f"folder:{single}", "single-class"),
        ([f"file:{tiny_ckpt}"], "digitz", "digits"),
        ([f"file:{tiny_ckpt}", "--out-exists"], "digits", "already exists"),
    ], exists


def test_bad_input_errors(tmp_path, tiny_ckpt, capsys, monkeypatch):
    from huggingface_hub import constants

    # timm's pretrained weights are looked up in an empty cache with downloads off (the offline-miss line)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    cases, exists = _bad_inputs(tmp_path, tiny_ckpt)
    capsys.readouterr()
    for i, (model_args, data, expected) in enumerate(cases):
        if "--out-exists" in model_args:
            model_args, out = model_args[:-1], exists
        else:
            out = tmp_path / f"out{i}"
        code, stdout, stderr = _run(["analyze", *model_args, "--data", data, "--out", str(out), "--quiet"], capsys)
        assert code == 2, (model_args, data, stderr)
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("vitdepth: error: "), stderr
        assert expected in lines[0], (expected, lines[0])
        if out != exists:
            assert not out.exists(), f"{out} left behind for {model_args} {data}"
        assert not _leftovers(tmp_path)
    assert not (tmp_path / "pwned").exists(), "the pickle ran code"
    assert (exists / "run.json").is_file()  # the existing run was not touched


def test_overwrite_replaces_run(tmp_path, tiny_ckpt, capsys):
    out = tmp_path / "run"
    for _ in range(2):
        code, _, stderr = _run(["analyze", f"file:{tiny_ckpt}", "--data", "digits", "--samples", "60",
                                "--out", str(out), "--quiet", "--overwrite"], capsys)
        assert code == 0, stderr
    assert json.loads((out / "run.json").read_text())["data"]["analyzed"] == 60


def test_runs_are_deterministic(tmp_path, tiny_ckpt, capsys):
    for name in ("a", "b"):
        assert main(["analyze", f"file:{tiny_ckpt}", "--data", "synthetic:size=16", "--samples", "80",
                     "--out", str(tmp_path / name), "--quiet", "--seed", "3"]) == 0
    assert (tmp_path / "a" / "layers.csv").read_text() == (tmp_path / "b" / "layers.csv").read_text()


def test_console_script_models_and_timm_random_init(tmp_path):
    exe = Path(sys.executable).with_name("vitdepth")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "vitdepth"]
    listing = subprocess.run([*cmd, "models"], capture_output=True, text=True, check=True).stdout
    for prefix in ("timm:", "hf:", "file:", "digits", "synthetic", "folder:"):
        assert prefix in listing
    out = tmp_path / "r"
    res = subprocess.run([*cmd, "analyze", "timm:vit_tiny_patch16_224", "--random-init", "--data", "digits",
                          "--samples", "100", "--out", str(out), "--batch-size", "50"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["weights"] == {"source": "random-init", "seed": 0}
    assert run["model"]["depth"] == 12 and len(run["model"]["layers"]) == 14
