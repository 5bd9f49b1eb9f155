"""Tests for vitdepth.data: sources, splits, transforms and batching (no models, no downloads)."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from vitdepth._errors import VitdepthError
from vitdepth.data import (
    SPLITS,
    Batch,
    DataSource,
    ImageLoadError,
    PreprocessConfig,
    build_transform,
    check_labels,
    create_source,
    iterate_batches,
    list_sources,
    stratified_splits,
    stratified_subset,
)

# ----------------------------------------------------------------------------------------------------------------
# digits


@pytest.fixture(scope="module")
def digits() -> DataSource:
    return create_source("digits")


def test_digits_matches_sklearn(digits):
    from sklearn.datasets import load_digits

    ref = load_digits()
    assert len(digits) == 1797
    assert digits.class_names == [str(d) for d in range(10)]
    assert digits.labels.dtype == np.int64
    np.testing.assert_array_equal(digits.labels, ref.target)
    img = digits.load(12)
    assert img.mode == "RGB" and img.size == (8, 8)
    arr = np.asarray(img)
    # Grey replicated to three channels, sklearn's 0..16 scaled to 0..255.
    np.testing.assert_array_equal(arr[..., 0], arr[..., 2])
    np.testing.assert_array_equal(arr[..., 0], np.rint(ref.images[12] * 255 / 16).astype(np.uint8))
    assert arr.max() == 255
    assert digits.item_name(12) == "digits[12]"


def test_digits_read_without_scikit_learn_equal_load_digits(monkeypatch):
    """The shipped CSV read directly (no scikit-learn import) and the load_digits fallback give the same arrays."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    from vitdepth.data.sources import load_digits_arrays

    ref = load_digits()
    images, labels = load_digits_arrays()
    np.testing.assert_array_equal(images, ref.images)
    np.testing.assert_array_equal(labels, ref.target)
    code = ("import sys; from vitdepth.data.sources import load_digits_arrays; load_digits_arrays(); "
            "assert 'sklearn.datasets' not in sys.modules")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)  # no file found: load_digits
    images, labels = load_digits_arrays()
    np.testing.assert_array_equal(images, ref.images)


def test_digits_identity(digits):
    ident = digits.identity()
    assert json.loads(json.dumps(ident)) == ident
    assert ident["kind"] == "digits" and ident["n"] == 1797 and ident["num_classes"] == 10
    assert len(ident["content_hash"]) == 64
    assert create_source("digits").identity()["content_hash"] == ident["content_hash"]


def test_out_of_range_index(digits):
    with pytest.raises(IndexError):
        digits.load(1797)
    with pytest.raises(IndexError):
        digits.load(-1)


# ----------------------------------------------------------------------------------------------------------------
# synthetic


def test_synthetic_deterministic_per_seed():
    a = create_source("synthetic:n=12,classes=3,size=24", seed=1)
    b = create_source("synthetic:n=12,classes=3,size=24", seed=1)
    c = create_source("synthetic:n=12,classes=3,size=24", seed=2)
    np.testing.assert_array_equal(a.labels, b.labels)
    # Load b in reverse order: images depend only on (seed, i), not on what was generated before.
    b_imgs = {i: np.asarray(b.load(i)) for i in reversed(range(12))}
    for i in range(12):
        np.testing.assert_array_equal(np.asarray(a.load(i)), b_imgs[i])
    assert not np.array_equal(np.asarray(a.load(0)), np.asarray(c.load(0)))
    assert a.identity()["content_hash"] == b.identity()["content_hash"] != c.identity()["content_hash"]
    assert (
        a.identity()["content_hash"]
        != create_source("synthetic:n=13,classes=3,size=24", seed=1).identity()["content_hash"]
    )


def test_synthetic_options_honoured_and_balanced():
    src = create_source("synthetic:n=50,classes=5,size=40", seed=3)
    assert len(src) == 50
    assert src.class_names == [f"class{k}" for k in range(5)]
    np.testing.assert_array_equal(np.bincount(src.labels, minlength=5), [10] * 5)
    assert not np.array_equal(src.labels, np.arange(50) % 5)  # permuted by the seed
    img = src.load(49)
    assert img.mode == "RGB" and img.size == (40, 40)
    assert np.asarray(img).std() > 5  # not a blank image
    assert src.item_name(3) == "synthetic[3]"
    # Uneven n: class counts differ by at most one.
    counts = np.bincount(create_source("synthetic:n=23,classes=4,size=8").labels, minlength=4)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 23


def test_synthetic_defaults():
    src = create_source("synthetic")
    assert len(src) == 2000 and len(src.class_names) == 10
    assert src.load(0).size == (224, 224)
    ident = src.identity()
    assert ident["options"] == {"n": 2000, "classes": 10, "size": 224}
    assert json.loads(json.dumps(ident)) == ident


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("synthetic:m=10", "valid keys: n, classes, size"),
        ("synthetic:clases=3", "did you mean 'classes'"),
        ("synthetic:n=ten", "'n' must be an integer"),
        ("synthetic:n=0", "'n' must be an integer >= 1"),
        ("synthetic:classes=1", "'classes' must be an integer >= 2"),
        ("synthetic:n", "not key=value"),
        ("synthetic:n=5,n=6", "given twice"),
    ],
)
def test_synthetic_option_errors(spec, fragment):
    with pytest.raises(VitdepthError, match=fragment):
        create_source(spec)


def test_synthetic_classes_are_learnable():
    from sklearn.linear_model import LogisticRegression

    src = create_source("synthetic:n=300,classes=5,size=32", seed=0)
    x = np.stack(
        [np.asarray(src.load(i).resize((8, 8), Image.BILINEAR), dtype=np.float32).ravel() / 255 for i in range(300)]
    )
    y = src.labels
    clf = LogisticRegression(max_iter=2000).fit(x[:200], y[:200])
    # Chance is 0.2; hue is linearly visible in pixels, so a plain pixel probe must do clearly better.
    assert clf.score(x[200:], y[200:]) > 0.45


# ----------------------------------------------------------------------------------------------------------------
# folder


def _noise_image(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))


@pytest.fixture
def image_folder(tmp_path):
    """Three classes of PNG/JPEG images plus a truncated PNG, a text file named .png and files to ignore."""
    rng = np.random.default_rng(0)
    root = tmp_path / "ds"
    sizes = [(40, 30), (30, 40), (33, 33)]
    for name in ("dog", "cat", "fish"):
        d = root / name
        d.mkdir(parents=True)
        _noise_image(rng, *sizes[0]).save(d / "a.png")
        _noise_image(rng, *sizes[1]).save(d / "b.JPG")
        _noise_image(rng, *sizes[2]).convert("L").save(d / "c.jpeg")
        (d / "notes.txt").write_text("not an image")
    # Nested images count for their class, hidden files and folders do not.
    (root / "fish" / "more").mkdir()
    _noise_image(rng, 20, 20).save(root / "fish" / "more" / "d.png")
    (root / "fish" / ".hidden.png").write_bytes(b"")
    (root / ".ipynb_checkpoints").mkdir()
    _noise_image(rng, 20, 20).save(root / ".ipynb_checkpoints" / "x.png")
    (root / "empty_class").mkdir()
    # A large noisy PNG cut in half: the header parses, the pixel data ends early.
    full = tmp_path / "full.png"
    _noise_image(rng, 64, 64).save(full)
    data = full.read_bytes()
    (root / "cat" / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "dog" / "fake.png").write_text("<html>this is not a png</html>")
    return root


def test_folder_classes_and_labels(image_folder):
    src = create_source(f"folder:{image_folder}")
    assert src.class_names == ["cat", "dog", "fish"]
    names = [os.path.relpath(src.item_name(i), image_folder) for i in range(len(src))]
    assert names == [
        "cat/a.png",
        "cat/b.JPG",
        "cat/c.jpeg",
        "cat/truncated.png",
        "dog/a.png",
        "dog/b.JPG",
        "dog/c.jpeg",
        "dog/fake.png",
        "fish/a.png",
        "fish/b.JPG",
        "fish/c.jpeg",
        "fish/more/d.png",
    ]
    np.testing.assert_array_equal(src.labels, [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    assert any("empty_class" in w for w in src.warnings)
    img = src.load(0)
    assert img.mode == "RGB" and img.size == (40, 30)
    assert src.load(2).mode == "RGB"  # greyscale JPEG converted
    ident = src.identity()
    assert ident["num_classes"] == 3 and ident["n"] == 12
    assert json.loads(json.dumps(ident)) == ident


def test_folder_content_hash_tracks_changes(image_folder):
    before = create_source(f"folder:{image_folder}").identity()["content_hash"]
    assert create_source(f"folder:{image_folder}").identity()["content_hash"] == before
    # Rewriting a file in place (same name, new bytes and mtime) must change the hash, not only adding files.
    target = image_folder / "dog" / "a.png"
    _noise_image(np.random.default_rng(1), 12, 10).save(target)
    os.utime(target, ns=(0, 1_000_000_000))
    rewritten = create_source(f"folder:{image_folder}").identity()["content_hash"]
    assert rewritten != before
    _noise_image(np.random.default_rng(1), 10, 10).save(image_folder / "dog" / "new.png")
    assert create_source(f"folder:{image_folder}").identity()["content_hash"] not in (before, rewritten)


def test_folder_unreadable_files_raise_image_load_error(image_folder):
    assert not ImageFile.LOAD_TRUNCATED_IMAGES
    src = create_source(f"folder:{image_folder}")
    for i in (3, 7):  # truncated.png, fake.png
        with pytest.raises(ImageLoadError) as info:
            src.load(i)
        assert info.value.name == src.item_name(i)
        assert info.value.reason
    # Picklable, so a DataLoader worker could carry it.
    err = pickle.loads(pickle.dumps(ImageLoadError("x.png", "broken")))
    assert (err.name, err.reason) == ("x.png", "broken")


@pytest.mark.parametrize("num_workers", [0, 2])
def test_iterate_batches_skips_and_reports(image_folder, num_workers):
    src = create_source(f"folder:{image_folder}")
    tf = build_transform(PreprocessConfig(input_size=(16, 16)))
    batches = list(iterate_batches(src, np.arange(len(src)), tf, batch_size=4, num_workers=num_workers))
    assert [b.images.shape[0] for b in batches] == [3, 3, 4]
    assert all(isinstance(b, Batch) and b.images.dtype == torch.float32 for b in batches)
    np.testing.assert_array_equal(np.concatenate([b.indices for b in batches]), [0, 1, 2, 4, 5, 6, 8, 9, 10, 11])
    skipped = [s for b in batches for s in b.skipped]
    assert [(i, os.path.basename(name)) for i, name, _ in skipped] == [(3, "truncated.png"), (7, "fake.png")]
    assert all(reason for _, _, reason in skipped)
    # Each image is the transform of the loaded file.
    torch.testing.assert_close(batches[0].images[1], tf(src.load(1)))


def test_iterate_batches_all_skipped_chunk_has_empty_images(image_folder):
    src = create_source(f"folder:{image_folder}")
    tf = build_transform(PreprocessConfig(input_size=(16, 12)))
    (batch,) = iterate_batches(src, np.array([7, 3]), tf, batch_size=8)
    assert batch.images.shape == (0, 3, 16, 12) and batch.indices.shape == (0,)
    assert [i for i, _, _ in batch.skipped] == [7, 3]  # request order kept


def test_iterate_batches_strict_names_file(image_folder):
    src = create_source(f"folder:{image_folder}")
    tf = build_transform(PreprocessConfig(input_size=(16, 16)))
    with pytest.raises(VitdepthError, match=r"truncated\.png.*--strict"):
        list(iterate_batches(src, np.arange(len(src)), tf, batch_size=4, strict=True))
    # Readable items only: strict is silent.
    ok = list(iterate_batches(src, np.array([0, 1, 2]), tf, batch_size=2, strict=True))
    assert sum(b.images.shape[0] for b in ok) == 3


def test_iterate_batches_argument_errors(digits):
    tf = build_transform(PreprocessConfig(input_size=(8, 8)))
    with pytest.raises(VitdepthError, match="batch_size"):
        iterate_batches(digits, np.arange(4), tf, batch_size=0)
    with pytest.raises(VitdepthError, match="indices"):
        iterate_batches(digits, np.array([0, 5000]), tf, batch_size=2)
    assert list(iterate_batches(digits, np.array([], dtype=np.int64), tf, batch_size=2)) == []


def test_folder_errors(tmp_path):
    with pytest.raises(VitdepthError, match="does not exist"):
        create_source(f"folder:{tmp_path / 'nope'}")
    f = tmp_path / "file.png"
    f.write_bytes(b"x")
    with pytest.raises(VitdepthError, match="is not a directory"):
        create_source(f"folder:{f}")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VitdepthError, match="empty dataset"):
        create_source(f"folder:{empty}")
    (empty / "cls").mkdir()
    (empty / "cls" / "readme.txt").write_text("x")
    with pytest.raises(VitdepthError, match="empty dataset"):
        create_source(f"folder:{empty}")
    flat = tmp_path / "flat"
    flat.mkdir()
    _noise_image(np.random.default_rng(0), 8, 8).save(flat / "x.png")
    src = create_source(f"folder:{flat}")  # loose images: an unlabelled source (issue 11), not an error
    assert not src.labelled and src.class_names == ["(unlabelled)"] and src.labels.tolist() == [0]
    with pytest.raises(VitdepthError, match="folder:PATH"):
        create_source("folder:")


# ----------------------------------------------------------------------------------------------------------------
# specs


def test_unknown_spec_lists_close_match():
    with pytest.raises(VitdepthError, match="did you mean 'digits'") as info:
        create_source("digts")
    msg = str(info.value)
    assert "'digts'" in msg and "synthetic" in msg and "folder:PATH" in msg and "\n" not in msg
    with pytest.raises(VitdepthError, match="did you mean 'synthetic'"):
        create_source("synthetc:n=5")
    with pytest.raises(VitdepthError, match="takes no options"):
        create_source("digits:n=5")


def test_bare_directory_spec_suggests_folder(tmp_path):
    with pytest.raises(VitdepthError, match=f"folder:{tmp_path}"):
        create_source(str(tmp_path))


def test_list_sources():
    entries = list_sources()
    specs = [spec for spec, _ in entries]
    assert specs[0] == "digits" and any(s.startswith("synthetic") for s in specs) and "folder:PATH" in specs
    assert all(isinstance(d, str) and d and "\n" not in d for _, d in entries)


# ----------------------------------------------------------------------------------------------------------------
# splits


def _imbalanced_labels() -> np.ndarray:
    return np.repeat(np.arange(4), [50, 23, 7, 2])


def test_stratified_splits_proportions_and_guarantees():
    labels = _imbalanced_labels()
    fractions = np.array([0.7, 0.1, 0.2])
    codes = stratified_splits(labels, fractions, seed=0)
    assert codes.dtype == np.int8 and codes.shape == labels.shape
    assert set(np.unique(codes)) <= {0, 1, 2} and SPLITS == ("train", "val", "test")
    for k, m in enumerate(np.bincount(labels)):
        per_split = np.bincount(codes[labels == k], minlength=3)
        assert per_split.sum() == m  # covering and disjoint
        assert per_split[0] >= 1 and per_split[2] >= 1
        if m >= 10:
            assert np.all(np.abs(per_split - m * fractions) < 1.0), (k, per_split)
    np.testing.assert_array_equal(np.bincount(codes[labels == 0], minlength=3), [35, 5, 10])


def test_stratified_splits_deterministic():
    labels = _imbalanced_labels()
    a = stratified_splits(labels, seed=5)
    np.testing.assert_array_equal(a, stratified_splits(labels, seed=5))
    assert not np.array_equal(a, stratified_splits(labels, seed=6))


def test_stratified_splits_tiny_classes():
    # Ten classes of two: each class can only be one train + one test, yet val must not be empty as a whole.
    labels = np.repeat(np.arange(10), 2)
    codes = stratified_splits(labels, seed=0)
    assert (codes == 1).sum() >= 1
    for k in range(10):
        assert (codes[labels == k] == 0).sum() >= 1 or (codes[labels == k] == 1).sum() >= 1
    # A class of two keeps its train and test item unless val had to borrow one.
    both = sum(int(set(codes[labels == k].tolist()) == {0, 2}) for k in range(10))
    assert both >= 9
    # Singletons go to train; test still gets something.
    single = stratified_splits(np.arange(3), seed=0)
    assert (single == 2).sum() == 1 and (single == 0).sum() == 2


def test_stratified_splits_small_test_fraction_still_tests_every_class():
    # Plain rounding of 5% of 2..6 items gives no test item; every class must still get one train and one test.
    labels = np.repeat(np.arange(5), [2, 3, 4, 5, 6])
    codes = stratified_splits(labels, (0.9, 0.05, 0.05), seed=0)
    for k in range(5):
        per_split = np.bincount(codes[labels == k], minlength=3)
        assert per_split[0] >= 1 and per_split[2] >= 1, (k, per_split)
    assert (codes == 1).sum() >= 1  # N = 20 >= 10: val not empty


def test_stratified_splits_bad_fractions():
    with pytest.raises(VitdepthError, match="fractions"):
        stratified_splits(np.zeros(5, dtype=int), (0.5, 0.5, 0.5))
    with pytest.raises(VitdepthError, match="fractions"):
        stratified_splits(np.zeros(5, dtype=int), (1.0, 0.0, 0.0))


def test_stratified_subset():
    labels = _imbalanced_labels()
    sub = stratified_subset(labels, 41, seed=0)
    assert sub.shape == (41,) and np.all(np.diff(sub) > 0)  # sorted, unique
    counts = np.bincount(labels[sub], minlength=4)
    quota = 41 * np.bincount(labels) / len(labels)
    assert np.all(np.abs(counts - quota) < 1.0), counts
    np.testing.assert_array_equal(sub, stratified_subset(labels, 41, seed=0))
    assert not np.array_equal(sub, stratified_subset(labels, 41, seed=1))
    # Small n still reaches every class when it can.
    assert set(labels[stratified_subset(labels, 4, seed=0)]) == {0, 1, 2, 3}
    np.testing.assert_array_equal(stratified_subset(labels, 10_000, seed=0), np.arange(len(labels)))
    with pytest.raises(VitdepthError, match="'n'"):
        stratified_subset(labels, 0, seed=0)


def test_check_labels():
    check_labels(np.array([0, 1, 1]), ["a", "b"])
    with pytest.raises(VitdepthError, match="has no images"):
        check_labels(np.array([], dtype=np.int64), ["a", "b"])
    with pytest.raises(VitdepthError, match="single-class dataset: probes need >= 2 classes; add images") as info:
        check_labels(np.array([1, 1, 1]), ["a", "b"])
    assert "'b'" in str(info.value)


# ----------------------------------------------------------------------------------------------------------------
# transforms


def test_transform_shape_dtype_and_upsampling(digits):
    tf = build_transform(PreprocessConfig(input_size=(32, 48)))
    out = tf(digits.load(0))  # 8x8 upsampled
    assert out.shape == (3, 32, 48) and out.dtype == torch.float32
    assert tf(Image.new("L", (100, 60))).shape == (3, 32, 48)  # non-RGB input converted
    assert pickle.loads(pickle.dumps(tf))(digits.load(0)).equal(out)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "nearest"])
def test_transform_normalisation(interpolation):
    cfg = PreprocessConfig(input_size=(20, 20), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5), interpolation=interpolation)
    rgb = (200, 100, 50)
    out = build_transform(cfg)(Image.new("RGB", (37, 23), rgb))
    expected = (np.array(rgb) / 255.0 - np.array(cfg.mean)) / np.array(cfg.std)
    for ch in range(3):
        np.testing.assert_allclose(out[ch].numpy(), expected[ch], atol=1e-5)


def _gradient(w: int, h: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx % 256, yy % 256, (xx + yy) % 256], axis=-1).astype(np.uint8)


def test_transform_crop_pct_center_crop():
    arr = _gradient(300, 200)
    ident = PreprocessConfig(
        input_size=(100, 100), mean=(0, 0, 0), std=(1, 1, 1), interpolation="nearest", crop_pct=0.5
    )
    # Shorter side already round(100 / 0.5) = 200: no resize, just the central 100x100 crop.
    out = build_transform(ident)(Image.fromarray(arr))
    np.testing.assert_allclose(out.permute(1, 2, 0).numpy() * 255, arr[50:150, 100:200], atol=1e-3)


def test_transform_crop_pct_keeps_aspect_ratio():
    # Thirds of a 300x200 image coloured R, G, B. Resizing the shorter side to 100 gives 150x100; the 100-wide
    # centre crop then shows 25 columns of red, 50 of green and 25 of blue. Stretching would show thirds.
    arr = np.zeros((200, 300, 3), dtype=np.uint8)
    for k in range(3):
        arr[:, 100 * k : 100 * (k + 1), k] = 255
    cfg = PreprocessConfig(input_size=(100, 100), mean=(0, 0, 0), std=(1, 1, 1), interpolation="nearest")
    out = build_transform(cfg)(Image.fromarray(arr)).numpy()
    dominant = out[:, 50].argmax(axis=0)  # channel per column, middle row
    np.testing.assert_array_equal(np.bincount(dominant, minlength=3), [25, 50, 25])
    # crop_pct 0.5 resizes to 300x200 (no change) and crops the green middle only.
    cfg_half = PreprocessConfig(
        input_size=(100, 100), mean=(0, 0, 0), std=(1, 1, 1), interpolation="nearest", crop_pct=0.5
    )
    out_half = build_transform(cfg_half)(Image.fromarray(arr)).numpy()
    assert np.all(out_half[1] == 1.0) and np.all(out_half[[0, 2]] == 0.0)


def test_preprocess_config_validation_and_dict():
    cfg = PreprocessConfig(input_size=[224, 224], crop_pct=0.875)
    assert cfg.input_size == (224, 224)
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert PreprocessConfig(**d) == cfg
    with pytest.raises(VitdepthError, match="interpolation"):
        PreprocessConfig(input_size=(8, 8), interpolation="lanczos7")
    with pytest.raises(VitdepthError, match="input_size"):
        PreprocessConfig(input_size=(8,))
    with pytest.raises(VitdepthError, match="crop_pct"):
        PreprocessConfig(input_size=(8, 8), crop_pct=0)


def test_transform_crop_pct_224():
    # timm's classic 224 / 0.875 = 256: a 512x384 image becomes 341x256, then its centre 224x224.
    arr = _gradient(512, 384)
    cfg = PreprocessConfig(
        input_size=(224, 224), mean=(0, 0, 0), std=(1, 1, 1), interpolation="nearest", crop_pct=0.875
    )
    out = build_transform(cfg)(Image.fromarray(arr))
    ref = np.asarray(Image.fromarray(arr).resize((341, 256), Image.NEAREST))[16:240, 58:282]
    np.testing.assert_allclose(out.permute(1, 2, 0).numpy() * 255, ref, atol=1e-3)
