"""External data sources (issue 11): hf-dataset, wds, csv, unlabelled folders and Python objects.

Every fixture is written into tmp_path from the same 30 small PNGs in 3 classes, so each source can be checked
against the folder source: same pixels, same labels, same class names, in the same order (for shards: keyed by
sample key). Nothing is downloaded.
"""

from __future__ import annotations

import csv
import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from vitdepth._errors import VitdepthError
from vitdepth.data import (
    UNLABELLED,
    DataSource,
    ImageLoadError,
    PreprocessConfig,
    build_transform,
    create_source,
    iterate_batches,
    list_sources,
    prepare_item,
    source_from_object,
)

CLASSES = ("ant", "bee", "cat")
PER_CLASS = 10


def _image(rng: np.random.Generator, k: int) -> Image.Image:
    # Sizes vary per image, so a mix-up of items shows as a shape mismatch as well as a pixel mismatch.
    h, w = 10 + k % 4, 12 + k % 3
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """The 30 images as a folder tree ROOT/<class>/img_XX.png, with (relative path, class index) in folder order."""
    root = tmp_path_factory.mktemp("pictures") / "tree"
    rng = np.random.default_rng(0)
    rows = []
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for j in range(PER_CLASS):
            rel = f"{name}/img_{j:02d}.png"
            _image(rng, c * PER_CLASS + j).save(root / rel)
            rows.append((rel, c))
    return root, rows


@pytest.fixture(scope="module")
def folder(pictures) -> DataSource:
    return create_source(f"folder:{pictures[0]}")


def _pixels(src: DataSource, i: int) -> np.ndarray:
    return np.asarray(src.load(i))


def _assert_same_as_folder(src: DataSource, folder: DataSource) -> None:
    assert len(src) == len(folder)
    assert src.class_names == folder.class_names
    np.testing.assert_array_equal(src.labels, folder.labels)
    for i in range(len(folder)):
        np.testing.assert_array_equal(_pixels(src, i), _pixels(folder, i))


def _one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text
    return text


# ----------------------------------------------------------------------------------------------------------------
# hf-dataset


@pytest.fixture()
def hf_cache(tmp_path, monkeypatch):
    """Keep the datasets cache (parquet/arrow conversions) inside the test's tmp_path."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    return datasets


def _hf_dataset(datasets, pictures):
    root, rows = pictures
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(CLASSES))})
    images = [Image.open(root / rel) for rel, _ in rows]
    return datasets.Dataset.from_dict({"image": images, "label": [c for _, c in rows]}, features=features)


def test_hf_save_to_disk_matches_folder(hf_cache, pictures, folder, tmp_path):
    ds = _hf_dataset(hf_cache, pictures)
    ds.save_to_disk(str(tmp_path / "saved"))
    src = create_source(f"hf-dataset:{tmp_path / 'saved'}")
    assert src.kind == "hf-dataset" and src.labelled and src.warnings == []
    _assert_same_as_folder(src, folder)
    ident = src.identity()
    assert ident["image_column"] == "image" and ident["label_column"] == "label" and ident["labelled"] is True
    assert create_source(f"hf-dataset:{tmp_path / 'saved'}").identity()["content_hash"] == ident["content_hash"]
    # Memory-mapped: the pickled source (what DataLoader workers get) does not carry the images.
    assert len(pickle.dumps(src)) < 20_000
    with pytest.raises(IndexError):
        src.load(len(src))


def test_hf_parquet_matches_folder(hf_cache, pictures, folder, tmp_path):
    ds = _hf_dataset(hf_cache, pictures)
    ds.to_parquet(str(tmp_path / "val.parquet"))
    _assert_same_as_folder(create_source(f"hf-dataset:{tmp_path / 'val.parquet'}"), folder)
    # A glob of parquet files, and an explicit image column.
    src = create_source(f"hf-dataset:{tmp_path / '*.parquet'}:image=image,label=label")
    assert len(src) == len(folder)


def test_hf_dataset_dict_split_rule(hf_cache, pictures, tmp_path):
    ds = _hf_dataset(hf_cache, pictures)
    parts = {"train": ds.select(range(0, 30, 2)), "validation": ds.select(range(1, 30, 2)), "test": ds.select([0])}
    hf_cache.DatasetDict(parts).save_to_disk(str(tmp_path / "dd"))
    src = create_source(f"hf-dataset:{tmp_path / 'dd'}")
    assert len(src) == 15 and src.identity()["split"] == "validation"
    assert any("split 'validation'" in w and "train, validation, test" in w for w in src.warnings)
    assert len(create_source(f"hf-dataset:{tmp_path / 'dd'}:split=train")) == 15
    with pytest.raises(VitdepthError) as info:
        create_source(f"hf-dataset:{tmp_path / 'dd'}:split=nope")
    assert "train, validation, test" in _one_line(info) and "split=NAME" in str(info.value)
    # No preferred split: refused with the names.
    hf_cache.DatasetDict({"train": parts["train"], "extra": parts["test"]}).save_to_disk(str(tmp_path / "dd2"))
    with pytest.raises(VitdepthError) as info:
        create_source(f"hf-dataset:{tmp_path / 'dd2'}")
    assert "train, extra" in _one_line(info) and "split=NAME" in str(info.value)


def test_hf_columns_detected_or_refused(hf_cache, pictures, tmp_path):
    datasets = hf_cache
    root, rows = pictures
    images = [Image.open(root / rel) for rel, _ in rows[:6]]
    two = datasets.Dataset.from_dict(
        {"a": images, "b": images, "label": [0, 1, 2, 0, 1, 2]},
        features=datasets.Features({"a": datasets.Image(), "b": datasets.Image(), "label": datasets.Value("int64")}),
    )
    two.save_to_disk(str(tmp_path / "two"))
    with pytest.raises(VitdepthError) as info:
        create_source(f"hf-dataset:{tmp_path / 'two'}")
    assert "a, b" in _one_line(info) and "image=COL" in str(info.value)
    src = create_source(f"hf-dataset:{tmp_path / 'two'}:image=b")
    assert src.class_names == ["0", "1", "2"] and src.labels.tolist() == [0, 1, 2, 0, 1, 2]
    # A text label column named 'target': sorted distinct names.
    named = datasets.Dataset.from_dict(
        {"image": images, "target": ["z", "y", "z", "x", "y", "z"]},
        features=datasets.Features({"image": datasets.Image(), "target": datasets.Value("string")}),
    )
    src = source_from_object(named)
    assert src.class_names == ["x", "y", "z"] and src.labels.tolist() == [2, 1, 2, 0, 1, 2]
    # Two ClassLabels (CIFAR-100's fine/coarse): ambiguous.
    cl = datasets.ClassLabel(names=["p", "q", "r"])
    both = datasets.Dataset.from_dict(
        {"image": images, "fine": [0, 1, 2] * 2, "coarse": [0] * 6},
        features=datasets.Features({"image": datasets.Image(), "fine": cl, "coarse": cl}),
    )
    with pytest.raises(VitdepthError) as info:
        source_from_object(both)
    assert "fine, coarse" in _one_line(info) and "label=COL" in str(info.value)
    assert source_from_object(both, label="coarse").labels.tolist() == [0] * 6


def test_hf_unlabelled_and_missing_labels(hf_cache, pictures):
    datasets = hf_cache
    root, rows = pictures
    images = [Image.open(root / rel) for rel, _ in rows[:6]]
    bare = datasets.Dataset.from_dict({"image": images}, features=datasets.Features({"image": datasets.Image()}))
    src = source_from_object(bare)
    assert not src.labelled and src.class_names == [UNLABELLED] and src.labels.tolist() == [0] * 6
    assert src.identity()["labelled"] is False
    # ClassLabel -1 means "no label" in datasets: those rows are left out, and an all -1 split is unlabelled.
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(CLASSES))})
    partial = datasets.Dataset.from_dict({"image": images, "label": [0, -1, 2, -1, 1, 2]}, features=feats)
    src = source_from_object(partial)
    assert len(src) == 4 and src.labels.tolist() == [0, 2, 1, 2]
    assert any("2 row(s)" in w for w in src.warnings)
    np.testing.assert_array_equal(_pixels(src, 1), np.asarray(images[2].convert("RGB")))
    none = datasets.Dataset.from_dict({"image": images, "label": [-1] * 6}, features=feats)
    src = source_from_object(none)
    assert not src.labelled and len(src) == 6 and any("-1" in w for w in src.warnings)


def test_hf_corrupt_image_is_skipped_by_the_loader(hf_cache, pictures):
    datasets = hf_cache
    root, rows = pictures
    raw = [{"bytes": (root / rel).read_bytes(), "path": None} for rel, _ in rows[:4]]
    raw[2] = {"bytes": b"not a png", "path": None}
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(CLASSES))})
    ds = datasets.Dataset.from_dict({"image": raw, "label": [0, 1, 2, 0]}, features=feats)
    src = source_from_object(ds)
    with pytest.raises(ImageLoadError):
        src.load(2)
    batches = list(iterate_batches(src, np.arange(4), build_transform(PreprocessConfig(input_size=(8, 8))), 4))
    assert batches[0].indices.tolist() == [0, 1, 3] and batches[0].skipped[0][0] == 2


def test_hf_hub_offline_miss_is_one_line(hf_cache, monkeypatch):
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hf_cache.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(VitdepthError) as info:
        create_source("hf-dataset:vitdepth-test/no-such-dataset")
    text = _one_line(info)
    assert "vitdepth-test/no-such-dataset" in text and str(hf_cache.config.HF_DATASETS_CACHE) in text
    assert "offline" in text and "HF_HUB_OFFLINE" in text


def test_hf_bad_paths_are_one_line(hf_cache, tmp_path):
    with pytest.raises(VitdepthError, match="does not exist") as info:
        create_source(f"hf-dataset:{tmp_path / 'nope'}")
    _one_line(info)
    (tmp_path / "t.csv").write_text("path,label\n")
    with pytest.raises(VitdepthError, match="use csv:") as info:
        create_source(f"hf-dataset:{tmp_path / 't.csv'}")
    _one_line(info)
    with pytest.raises(VitdepthError, match="unknown hf-dataset option 'splt'.*did you mean 'split'"):
        create_source(f"hf-dataset:{tmp_path}:splt=val")


# ----------------------------------------------------------------------------------------------------------------
# wds


def _write_shards(wds, pictures, folder_dir, order=(0, 1)):
    """The 30 images in 2 shards (even / odd items), keys sample000000..., cls = folder label index."""
    root, rows = pictures
    paths = []
    for s in order:
        path = folder_dir / f"shard-{s:06d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for k in range(s, len(rows), 2):
                rel, c = rows[k]
                sink.write({"__key__": f"sample{k:06d}", "png": (root / rel).read_bytes(), "cls": c})
        paths.append(path)
    return paths


def test_wds_matches_folder_by_key(pictures, folder, tmp_path):
    wds = pytest.importorskip("webdataset")
    _write_shards(wds, pictures, tmp_path)
    src = create_source(f"wds:{tmp_path}/shard-{{000000..000001}}.tar")
    assert src.kind == "wds" and len(src) == 30 and src.warnings == []
    assert src.class_names == ["0", "1", "2"]
    # Shard order, then member order: evens first.
    assert src.keys[:3] == ["sample000000", "sample000002", "sample000004"]
    for i, key in enumerate(src.keys):
        k = int(key.removeprefix("sample"))
        assert int(src.class_names[src.labels[i]]) == folder.labels[k]
        np.testing.assert_array_equal(_pixels(src, i), _pixels(folder, k))
    assert src.item_name(0).endswith("shard-000000.tar/sample000000.png")
    ident = src.identity()
    assert ident["shards"] == 2 and ident["labelled"] is True and len(ident["content_hash"]) == 64
    assert len(pickle.dumps(src)) < 20_000  # offsets, not bytes


def test_wds_corrupt_samples_skipped_and_recorded(pictures, tmp_path):
    wds = pytest.importorskip("webdataset")
    root, rows = pictures
    good = (root / rows[0][0]).read_bytes()
    path = tmp_path / "bad-0.tar"
    with wds.TarWriter(str(path)) as sink:
        sink.write({"__key__": "ok1", "png": good, "cls": 0})
        sink.write({"__key__": "nocls", "png": good})
        sink.write({"__key__": "textcls", "png": good, "cls": "cat"})
        sink.write({"__key__": "noimage", "txt": "hello", "cls": 1})
        sink.write({"__key__": "garbage", "png": b"definitely not a png", "cls": 1})
        sink.write({"__key__": "ok2", "png": good, "cls": 2})
    src = create_source(f"wds:{path}")
    assert src.keys == ["ok1", "garbage", "ok2"] and src.class_names == ["0", "1", "2"]
    text = " | ".join(src.warnings)
    assert "1 sample(s) without a class file" in text and "nocls" in text
    assert "class is not an integer" in text and "textcls" in text
    assert "without an image" in text and "noimage" in text
    with pytest.raises(ImageLoadError) as info:
        src.load(1)
    assert "garbage" in info.value.name
    batches = list(iterate_batches(src, np.arange(3), build_transform(PreprocessConfig(input_size=(8, 8))), 3))
    assert batches[0].indices.tolist() == [0, 2] and batches[0].skipped[0][0] == 1


def test_wds_truncated_compressed_and_missing_shards(pictures, tmp_path):
    wds = pytest.importorskip("webdataset")
    (shard, _) = _write_shards(wds, pictures, tmp_path)
    data = shard.read_bytes()
    cut = tmp_path / "cut.tar"
    # Cut inside the data of a late member: the earlier samples stay, the cut one is recorded.
    with tarfile.open(shard) as tf:
        last = tf.getmembers()[-3]
    cut.write_bytes(data[: last.offset_data + last.size // 2])
    src = create_source(f"wds:{cut}")
    assert 0 < len(src) < 15 and any("truncated shard" in w for w in src.warnings)
    gz = tmp_path / "z.tar"
    import gzip

    gz.write_bytes(gzip.compress(data))
    with pytest.raises(VitdepthError, match="gzip-compressed") as info:
        create_source(f"wds:{gz}")
    _one_line(info)
    with pytest.raises(VitdepthError, match="1 of the 3 shard") as info:
        create_source(f"wds:{tmp_path}/shard-{{000000..000002}}.tar")
    _one_line(info)
    (tmp_path / "text.tar").write_text("hello, not a tar file" * 50)
    with pytest.raises(VitdepthError, match="not a readable tar") as info:
        create_source(f"wds:{tmp_path / 'text.tar'}")
    _one_line(info)


def test_wds_assign_splits_stable_and_proportional(tmp_path):
    wds = pytest.importorskip("webdataset")
    keys = [f"item{k:05d}" for k in range(3000)]
    for s in range(3):
        with wds.TarWriter(str(tmp_path / f"s-{s}.tar")) as sink:
            for key in keys[s::3]:
                sink.write({"__key__": key, "jpg": b"x", "cls": int(key[-1]) % 3})
    a = create_source(f"wds:{tmp_path}/s-{{0..2}}.tar")
    b = create_source(f"wds:{tmp_path}/s-{{2,0,1}}.tar")  # other shard order: other item order
    assert a.keys != b.keys and sorted(a.keys) == sorted(b.keys)
    fractions = (0.7, 0.1, 0.2)
    sa, sb = a.assign_splits(fractions), b.assign_splits(fractions)
    assert sa.dtype == np.int8 and sa.shape == (3000,)
    assert dict(zip(a.keys, sa.tolist(), strict=True)) == dict(zip(b.keys, sb.tolist(), strict=True))
    share = np.bincount(sa, minlength=3) / 3000
    np.testing.assert_allclose(share, fractions, atol=0.03)
    # Stable across processes and runs: a pure function of the key (no salted hash()).
    np.testing.assert_array_equal(create_source(f"wds:{tmp_path}/s-{{0..2}}.tar").assign_splits(fractions), sa)
    with pytest.raises(VitdepthError, match="fractions"):
        a.assign_splits((0.5, 0.5, 0.5))


def test_other_sources_leave_splits_to_the_analysis(folder):
    assert folder.assign_splits((0.7, 0.1, 0.2)) is None
    assert create_source("synthetic:n=10,size=8").assign_splits((0.7, 0.1, 0.2)) is None


# ----------------------------------------------------------------------------------------------------------------
# csv


def _write_csv(path, header, rows, delimiter=","):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)


def test_csv_matches_folder(pictures, folder, tmp_path):
    root, rows = pictures
    table = root.parent / "val.csv"  # paths relative to the CSV's folder
    _write_csv(table, ["filename", "class"], [(f"tree/{rel}", CLASSES[c]) for rel, c in rows])
    src = create_source(f"csv:{table}")
    assert src.kind == "csv" and src.warnings == []
    _assert_same_as_folder(src, folder)
    assert src.identity()["path_column"] == "filename" and src.identity()["label_column"] == "class"
    # Absolute paths, tab separated, columns given by name.
    tsv = tmp_path / "abs.tsv"
    _write_csv(tsv, ["img", "kind", "x"], [(str(root / rel), CLASSES[c], 1) for rel, c in rows], delimiter="\t")
    _assert_same_as_folder(create_source(f"csv:{tsv}:path=img,label=kind"), folder)


def test_csv_missing_files_skipped_and_numeric_classes(pictures, tmp_path):
    root, rows = pictures
    table = tmp_path / "t.csv"
    lines = [(str(root / rows[k][0]), str(rows[k][1] * 5)) for k in (0, 10, 20, 1)]
    lines += [("nope/missing.png", "0"), (str(root), "0"), ("", "0"), (str(root / rows[5][0]), "")]
    lines += [(str(root / rows[6][0]), "10")]
    _write_csv(table, ["path", "label"], lines)
    src = create_source(f"csv:{table}")
    assert len(src) == 5 and src.class_names == ["0", "5", "10"]  # numeric order, not "10" < "5"
    text = " | ".join(src.warnings)
    assert "does not exist" in text and "line 6: nope/missing.png" in text
    assert "not a regular file" in text and "empty image path" in text and "empty label" in text


def test_csv_errors_and_unlabelled(pictures, tmp_path):
    root, rows = pictures
    table = tmp_path / "t.csv"
    _write_csv(table, ["path", "image", "label"], [(str(root / rows[0][0]), "x", "a")])
    with pytest.raises(VitdepthError) as info:
        create_source(f"csv:{table}")
    assert "path, image" in _one_line(info) and "path=COL" in str(info.value)
    _write_csv(table, ["name", "label"], [("x", "a")])
    with pytest.raises(VitdepthError, match="no image path column.*path=COL") as info:
        create_source(f"csv:{table}")
    _one_line(info)
    with pytest.raises(VitdepthError, match="'kind' given") as info:
        create_source(f"csv:{table}:path=name,label=kind")
    _one_line(info)
    with pytest.raises(VitdepthError, match="does not exist") as info:
        create_source(f"csv:{tmp_path / 'none.csv'}")
    _one_line(info)
    _write_csv(table, ["file"], [(str(root / rel),) for rel, _ in rows[:3]])
    src = create_source(f"csv:{table}")
    assert not src.labelled and src.class_names == [UNLABELLED] and src.labels.tolist() == [0, 0, 0]
    _write_csv(table, ["path", "label"], [("gone.png", "a")])
    with pytest.raises(VitdepthError, match="empty dataset") as info:
        create_source(f"csv:{table}")
    _one_line(info)


# ----------------------------------------------------------------------------------------------------------------
# unlabelled folders


def test_folder_of_loose_images_is_unlabelled(pictures, tmp_path):
    root, rows = pictures
    flat = tmp_path / "flat"
    flat.mkdir()
    for k, (rel, _) in enumerate(rows[:5]):
        (flat / f"{k}.png").write_bytes((root / rel).read_bytes())
    (flat / "notes.txt").write_text("x")
    src = create_source(f"folder:{flat}")
    assert not src.labelled and src.class_names == [UNLABELLED] and src.labels.dtype == np.int64
    assert src.labels.tolist() == [0] * 5
    np.testing.assert_array_equal(_pixels(src, 3), np.asarray(Image.open(root / rows[3][0]).convert("RGB")))
    ident = src.identity()
    assert ident["labelled"] is False and ident["num_classes"] == 1
    # Loose images beside class folders: the class folders are the data, the loose images are named in a warning.
    (flat / "cls_a").mkdir()
    (flat / "cls_a" / "x.png").write_bytes((root / rows[0][0]).read_bytes())
    mixed = create_source(f"folder:{flat}")
    assert mixed.labelled and mixed.class_names == ["cls_a"] and len(mixed) == 1
    assert any("5 image(s) directly in" in w and "0.png" in w for w in mixed.warnings)
    # Nothing at all is still an error.
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VitdepthError, match="no class subdirectories and no images") as info:
        create_source(f"folder:{empty}")
    _one_line(info)


# ----------------------------------------------------------------------------------------------------------------
# Python objects


class _PilPairs(torch.utils.data.Dataset):
    def __init__(self, root, rows, with_targets: bool):
        self.items = [(root / rel, c) for rel, c in rows]
        if with_targets:
            self.targets = [c for _, c in rows]
            self.classes = list(CLASSES)
        self.reads = 0

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        self.reads += 1
        path, c = self.items[i]
        return Image.open(path), torch.tensor(c)


class _TensorPairs(torch.utils.data.Dataset):
    def __init__(self, n, size=8, odd=None):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, size, size, generator=g)
        self.y = [k % 2 for k in range(n)]
        self.odd = odd

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        if i == self.odd:
            return torch.zeros(3, 5, 5), self.y[i]
        return self.x[i], self.y[i]


def test_object_torch_dataset_of_pil(pictures, folder):
    root, rows = pictures
    with_targets = _PilPairs(root, rows, with_targets=True)
    src = source_from_object(with_targets)
    assert with_targets.reads == 0  # labels from .targets, nothing decoded
    assert src.kind == "torch-dataset" and src.spec.startswith("object:") and src.class_names == list(CLASSES)
    _assert_same_as_folder(src, folder)
    scanned_ds = _PilPairs(root, rows, with_targets=False)
    scanned = source_from_object(scanned_ds)
    assert scanned_ds.reads == len(rows)  # one pass to read the labels
    assert scanned.class_names == ["0", "1", "2"]
    np.testing.assert_array_equal(scanned.labels, folder.labels)
    ident = src.identity()
    assert ident["items_hashed"] == 3 and ident["object_class"].endswith("_PilPairs")
    assert ident["content_hash"] == source_from_object(_PilPairs(root, rows, True)).identity()["content_hash"]
    # Given labels skip the pass.
    given_ds = _PilPairs(root, rows, with_targets=False)
    source_from_object(given_ds, labels=folder.labels)
    assert given_ds.reads == 0


def test_object_tensor_items_pass_through_the_loader():
    ds = _TensorPairs(6)
    src = source_from_object(ds)
    assert src.class_names == ["0", "1"] and src.labels.tolist() == [0, 1, 0, 1, 0, 1]
    transform = build_transform(PreprocessConfig(input_size=(8, 8)))
    (batch,) = list(iterate_batches(src, np.arange(6), transform, 6))
    torch.testing.assert_close(batch.images, ds.x)  # used as is, not re-transformed
    # A tensor of another size than the others (the model input) is skipped with its index named.
    odd = source_from_object(_TensorPairs(6, odd=4))
    (batch,) = list(iterate_batches(odd, np.arange(6), transform, 6))
    assert batch.indices.tolist() == [0, 1, 2, 3, 5]
    index, _, reason = batch.skipped[0]
    assert index == 4 and "item 4" in reason and "(3, 5, 5)" in reason and "(3, 8, 8)" in reason
    with pytest.raises(VitdepthError, match="item 4"):
        list(iterate_batches(odd, np.arange(6), transform, 6, strict=True))
    # prepare_item on its own: integer tensors and wrong ranks are refused per item.
    with pytest.raises(ImageLoadError, match="uint8"):
        prepare_item(torch.zeros(3, 8, 8, dtype=torch.uint8), transform, index=0)
    with pytest.raises(ImageLoadError, match=r"\(8, 8\)"):
        prepare_item(torch.zeros(8, 8), transform, index=0)
    assert prepare_item(Image.new("RGB", (4, 4)), transform).shape == (3, 8, 8)


def test_object_mixed_pil_and_tensor_items(pictures):
    root, rows = pictures
    transform = build_transform(PreprocessConfig(input_size=(8, 8)))
    tensor = torch.full((3, 8, 8), 0.5)
    items = [(Image.open(root / rows[0][0]), 0), (tensor, 1), (Image.open(root / rows[1][0]), 0)]
    (batch,) = list(iterate_batches(source_from_object(items), np.arange(3), transform, 3))
    assert batch.images.shape == (3, 3, 8, 8)
    torch.testing.assert_close(batch.images[1], tensor)
    torch.testing.assert_close(batch.images[0], transform(Image.open(root / rows[0][0])))


def test_object_dataloader_and_refusals(pictures, folder):
    root, rows = pictures
    loader = torch.utils.data.DataLoader(_PilPairs(root, rows, True), batch_size=4, shuffle=True)
    _assert_same_as_folder(source_from_object(loader), folder)

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield from ()

    with pytest.raises(VitdepthError, match="iterable-style") as info:
        source_from_object(torch.utils.data.DataLoader(Stream()))
    _one_line(info)
    with pytest.raises(VitdepthError, match="iterable-style") as info:
        source_from_object(Stream())
    _one_line(info)
    with pytest.raises(VitdepthError, match="create_source") as info:
        source_from_object("digits")
    _one_line(info)
    with pytest.raises(VitdepthError, match="one-hot") as info:
        source_from_object([(Image.new("RGB", (4, 4)), torch.tensor([0.0, 1.0]))])
    _one_line(info)
    with pytest.raises(VitdepthError, match="one label per item") as info:
        source_from_object(_PilPairs(root, rows, False), labels=[0, 1])
    _one_line(info)
    # Bare images: unlabelled.
    bare = source_from_object([Image.new("RGB", (4, 4))] * 3)
    assert not bare.labelled and bare.class_names == [UNLABELLED] and len(bare) == 3


def test_object_subset_uses_parent_targets(pictures, folder):
    root, rows = pictures
    parent = _PilPairs(root, rows, with_targets=True)
    sub = torch.utils.data.Subset(parent, [3, 15, 27])
    src = source_from_object(sub)
    assert parent.reads == 0 and src.labels.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(_pixels(src, 1), _pixels(folder, 15))


def test_object_hf_dataset(hf_cache, pictures, folder):
    ds = _hf_dataset(hf_cache, pictures)
    src = source_from_object(ds)
    assert src.kind == "hf-dataset" and src.spec.startswith("object:")
    _assert_same_as_folder(src, folder)
    with pytest.raises(VitdepthError, match="several splits.*ds\\['train'\\]") as info:
        source_from_object(hf_cache.DatasetDict({"train": ds}))
    _one_line(info)
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    assert len(source_from_object(loader)) == len(folder)


# ----------------------------------------------------------------------------------------------------------------
# registry


def test_new_specs_are_listed_and_parsed(tmp_path):
    specs = [spec for spec, _ in list_sources()]
    assert {"hf-dataset:PATH_OR_ID", "csv:FILE"} <= set(specs) and any(s.startswith("wds:") for s in specs)
    assert all("\n" not in d for _, d in list_sources())
    with pytest.raises(VitdepthError, match="unknown wds option 'lable'.*did you mean 'label'"):
        create_source(f"wds:{tmp_path}/x.tar:lable=cls")
    with pytest.raises(VitdepthError, match="names no data") as info:
        create_source("csv:")
    _one_line(info)
    with pytest.raises(VitdepthError, match=f"csv:{tmp_path}/t.csv"):
        create_source(f"{tmp_path}/t.csv")


def test_importing_data_does_not_import_optional_extras():
    import subprocess
    import sys

    code = (
        "import sys, vitdepth.data, vitdepth.data.hfdataset, vitdepth.data.wds\n"
        "print(sorted(m for m in ('datasets', 'webdataset', 'pandas', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ)
    assert out.stdout.strip() == "[]"


def test_bytes_io_roundtrip_of_decoder():
    # The shared byte decoder gives the same pixels as a file (what wds / arrow bytes rely on).
    from vitdepth.data.sources import decode_image_bytes

    img = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    np.testing.assert_array_equal(np.asarray(decode_image_bytes(buf.getvalue(), "x")), np.asarray(img))
    with pytest.raises(ImageLoadError):
        decode_image_bytes(b"nope", "x")


def test_object_classes_attribute_maps_labels():
    class Named(list):
        classes = ["cat", "dog"]

    src = source_from_object(Named([(Image.new("RGB", (4, 4)), "dog"), (Image.new("RGB", (4, 4)), "cat")]))
    assert src.class_names == ["cat", "dog"] and src.labels.tolist() == [1, 0]
    with pytest.raises(VitdepthError, match="label 2 but its 'classes'") as info:
        source_from_object(Named([(Image.new("RGB", (4, 4)), 2)]))
    _one_line(info)


def test_hf_plain_parquet_folder_uses_the_library_split_inference(hf_cache, pictures, folder, tmp_path):
    ds = _hf_dataset(hf_cache, pictures)
    data = tmp_path / "repo" / "data"
    data.mkdir(parents=True)
    ds.select(range(5)).to_parquet(str(data / "train-00000-of-00001.parquet"))
    ds.to_parquet(str(data / "validation-00000-of-00001.parquet"))
    src = create_source(f"hf-dataset:{tmp_path / 'repo'}")
    assert src.identity()["split"] == "validation" and src.item_name(3).endswith("[validation][3]")
    _assert_same_as_folder(src, folder)


def test_workers_get_the_same_batches(pictures, tmp_path):
    wds = pytest.importorskip("webdataset")
    _write_shards(wds, pictures, tmp_path)
    src = create_source(f"wds:{tmp_path}/shard-{{000000..000001}}.tar")
    transform = build_transform(PreprocessConfig(input_size=(8, 8)))
    one = torch.cat([b.images for b in iterate_batches(src, np.arange(30), transform, 8)])
    two = torch.cat([b.images for b in iterate_batches(src, np.arange(30), transform, 8, num_workers=2)])
    torch.testing.assert_close(one, two)


def test_tensor_items_with_a_transform_that_refuses_pil():
    # For tensor-only data the caller may pass a transform that takes no PIL images and has no output_shape: the
    # reference shape is then the first requested item's, found once, so a differing item is still skipped by index.
    def refuse(img):
        raise VitdepthError("no preprocessing for PIL images")

    src = source_from_object(_TensorPairs(6, odd=3))
    batches = list(iterate_batches(src, np.arange(6), refuse, 4, num_workers=0))
    assert [b.indices.tolist() for b in batches] == [[0, 1, 2], [4, 5]]
    assert batches[0].skipped[0][0] == 3 and "(3, 5, 5)" in batches[0].skipped[0][2]
    # The reference is the first requested item's shape: asked alone, item 3 is fine.
    (alone,) = list(iterate_batches(src, np.array([3]), refuse, 4))
    assert alone.images.shape == (1, 3, 5, 5)


def test_identities_are_json(hf_cache, pictures, tmp_path):
    import json

    wds = pytest.importorskip("webdataset")
    root, rows = pictures
    _write_shards(wds, pictures, tmp_path)
    table = tmp_path / "t.csv"
    _write_csv(table, ["path"], [(str(root / rel),) for rel, _ in rows[:3]])
    sources = [
        create_source(f"wds:{tmp_path}/shard-{{000000..000001}}.tar"),
        create_source(f"csv:{table}"),
        source_from_object(_hf_dataset(hf_cache, pictures)),
        source_from_object(_TensorPairs(4)),
    ]
    for src in sources:
        ident = src.identity()
        assert json.loads(json.dumps(ident)) == ident and ident["n"] == len(src)


# ----------------------------------------------------------------------------------------------------------------
# end to end: the same images through every spec give the same per-layer values (issue 11 acceptance)


def _layer_values(run_dir):
    with open(run_dir / "layers.csv", newline="") as f:
        return {(r["metric"], r["token_set"], r["layer"]): float(r["value"]) for r in csv.DictReader(f)}


def test_every_spec_gives_the_folder_values(hf_cache, pictures, tmp_path):
    wds = pytest.importorskip("webdataset")
    from conftest import tiny_timm_vit
    from vitdepth.analysis.run import analyze
    from vitdepth.metrics.catalog import METRICS

    root, rows = pictures
    _hf_dataset(hf_cache, pictures).save_to_disk(str(tmp_path / "saved"))
    table = root.parent / "e2e.csv"
    _write_csv(table, ["filename", "class"], [(f"tree/{rel}", CLASSES[c]) for rel, c in rows])
    shards = tmp_path / "shards"
    shards.mkdir()
    _write_shards(wds, pictures, shards)
    model = tiny_timm_vit()
    common = dict(quiet=True, figures=False, metrics="core", n_boot=20, n_boot_phases=5, num_workers=0)
    specs = {"folder": f"folder:{root}", "hf": f"hf-dataset:{tmp_path / 'saved'}", "csv": f"csv:{table}",
             "wds": f"wds:{shards}/shard-{{000000..000001}}.tar"}
    values = {k: _layer_values(analyze(model=model, data=spec, out=str(tmp_path / k), **common))
              for k, spec in specs.items()}
    for k in ("hf", "csv"):  # same images, same order, same labels: every row identical
        assert values[k] == values["folder"], k
    # wds splits by key hash, so probes differ; per-image metrics are means over all images: equal up to the
    # order of a float sum
    per_image = {key: v for key, v in values["folder"].items() if METRICS[key[0]].kind == "per_image"}
    assert per_image
    for key, v in per_image.items():
        assert values["wds"][key] == pytest.approx(v, rel=1e-9, abs=1e-12), key
