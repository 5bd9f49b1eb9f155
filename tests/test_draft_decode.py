"""JPEG draft decoding: the size rule, its measured tolerance, and that nothing else changes.

The bounds are those documented in :func:`vitdepth.data.transforms.draft_size_for` (measured with
``benchmarks/bench_decode.py --tolerance``): in 0..255 pixel units of the final model input, mean absolute
difference <= 0.6 and max <= 20 against full decode + the same transform.
"""

from __future__ import annotations

import csv
import functools
import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from vitdepth._errors import VitdepthError
from vitdepth.data import (
    CallableTransform,
    ImageLoadError,
    PreprocessConfig,
    build_transform,
    create_source,
    iterate_batches,
)
from vitdepth.data.sources import decode_image_bytes, load_image_file
from vitdepth.data.transforms import DRAFT_MARGIN, draft_size_for

MEAN_BOUND = 0.6  # 0..255 units, mean |full - draft| over the model input
MAX_BOUND = 20.0  # 0..255 units, max |full - draft|

DEFAULT = PreprocessConfig((224, 224), crop_pct=0.875)  # timm's default eval config: resize 256, crop 224


def _bench_decode():
    """benchmarks/bench_decode.py, whose picture generator the tolerance was measured with."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_decode.py"
    spec = importlib.util.spec_from_file_location("bench_decode", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: photo-like JPEG bytes (gradients, shapes, fine texture, noise), as in the benchmark that measured the bounds
natural_jpeg = functools.cache(_bench_decode().natural_jpeg)


def pixel_diff(a: torch.Tensor, b: torch.Tensor, cfg: PreprocessConfig | tuple) -> tuple[float, float]:
    """Mean and max |a - b| of two normalised model inputs, in 0..255 pixel units (``cfg``: a config or the std)."""
    std_rgb = cfg.std if isinstance(cfg, PreprocessConfig) else tuple(cfg)
    std = torch.tensor(std_rgb, dtype=torch.float64).view(3, 1, 1)
    d = ((a.double() - b.double()) * std * 255.0).abs()
    return float(d.mean()), float(d.max())


def full_and_draft(data: bytes, cfg: PreprocessConfig, draft: tuple[int, int] | None = None):
    t = build_transform(cfg)
    draft = draft_size_for(t) if draft is None else draft
    full = decode_image_bytes(data, "full")
    small = decode_image_bytes(data, "draft", draft)
    return full, small, t(full), t(small)


# ----------------------------------------------------------------------------------------------------------------
# the size rule


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        (DEFAULT, (512, 512)),  # Resize(256) on the short side
        (PreprocessConfig((224, 224), crop_pct=1.0), (448, 448)),
        (PreprocessConfig((224, 224), crop_pct=0.875, crop_mode="squash"), (512, 512)),
        (PreprocessConfig((224, 224), crop_pct=1.0, crop_mode="border"), (448, 448)),
        (PreprocessConfig((224, 320), crop_pct=0.875), (730, 512)),  # (W, H): ResizeKeepRatio((256, 365))
        (PreprocessConfig((224, 320), crop_pct=0.875, crop_mode="squash"), (730, 512)),
        (PreprocessConfig((384, 384), crop_pct=1.0, interpolation="bilinear"), (768, 768)),
    ],
)
def test_draft_size_is_twice_the_resize_target(cfg, expected):
    assert DRAFT_MARGIN == 2
    assert draft_size_for(build_transform(cfg)) == expected


def test_no_draft_where_the_size_is_unknown_or_unsafe():
    # Nearest does not antialias: full and drafted decodes would sample different pixels.
    assert draft_size_for(build_transform(PreprocessConfig((224, 224), interpolation="nearest"))) is None
    # User callables resize by their own rules.
    fn = CallableTransform(lambda img: torch.zeros(3, 8, 8))
    assert draft_size_for(fn) is None
    assert draft_size_for(lambda img: torch.zeros(3, 8, 8)) is None
    assert draft_size_for(build_transform(DEFAULT).pipeline) is None  # a bare Compose is not an ImageTransform


def test_hf_processors_draft_only_when_their_resize_is_known():
    transformers = pytest.importorskip("transformers")
    from vitdepth.data import HFImageProcessorTransform

    def rule(proc):
        return draft_size_for(HFImageProcessorTransform(proc, "test"))

    assert rule(transformers.ViTImageProcessor()) == (448, 448)  # 224x224 squash
    assert rule(transformers.DeiTImageProcessor()) == (512, 512)  # 256x256, then crop 224
    assert rule(transformers.BitImageProcessor()) == (448, 448)  # short side 224, then crop 224
    assert rule(transformers.ViTImageProcessor(size={"height": 224, "width": 320})) == (640, 448)
    assert rule(transformers.ViTImageProcessor(resample=0)) is None  # nearest
    assert rule(transformers.ConvNextImageProcessor(size={"shortest_edge": 224})) is None  # its own crop_pct rule


def test_hf_processor_draft_stays_within_tolerance():
    transformers = pytest.importorskip("transformers")
    from vitdepth.data import HFImageProcessorTransform

    proc = transformers.BitImageProcessor()
    t = HFImageProcessorTransform(proc, "test")
    data = natural_jpeg(3000, 1000)
    full, small = decode_image_bytes(data, "full"), decode_image_bytes(data, "draft", draft_size_for(t))
    assert small.size == (1500, 500)
    mean, mx = pixel_diff(t(full), t(small), proc.image_std)
    assert 0 < mean <= MEAN_BOUND and mx <= MAX_BOUND, (mean, mx)


# ----------------------------------------------------------------------------------------------------------------
# tolerance


@pytest.mark.parametrize(
    ("cfg", "size"),
    [
        (DEFAULT, (2000, 1500)),
        (DEFAULT, (1500, 2000)),
        (PreprocessConfig((224, 224), crop_pct=1.0), (3000, 1000)),
        (PreprocessConfig((224, 224), crop_pct=0.875, crop_mode="squash"), (1500, 2000)),
        (PreprocessConfig((224, 224), crop_pct=1.0, crop_mode="border"), (2000, 1500)),
        (PreprocessConfig((224, 320), crop_pct=0.875), (1500, 2000)),  # the measured worst case (2.05x)
    ],
)
def test_draft_stays_within_documented_tolerance(cfg, size):
    full, small, a, b = full_and_draft(natural_jpeg(*size), cfg)
    assert small.size[0] < full.size[0] and small.size[1] < full.size[1]  # it was drafted
    draft = draft_size_for(build_transform(cfg))
    assert small.size[0] >= draft[0] and small.size[1] >= draft[1]
    assert a.shape == b.shape == (3, *cfg.input_size)
    mean, mx = pixel_diff(a, b, cfg)
    assert 0 < mean <= MEAN_BOUND and mx <= MAX_BOUND, (mean, mx)


@pytest.mark.parametrize(
    ("cfg", "size"),
    [(DEFAULT, (1024, 768)), (PreprocessConfig((224, 224), crop_pct=1.0), (640, 480))],
)
def test_drafting_to_1x_the_resize_target_breaks_the_bounds(cfg, size):
    # Requesting only the resize target (no 2x margin) leaves the final resize too little to smooth: the bounds
    # above must catch that, else they would not guard the rule.
    target = tuple(v // DRAFT_MARGIN for v in draft_size_for(build_transform(cfg)))
    full, small, a, b = full_and_draft(natural_jpeg(*size), cfg, draft=target)
    assert small.size[0] < full.size[0]
    mean, mx = pixel_diff(a, b, cfg)
    assert mean > MEAN_BOUND or mx > MAX_BOUND, (mean, mx)


# ----------------------------------------------------------------------------------------------------------------
# what drafting leaves alone


@pytest.mark.parametrize("size", [(300, 400), (640, 480), (1024, 768)])
def test_jpegs_below_twice_the_target_decode_bit_identically(size):
    data = natural_jpeg(*size)
    full = decode_image_bytes(data, "full")
    small = decode_image_bytes(data, "draft", draft_size_for(build_transform(DEFAULT)))
    assert small.size == full.size
    np.testing.assert_array_equal(np.asarray(small), np.asarray(full))


def test_camera_mpo_jpeg_is_drafted_like_a_jpeg():
    img = Image.open(io.BytesIO(natural_jpeg(2000, 1500))).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, "MPO", save_all=True, append_images=[img.resize((200, 150))])
    assert Image.open(io.BytesIO(buf.getvalue())).format == "MPO"
    small = decode_image_bytes(buf.getvalue(), "mpo", (512, 512))
    assert small.size == (1000, 750) and small.mode == "RGB"


def test_truncated_jpeg_still_fails_when_drafted():
    data = natural_jpeg(2000, 1500)
    with pytest.raises(ImageLoadError, match="truncated"):
        decode_image_bytes(data[: len(data) // 2], "cut.jpg", (512, 512))


def test_png_and_none_are_unaffected(tmp_path):
    jpeg = Image.open(io.BytesIO(natural_jpeg(2000, 1500)))
    png = tmp_path / "big.png"
    jpeg.save(png)
    draft = draft_size_for(build_transform(DEFAULT))
    full = load_image_file(str(png))
    drafted = load_image_file(str(png), draft)
    assert drafted.size == full.size == (2000, 1500)
    np.testing.assert_array_equal(np.asarray(drafted), np.asarray(full))
    # draft_size=None is today's full decode.
    jpg = tmp_path / "big.jpg"
    jpg.write_bytes(natural_jpeg(2000, 1500))
    with Image.open(jpg) as img:
        reference = np.asarray(img.convert("RGB"))
    np.testing.assert_array_equal(np.asarray(load_image_file(str(jpg), None)), reference)
    np.testing.assert_array_equal(np.asarray(load_image_file(str(jpg))), reference)


# ----------------------------------------------------------------------------------------------------------------
# sources and the loader


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A folder source: two large JPEGs (drafted), a small JPEG and a large PNG (both decoded in full)."""
    root = tmp_path_factory.mktemp("draft") / "tree"
    files = {
        "a/big1.jpg": natural_jpeg(1200, 1100, seed=1),
        "a/small.jpg": natural_jpeg(400, 300, seed=2),
        "b/big2.jpg": natural_jpeg(1100, 1600, seed=3),
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    Image.open(io.BytesIO(natural_jpeg(1200, 1000, seed=4))).save(root / "b" / "big.png")
    return root


def _stack(source, transform, **kwargs) -> torch.Tensor:
    batches = list(iterate_batches(source, np.arange(len(source)), transform, batch_size=2, **kwargs))
    assert not any(b.skipped for b in batches)
    return torch.cat([b.images for b in batches])


def test_loader_draft_is_the_same_with_and_without_workers(tree):
    src = create_source(f"folder:{tree}")
    t = build_transform(DEFAULT)
    draft = draft_size_for(t)
    full = torch.stack([t(Image.open(p).convert("RGB")) for p in src._paths])
    # No draft_size, and draft_size=None: today's pixels exactly.
    assert torch.equal(_stack(src, t), full)
    assert torch.equal(_stack(src, t, draft_size=None), full)
    drafted0 = _stack(src, t, draft_size=draft)
    drafted2 = _stack(src, t, draft_size=draft, num_workers=2)
    assert torch.equal(drafted0, drafted2)
    names = [p.rsplit("/", 1)[-1] for p in src._paths]
    for k, name in enumerate(names):
        if name.startswith("big") and name.endswith(".jpg"):
            mean, mx = pixel_diff(drafted0[k], full[k], DEFAULT)
            assert 0 < mean <= MEAN_BOUND and mx <= MAX_BOUND, (name, mean, mx)
        else:  # small JPEG and PNG: untouched
            assert torch.equal(drafted0[k], full[k]), name


def test_load_draft_on_each_file_source(tree, tmp_path):
    draft = (512, 512)
    big = natural_jpeg(1200, 1100, seed=1)
    # folder and csv
    folder = create_source(f"folder:{tree}")
    i = folder._paths.index(str(tree / "a" / "big1.jpg"))
    assert folder.load(i).size == (1200, 1100)
    assert folder.load_draft(i, draft).size == (600, 550)
    assert folder.load_draft(i, None).size == (1200, 1100)
    table = tmp_path / "t.csv"
    with open(table, "w", newline="") as f:
        csv.writer(f).writerows([["path", "label"], [str(tree / "a" / "big1.jpg"), "x"]])
    assert create_source(f"csv:{table}").load_draft(0, draft).size == (600, 550)
    # wds: KEY.jpg + KEY.cls members of a tar shard
    shard = tmp_path / "shard.tar"
    with tarfile.open(shard, "w") as tf:
        for name, data in (("k0.jpg", big), ("k0.cls", b"1")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    src = create_source(f"wds:{shard}")
    assert src.load(0).size == (1200, 1100)
    assert src.load_draft(0, draft).size == (600, 550)
    # Sources holding decoded pixels ignore the draft.
    syn = create_source("synthetic:n=2,size=64")
    np.testing.assert_array_equal(np.asarray(syn.load_draft(0, (8, 8))), np.asarray(syn.load(0)))


def test_load_draft_on_hf_dataset(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    big = natural_jpeg(1200, 1100, seed=1)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    ds = datasets.Dataset.from_dict({"image": [{"bytes": big, "path": None}], "label": [1]}, features=features)
    ds.save_to_disk(str(tmp_path / "saved"))
    src = create_source(f"hf-dataset:{tmp_path / 'saved'}")
    assert src.load(0).size == (1200, 1100)
    assert src.load_draft(0, (512, 512)).size == (600, 550)


@pytest.mark.parametrize("bad", [(0, 10), (10,), "512", (1.5, 2), (True, 3)])
def test_iterate_batches_refuses_a_bad_draft_size(bad):
    src = create_source("synthetic:n=2,size=16")
    t = build_transform(PreprocessConfig((16, 16)))
    with pytest.raises(VitdepthError, match="draft_size"):
        iterate_batches(src, np.arange(2), t, 2, draft_size=bad)


def test_analyze_drafts_large_jpegs_by_default_and_records_it(tmp_path):
    """End to end: a folder of large JPEGs is draft-decoded (run.json says at which size); --no-draft decodes in full;
    the per-image metrics of both runs stay close (the pixels differ within the documented tolerance)."""
    import json

    from conftest import tiny_timm_vit
    from vitdepth.analysis.run import analyze

    for i in range(12):
        d = tmp_path / "imgs" / f"c{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i}.jpg").write_bytes(natural_jpeg(400 + 8 * i, 320, seed=i))
    runs = {}
    for draft in (True, False):
        out = analyze(model=tiny_timm_vit(num_classes=2), data=f"folder:{tmp_path / 'imgs'}",
                      out=str(tmp_path / str(draft)), quiet=True, figures=False, metrics="token_sim", num_workers=0,
                      draft_decode=draft, n_boot=20, n_boot_phases=5, cka_samples=0)
        runs[draft] = (json.loads((out / "run.json").read_text()), np.load(out / "per_image.npz"))
    (meta_d, npz_d), (meta_f, npz_f) = runs[True], runs[False]
    size = meta_d["data"]["draft_decode"]
    assert size is not None and min(size) >= 2 * 32 and meta_f["data"]["draft_decode"] is None
    key = next(k for k in npz_d.files if "token_sim" in k)
    assert not np.array_equal(npz_d[key], npz_f[key])  # drafting really changed the decoded pixels
    np.testing.assert_allclose(npz_d[key], npz_f[key], atol=0.05)
