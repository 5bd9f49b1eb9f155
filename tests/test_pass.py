"""The streaming pass: merging partial states, the feature cache, batch-size invariance."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from conftest import tiny_timm_vit
from vitdepth.analysis.cache import FeatureCache
from vitdepth.analysis.layer_metrics import PER_IMAGE_IDS, per_image_values
from vitdepth.analysis.run import AnalyzeConfig, analyze
from vitdepth.metrics import PerImageCurves
from vitdepth.models.adapters.timm_vit import wrap_timm
from vitdepth.models.checkpoint import save_checkpoint

TINY16 = dict(img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=2, num_classes=10)


def _curves_from(tm, images, rows, n):
    curves = PerImageCurves(list(PER_IMAGE_IDS), n, len(tm.layer_names))

    def sink(t):
        for m, v in per_image_values(t, tm.has_cls).items():
            curves.update(m, t.position, rows, v)

    with torch.no_grad():
        tm.run(images, sink)
    return curves


def test_partial_states_merged_equal_one_pass():
    tm = wrap_timm(tiny_timm_vit(), "test", {})
    x = torch.randn(10, 3, 32, 32)
    full = _curves_from(tm, x, np.arange(10), 10)
    a = _curves_from(tm, x[:3], np.arange(3), 10)
    b = _curves_from(tm, x[3:], np.arange(3, 10), 10)
    merged = a.merge(b)
    for m in PER_IMAGE_IDS:
        np.testing.assert_allclose(merged.values[m], full.values[m], rtol=1e-6, atol=1e-9, equal_nan=True)
        assert not np.isnan(merged.values[m][:, 2:]).any()  # every block layer filled


def test_chunked_attention_metrics_do_not_depend_on_the_chunk_size(monkeypatch):
    """The pass computes attention a few images at a time; any chunking gives the whole-batch values."""
    from vitdepth.analysis import layer_metrics
    from vitdepth.metrics import functional as F
    from vitdepth.metrics.attention_graph import attention_graph
    from vitdepth.models import taps

    tm = wrap_timm(tiny_timm_vit(reg_tokens=2), "test", {})
    x = torch.randn(7, 3, 32, 32)
    with torch.no_grad():
        _, layers = tm.capture(x)
    orig = taps.QueryKey.row_chunks
    for t in layers[2:]:
        whole = {**F.isi_attention(t.x_in, t.x_mid, t.attn),
                 **attention_graph(t.attn, t.num_prefix, t.grid, True)}
        for elements in (1, 3 * t.attn[0].numel(), 1 << 30):  # one image, three images (uneven), everything
            monkeypatch.setattr(taps.QueryKey, "row_chunks", lambda self, e=elements: orig(self, e))
            got = layer_metrics.per_image_values(t, True)
            for key, ref in whole.items():
                torch.testing.assert_close(got[key], ref, atol=1e-6, rtol=0, msg=f"{key}, chunk {elements}")


def test_nonfinite_activations_are_flagged_per_layer(tmp_path, tiny16):
    """A NaN in the weights of block 2 makes layers 2..L non-finite for every image; run.json says so."""
    import json

    from safetensors.torch import load_file, save_file

    bad = tmp_path / "nan_ckpt"
    bad.mkdir()
    for f in tiny16.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    sd = load_file(bad / "model.safetensors")
    sd["blocks.1.mlp.fc2.bias"][0] = float("nan")
    save_file(sd, bad / "model.safetensors")
    out = analyze(AnalyzeConfig(model=f"file:{bad}", data="digits", samples=60, out=str(tmp_path / "run"),
                                quiet=True, figures=False, metrics="core"))
    run = json.loads((out / "run.json").read_text())
    flagged = {w.split(":")[0] for w in run["warnings"] if "NaN/Inf" in w}
    assert flagged == {"layer 2", "layer 3"}
    assert all("60 images" in w for w in run["warnings"] if "NaN/Inf" in w)
    probed = {layer for (metric, ts, layer) in _table(out) if metric == "probe_acc" and ts == "mean"}
    assert probed == {"pre", "0", "1"}  # layers 2 and 3 have no finite features left: no rows, never zeros
    # the console summary shows every layer, marks the non-finite ones and prints the warnings (issue 10, item 18)
    from vitdepth.analysis.run import summarize

    text = summarize(out)
    lines = {ln.split()[0]: ln for ln in text.splitlines() if ln.strip() and ln.split()[0] in ("2", "3")}
    assert set(lines) == {"2", "3"} and all("NaN/Inf" in ln for ln in lines.values())
    assert "layers 2, 3 hold NaN/Inf activations" in text and "warning: layer 2:" in text


def test_feature_cache_round_trip(tmp_path):
    layers = {"mean": ["pre", "0", "1"], "cls": ["0", "1"]}
    cache = FeatureCache.create(tmp_path / "c", layers, n_items=9, dim=4)
    rng = np.random.default_rng(0)
    truth = {ts: rng.standard_normal((len(names), 9, 4)).astype(np.float16) for ts, names in layers.items()}
    for start, stop in ((0, 4), (4, 5), (5, 9)):  # uneven contiguous writes
        for ts in layers:
            cache.write(ts, start, truth[ts][:, start:stop])
    reopened = FeatureCache.open(tmp_path / "c")
    rows = np.array([1, 2, 5, 8])
    for ts, names in layers.items():
        for li in range(len(names)):
            got = np.concatenate(list(reopened.read(ts, li, rows, chunk=3)))
            np.testing.assert_array_equal(got, truth[ts][li, rows].astype(np.float32))
    mm = np.memmap(tmp_path / "c" / "mean.f16", dtype=np.float16, mode="r", shape=(3, 9, 4))
    np.testing.assert_array_equal(mm, truth["mean"])


@pytest.fixture(scope="module")
def tiny16(tmp_path_factory):
    d = tmp_path_factory.mktemp("ck") / "tiny16"
    pre = {"input_size": [16, 16], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear"}
    save_checkpoint(tiny_timm_vit(**TINY16), d, {"arch": "timm.VisionTransformer", "model_args": TINY16,
                                                 "preprocess": pre})
    return d


def _table(run_dir):
    with open(run_dir / "layers.csv") as f:
        return {(r["metric"], r["token_set"], r["layer"]): r for r in csv.DictReader(f)}


def test_batch_size_does_not_change_results(tmp_path, tiny16):
    runs = []
    for bs in (7, 64):
        out = analyze(AnalyzeConfig(model=f"file:{tiny16}", data="digits", samples=150, batch_size=bs,
                                    out=str(tmp_path / f"bs{bs}"), quiet=True, figures=False))
        runs.append(_table(out))
    assert runs[0].keys() == runs[1].keys()
    for key, r in runs[0].items():
        s = runs[1][key]
        for col in ("value", "ci_low", "ci_high"):
            a, b = (float(v) if v else float("nan") for v in (r[col], s[col]))
            assert a == pytest.approx(b, rel=1e-5, abs=1e-6, nan_ok=True), (key, col)
        assert r["n"] == s["n"]


def test_decoding_workers_do_not_change_results(tmp_path, tiny16):
    """A folder of image files decoded in this process (0 workers) or in 2 DataLoader workers: the same run."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(36):
        d = tmp_path / "imgs" / f"c{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20 + i % 5, 24, 3), dtype=np.uint8)).save(d / f"{i}.png")
    runs = {}
    for workers in (0, 2):
        out = analyze(AnalyzeConfig(model=f"file:{tiny16}", data=f"folder:{tmp_path / 'imgs'}", batch_size=8,
                                    out=str(tmp_path / f"w{workers}"), quiet=True, figures=False, num_workers=workers,
                                    n_boot=50, n_boot_phases=10, cka_samples=0))
        runs[workers] = (_table(out), np.load(out / "per_image.npz"))
    (rows0, npz0), (rows2, npz2) = runs[0], runs[2]
    assert rows0.keys() == rows2.keys() and len(rows0) > 20
    for key, r in rows0.items():
        assert {c: r[c] for c in ("value", "ci_low", "ci_high", "n")} == \
            {c: rows2[key][c] for c in ("value", "ci_low", "ci_high", "n")}, key
    assert npz0.files == npz2.files
    for k in npz0.files:
        np.testing.assert_array_equal(npz0[k], npz2[k], err_msg=k)


def test_logistic_probes_in_head_groups_equal_one_group(tmp_path, tiny16, monkeypatch):
    """Bounding the features held by the logistic probes (one head at a time) changes no result."""
    from vitdepth.analysis import run as run_mod

    def logistic(out):
        return {k: (r["value"], r["n"]) for k, r in _table(out).items() if k[0] == "probe_acc_logistic"}

    cfg = dict(model=f"file:{tiny16}", data="digits", samples=120, quiet=True, figures=False, metrics="core",
               probe="logistic")
    together = logistic(analyze(AnalyzeConfig(out=str(tmp_path / "one"), **cfg)))
    monkeypatch.setattr(run_mod, "LOGISTIC_FEATURE_BYTES", 1)  # one head per optimiser run
    apart = logistic(analyze(AnalyzeConfig(out=str(tmp_path / "many"), **cfg)))
    assert len(together) == 9 and together == apart  # mean: pre, 0..3; cls: 0..3
