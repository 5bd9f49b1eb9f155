"""folder:PATH:split=NAME, and the refusal to read an ImageNet-style root with splits as a class tree."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from vitdepth._errors import VitdepthError
from vitdepth.data import FolderSource, create_source


def _png(path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def split_root(tmp_path):
    """ROOT/train/{cat,dog,fish} and ROOT/val/{cat,dog} (different image counts), plus a hidden folder."""
    root = tmp_path / "imagenet"
    counts = {"train": {"cat": 3, "dog": 2, "fish": 1}, "val": {"cat": 1, "dog": 2}}
    for split, classes in counts.items():
        for cls, n in classes.items():
            for k in range(n):
                _png(root / split / cls / f"{cls}{k}.png", seed=k)
    _png(root / ".cache" / "x" / "y.png")
    return root


def _rel(src, root) -> list[str]:
    return [os.path.relpath(src.item_name(i), root).replace(os.sep, "/") for i in range(len(src))]


def test_split_reads_the_named_class_tree(split_root):
    val = create_source(f"folder:{split_root}:split=val")
    assert isinstance(val, FolderSource)
    assert val.class_names == ["cat", "dog"] and len(val) == 3
    assert _rel(val, split_root) == ["val/cat/cat0.png", "val/dog/dog0.png", "val/dog/dog1.png"]
    np.testing.assert_array_equal(val.labels, [0, 1, 1])
    assert val.load(0).mode == "RGB"
    ident = val.identity()
    assert ident["split"] == "val" and ident["root"] == str(split_root / "val") and ident["num_classes"] == 2

    train = create_source(f"folder:{split_root}:split=train")
    assert train.class_names == ["cat", "dog", "fish"] and len(train) == 6
    assert train.identity()["content_hash"] != ident["content_hash"]
    # The same class tree named directly has the same images and content hash; only the recorded split differs.
    direct = create_source(f"folder:{split_root / 'val'}")
    assert direct.identity()["content_hash"] == ident["content_hash"] and direct.identity()["split"] is None


def test_split_root_is_refused_without_split(split_root):
    with pytest.raises(VitdepthError) as info:
        create_source(f"folder:{split_root}")
    msg = str(info.value)
    assert "\n" not in msg
    assert "looks like a dataset root with splits train, val" in msg
    assert f"folder:{split_root}:split=val (or train)" in msg
    # split=. reads the root itself as the class tree, for the rare dataset whose classes are called train/val.
    forced = create_source(f"folder:{split_root}:split=.")
    assert forced.class_names == ["train", "val"] and len(forced) == 9


@pytest.mark.parametrize("names", [("train",), ("Train", "Test"), ("validation", "test", "extra")])
def test_split_names_variants_refused(tmp_path, names):
    for name in names:
        _png(tmp_path / name / "a" / "x.png")
    with pytest.raises(VitdepthError, match="looks like a dataset root with splits"):
        create_source(f"folder:{tmp_path}")


def test_split_named_classes_without_subfolders_are_classes(tmp_path):
    # Flat image folders named like splits are classes; so is a lone "test" class next to ordinary ones.
    _png(tmp_path / "flat" / "train" / "a.png")
    _png(tmp_path / "flat" / "val" / "b.png")
    assert create_source(f"folder:{tmp_path / 'flat'}").class_names == ["train", "val"]
    _png(tmp_path / "mixed" / "cat" / "a.png")
    _png(tmp_path / "mixed" / "test" / "sub" / "b.png")
    assert create_source(f"folder:{tmp_path / 'mixed'}").class_names == ["cat", "test"]


def test_missing_split_lists_existing(split_root):
    with pytest.raises(VitdepthError) as info:
        create_source(f"folder:{split_root}:split=test")
    msg = str(info.value)
    assert "\n" not in msg and "no split folder 'test'" in msg and "its folders are train, val" in msg
    assert ".cache" not in msg


def test_split_spec_errors(tmp_path, split_root):
    with pytest.raises(VitdepthError, match="empty split name"):
        create_source(f"folder:{split_root}:split=")
    with pytest.raises(VitdepthError, match="names no folder"):
        create_source("folder::split=val")
    with pytest.raises(VitdepthError, match="does not exist"):
        create_source(f"folder:{tmp_path / 'nope'}:split=val")
    with pytest.raises(VitdepthError, match="only folder option is ':split=NAME'"):
        create_source(f"folder:{split_root}:spilt=val")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VitdepthError, match="it has no subfolders"):
        create_source(f"folder:{tmp_path / 'empty'}:split=val")


def test_path_with_colon_parses_last_split(tmp_path):
    root = tmp_path / "a:b"
    _png(root / "val" / "cat" / "x.png")
    _png(root / "val" / "dog" / "y.png")
    src = create_source(f"folder:{root}:split=val")
    assert src.class_names == ["cat", "dog"] and src.identity()["split"] == "val"


def test_plain_class_folders_unaffected(tmp_path):
    for cls in ("cat", "dog"):
        _png(tmp_path / cls / "a.png")
        _png(tmp_path / cls / "nested" / "b.png")
    src = create_source(f"folder:{tmp_path}")
    assert src.class_names == ["cat", "dog"] and len(src) == 4
    assert src.identity()["split"] is None and src.identity()["root"] == str(tmp_path)
