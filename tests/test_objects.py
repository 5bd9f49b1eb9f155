"""Objects in the Python API (issue 11 item 2): a module and a dataset analyzed as objects equal the spec run."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from vitdepth import VitdepthError
from vitdepth.analysis.run import AnalyzeConfig, analyze
from vitdepth.data import DigitsSource, FolderSource, PreprocessConfig, build_transform

FAST = dict(quiet=True, figures=False, metrics="core", n_boot=50, n_boot_phases=10, cka_samples=0)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """60 digits written as an ImageFolder (the spec side), in an order a Dataset can reproduce."""
    root = tmp_path_factory.mktemp("digits") / "imgs"
    src = DigitsSource()
    for i in range(60):
        d = root / f"c{int(src.labels[i])}"
        d.mkdir(parents=True, exist_ok=True)
        src.load(i).save(d / f"{i:04d}.png")
    return root


class PairDataset(torch.utils.data.Dataset):
    """(PIL image, label) pairs, the torchvision convention."""

    def __init__(self, root, transform=None):
        self.src = FolderSource("folder", root)
        self.classes = list(self.src.class_names)
        self.targets = [int(v) for v in self.src.labels]
        self.transform = transform

    def __len__(self):
        return len(self.src)

    def __getitem__(self, i):
        img = self.src.load(i)
        return (self.transform(img) if self.transform else img), self.targets[i]


def _hf_dataset(root):
    datasets = pytest.importorskip("datasets")
    ds = PairDataset(root)
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=ds.classes)})
    return datasets.Dataset.from_dict({"image": [ds.src.load(i) for i in range(len(ds))], "label": ds.targets},
                                      features=feats)


def _values(run_dir):
    with open(run_dir / "layers.csv", newline="") as f:
        return {(r["metric"], r["token_set"], r["layer"]): float(r["value"]) for r in csv.DictReader(f)}


def _assert_same(a, b):
    va, vb = _values(a), _values(b)
    assert va.keys() == vb.keys()
    for k in va:
        assert va[k] == pytest.approx(vb[k], abs=1e-9, nan_ok=True), k


def _data_forms(root, transform=None):
    ds = PairDataset(root, transform)
    return {"dataset": ds, "dataloader": torch.utils.data.DataLoader(ds, batch_size=7),
            "hf_dataset": _hf_dataset(root)}


def test_timm_module_object_equals_the_spec_run(folder, tmp_path):
    from conftest import TINY_TIMM, tiny_timm_vit
    from vitdepth.models.adapters.timm_vit import timm_preprocess
    from vitdepth.models.checkpoint import save_checkpoint

    model = tiny_timm_vit(num_classes=10)
    ckpt = save_checkpoint(model, tmp_path / "ckpt", {"arch": "timm.VisionTransformer",
                                                      "model_args": {**TINY_TIMM, "num_classes": 10},
                                                      "preprocess": timm_preprocess(model).to_dict()})
    spec = analyze(AnalyzeConfig(model=f"file:{ckpt}", data=f"folder:{folder}", out=str(tmp_path / "spec"), **FAST))
    for kind, data in _data_forms(folder).items():
        run = analyze(model=model, data=data, out=str(tmp_path / kind), **FAST)
        _assert_same(spec, run)


def test_hf_module_object_equals_the_spec_run(folder, tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.ViTModel(transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                         intermediate_size=64, image_size=32, patch_size=8)).eval()
    model.save_pretrained(tmp_path / "hf")
    spec = analyze(AnalyzeConfig(model=f"hf:{tmp_path / 'hf'}", data=f"folder:{folder}", out=str(tmp_path / "spec"),
                                 **FAST))
    transform = build_transform(PreprocessConfig(input_size=(32, 32)))  # what the spec run uses without a processor
    for kind, data in _data_forms(folder).items():
        run = analyze(model=model, data=data, transform=transform, out=str(tmp_path / kind), **FAST)
        _assert_same(spec, run)
    # without a transform, PIL data cannot be preprocessed: one line saying what to pass
    with pytest.raises(VitdepthError, match="pass transform="):
        analyze(model=model, data=PairDataset(folder), out=str(tmp_path / "none"), **FAST)


def test_torchvision_module_object_equals_the_spec_run(folder, tmp_path):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.vit_b_16().eval()
    torch.save(model.state_dict(), tmp_path / "w.pth")
    spec = analyze(AnalyzeConfig(model="torchvision:vit_b_16", checkpoint=str(tmp_path / "w.pth"),
                                 data=f"folder:{folder}", samples=20, out=str(tmp_path / "spec"), **FAST))
    weights = torchvision.models.get_model_weights("vit_b_16").DEFAULT
    # the same images preprocessed by the user's own Dataset (tensors are used as given)
    tensors = PairDataset(folder, transform=lambda im: weights.transforms()(im.convert("RGB")))
    run = analyze(model=model, data=tensors, samples=20, out=str(tmp_path / "obj"), **FAST)
    _assert_same(spec, run)


def test_bad_objects_are_one_line(tmp_path):
    with pytest.raises(VitdepthError, match="model must be a spec string"):
        analyze(model=42, data="digits", out=str(tmp_path / "x"), **FAST)
    with pytest.raises(VitdepthError, match="AnalyzeConfig"):
        analyze(model="timm:vit_tiny_patch16_224", bogus=1)


def test_unlabelled_folder_reports_label_free_metrics_only(tmp_path):
    from conftest import tiny_timm_vit

    root = tmp_path / "loose"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / f"{i:03d}.png")
    run = analyze(model=tiny_timm_vit(), data=f"folder:{root}", out=str(tmp_path / "r"), quiet=True, figures=True,
                  n_boot=50, n_boot_phases=10)
    values = _values(run)
    metrics = {m for m, _, _ in values}
    assert "token_sim" in metrics and "isi_attn" in metrics and "isi_rec" in metrics
    assert not metrics & {"probe_acc", "probe_acc_logistic", "nc1", "nc4"}
    import json

    info = json.loads((run / "run.json").read_text())
    assert {"probe_acc", "nc1"} <= set(info["metrics"]["not_applicable"])
    assert any("no labels" in w for w in info["warnings"])
    assert (run / "report.html").is_file() and (run / "phases.json").is_file()


def test_hf_module_from_pretrained_brings_its_image_processor(folder, tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    d = tmp_path / "hfp"
    transformers.ViTModel(transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                 intermediate_size=64, image_size=32, patch_size=8)).save_pretrained(d)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(d)
    model = transformers.ViTModel.from_pretrained(d).eval()
    spec = analyze(AnalyzeConfig(model=f"hf:{d}", data=f"folder:{folder}", out=str(tmp_path / "spec"), **FAST))
    run = analyze(model=model, data=PairDataset(folder), out=str(tmp_path / "obj"), **FAST)
    _assert_same(spec, run)
    import json

    record = json.loads((run / "run.json").read_text())["model"]
    assert record["transform"]["kind"] == "hf_image_processor" and len(record["parameters_sha256"]) == 64
