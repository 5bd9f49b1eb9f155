"""--metrics: groups, ids and errors; `--metrics all` on a Hugging Face ViT and a folder writes every
metric id of docs/metrics.md; a model without [CLS] reports the CLS metrics as not applicable."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitdepth import VitdepthError
from vitdepth.cli import main
from vitdepth.metrics.catalog import METRICS, resolve_metrics

DOCS = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"


def _folder(root: Path) -> Path:
    rng = np.random.default_rng(1)
    for ci, c in enumerate(("a", "b", "c")):
        (root / c).mkdir(parents=True)
        for i in range(30):
            arr = np.clip(rng.normal(60 + 70 * ci, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.png")
    return root


def test_docs_list_every_metric_and_are_current():
    import subprocess
    import sys

    ids = set(re.findall(r"^### `([a-z0-9_]+)`", DOCS.read_text(), flags=re.M))
    assert ids == set(METRICS)
    gen = Path(__file__).resolve().parents[1] / "tools" / "gen_metrics_doc.py"
    before = DOCS.read_text()
    subprocess.run([sys.executable, str(gen)], check=True, capture_output=True)
    assert DOCS.read_text() == before, "docs/metrics.md is stale: run tools/gen_metrics_doc.py"


def test_metric_groups_and_errors():
    core, paper, every = resolve_metrics("core"), resolve_metrics("paper"), resolve_metrics("all")
    causal = resolve_metrics("interventions")
    assert core < paper < every == frozenset(METRICS) - causal
    # the default is `all` without the logistic probe (seconds of fixed work; the ridge probe is always on)
    assert resolve_metrics(None) == resolve_metrics("") == every - {"probe_acc_logistic"}
    assert "probe_acc_logistic" in every and "probe_acc" in resolve_metrics(None)
    assert causal and all("interventions" in METRICS[m].groups for m in causal)
    assert "lens_kl" in every and "cls_swap_acc" not in every  # extra forwards only when asked for
    assert "isi_rec" in paper and "isi_rec" not in core and "probe_acc_logistic" not in paper
    assert resolve_metrics("core,nc1") == core | {"nc1"}
    with pytest.raises(VitdepthError, match="did you mean isi_rec"):
        resolve_metrics("isi_reck")


def test_metrics_all_on_hf_vit_and_folder_writes_every_documented_id(hf_dirs, tmp_path):
    data = _folder(tmp_path / "imgs")
    out = tmp_path / "run"
    assert main(["analyze", f"hf:{hf_dirs['vit']}", "--data", f"folder:{data}", "--metrics", "all", "--out", str(out),
                 "--interventions", "cls", "--quiet"]) == 0
    rows = list(csv.DictReader(open(out / "layers.csv")))
    documented = set(re.findall(r"^### `([a-z0-9_]+)`", DOCS.read_text(), flags=re.M))
    assert {r["metric"] for r in rows} == documented
    run = json.loads((out / "run.json").read_text())
    assert run["metrics"]["isi_rec"]["seed"] == 0 and run["metrics"]["not_applicable"] == []
    nc = [r for r in rows if r["metric"] == "nc1"]
    assert {r["token_set"] for r in nc} == {"cls", "mean"}
    # NC1 is undefined (empty) only where all class means coincide: the [CLS] token at layer 0 is the same
    # learned vector for every image
    assert all(float(r["value"]) >= 0 for r in nc if r["value"] != "")
    assert {(r["token_set"], r["layer"]) for r in nc if r["value"] == ""} <= {("cls", "0")}


def test_model_without_cls_reports_cls_metrics_not_applicable(tmp_path):
    from conftest import tiny_timm_vit
    from vitdepth.models.checkpoint import save_checkpoint

    args = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=10, class_token=False,
                global_pool="avg")
    ck = tmp_path / "nocls"
    save_checkpoint(tiny_timm_vit(**args), ck, {"arch": "timm.VisionTransformer", "model_args": args})
    out = tmp_path / "run"
    assert main(["analyze", f"file:{ck}", "--data", "digits", "--samples", "150", "--metrics", "paper",
                 "--out", str(out), "--quiet"]) == 0
    rows = list(csv.DictReader(open(out / "layers.csv")))
    metrics = {r["metric"] for r in rows}
    assert not metrics & {"cls_patch_sim", "cls_centrality", "cls_self"}
    assert "attn_consensus" in metrics and {r["token_set"] for r in rows if r["metric"] == "probe_acc"} == {"mean"}
    run = json.loads((out / "run.json").read_text())
    assert set(run["metrics"]["not_applicable"]) == {"cls_patch_sim", "cls_centrality", "cls_self"}
