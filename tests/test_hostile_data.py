"""folder:PATH against hostile but realistic trees: link loops, FIFOs, outputs inside the data, unreadable class
folders, classes that miss a split, 32-bit TIFFs (issue 10, cases 7-11)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal

import numpy as np
import pytest
from PIL import Image

from vitdepth._errors import VitdepthError
from vitdepth.data import (
    SPLITS,
    FolderSource,
    ImageLoadError,
    create_source,
    split_coverage,
    stratified_splits,
)
from vitdepth.outputs import MARKER, OutputDir


def _png(path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)).save(path)


def _tree(root, counts: dict[str, int]) -> None:
    for cls, n in counts.items():
        for k in range(n):
            _png(root / cls / f"{cls}{k}.png", seed=k)


def _rel(src) -> list[str]:
    return [os.path.relpath(src.item_name(i), src.root).replace(os.sep, "/") for i in range(len(src))]


@contextlib.contextmanager
def _deadline(seconds: int):
    """Fail instead of hanging: a scan that opens a FIFO or walks a loop would block the test run forever."""

    def _fail(signum, frame):
        raise AssertionError(f"took longer than {seconds} s (hang)")

    old = signal.signal(signal.SIGALRM, _fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _one_warning(src, fragment: str) -> str:
    hits = [w for w in src.warnings if fragment in w]
    assert len(hits) == 1, src.warnings
    assert "\n" not in hits[0]
    return hits[0]


# ----------------------------------------------------------------------------------------------------------------
# 7. symbolic links


def test_link_loop_is_followed_once_and_never_steals_other_classes(tmp_path):
    root = tmp_path / "data"
    _tree(root, {"a": 12, "b": 12, "c": 12})  # 36 images, as in the report
    os.symlink("..", root / "a" / "loop")  # a/loop -> the dataset root: every class again, forever
    os.symlink(".", root / "b" / "self")  # b/self -> b itself
    (root / "c" / "sub").mkdir()
    _png(root / "c" / "sub" / "deep.png")
    os.symlink("..", root / "c" / "sub" / "up")  # c/sub/up -> c: a loop through a parent
    with _deadline(20):
        src = create_source(f"folder:{root}")
    assert src.class_names == ["a", "b", "c"]
    assert len(src) == 37
    np.testing.assert_array_equal(np.bincount(src.labels), [12, 12, 13])
    names = _rel(src)
    # Every item of 'a' lives in a/ itself, none reached through the link (which would give b's and c's images 'a').
    assert all(n.startswith(f"{src.class_names[label]}/") for n, label in zip(names, src.labels, strict=True))
    assert not any("loop" in n or "self" in n or "/up/" in n for n in names)
    assert names == sorted(names)  # stable, sorted indices
    line = _one_warning(src, "loop")
    assert line.startswith("3 ") and "a/loop" in line and "b/self" in line and "c/sub/up" in line


def test_link_into_another_class_is_not_followed_but_outside_links_are_once(tmp_path):
    root = tmp_path / "data"
    _tree(root, {"a": 2, "b": 3})
    os.symlink(root / "b", root / "a" / "bees")  # would make b's images members of 'a'
    shared = tmp_path / "shared"
    _tree(shared, {"x": 2})
    os.symlink(shared, root / "a" / "ext1")  # outside the dataset: followed
    os.symlink(shared, root / "a" / "ext2")  # the same folder again: not walked twice
    src = create_source(f"folder:{root}")
    np.testing.assert_array_equal(np.bincount(src.labels), [4, 3])
    assert _rel(src)[:4] == ["a/a0.png", "a/a1.png", "a/ext1/x/x0.png", "a/ext1/x/x1.png"]
    assert "a/bees" in _one_warning(src, "into another class")
    assert "a/ext2" in _one_warning(src, "loop")


def test_link_into_another_split_is_not_followed(tmp_path):
    root = tmp_path / "imagenet"
    _tree(root / "train", {"cat": 3, "dog": 3})
    _tree(root / "val", {"cat": 1, "dog": 1})
    os.symlink(root / "train" / "cat", root / "val" / "cat" / "more")  # would leak train images into val
    src = create_source(f"folder:{root}:split=val")
    assert _rel(src) == ["cat/cat0.png", "dog/dog0.png"]
    assert "cat/more" in _one_warning(src, "elsewhere in the dataset")


def test_class_level_links_to_the_root_or_another_class_are_skipped(tmp_path):
    root = tmp_path / "data"
    _tree(root, {"a": 2, "b": 2})
    os.symlink(".", root / "all")  # class 'all' would hold every image of the dataset
    os.symlink("a", root / "alias")  # class 'alias' would duplicate 'a' under another label
    src = create_source(f"folder:{root}")
    assert src.class_names == ["a", "b"] and len(src) == 4
    assert "all" in _one_warning(src, "loop")
    assert "alias" in _one_warning(src, "into another class")


def test_broken_links_are_skipped_with_one_summary_line(tmp_path):
    root = tmp_path / "data"
    _tree(root, {"a": 2, "b": 2})
    for k in range(5):
        os.symlink(tmp_path / f"missing{k}.png", root / "a" / f"gone{k}.png")
    os.symlink(tmp_path / "nowhere", root / "b" / "more")  # a dangling folder link
    os.symlink("itself", root / "b" / "itself")  # a link to itself (ELOOP)
    src = create_source(f"folder:{root}")
    assert len(src) == 4
    line = _one_warning(src, "broken")
    # One line for seven links: the count, three examples and how many more.
    assert line.startswith("7 broken") and "a/gone0.png" in line and "(4 more)" in line
    assert len(src.warnings) == 1


# ----------------------------------------------------------------------------------------------------------------
# 8. non-regular files


def test_fifo_named_like_an_image_is_skipped_without_opening_it(tmp_path):
    root = tmp_path / "data"
    _tree(root, {"a": 2, "b": 2})
    os.mkfifo(root / "a" / "pipe.png")
    os.symlink("../a/pipe.png", root / "b" / "link.png")  # a link to a FIFO is no regular file either
    os.symlink(root / "a" / "pipe.png", root / "b" / "link.png.tmp")  # not image-named: ignored like any file
    with _deadline(20):
        src = create_source(f"folder:{root}")
    assert _rel(src) == ["a/a0.png", "a/a1.png", "b/b0.png", "b/b1.png"]
    line = _one_warning(src, "FIFO")
    assert line.startswith("2 ") and "a/pipe.png" in line and "b/link.png" in line
    # A FIFO swapped in after the scan is refused by load() rather than opened (which would block forever).
    target = root / "a" / "a1.png"
    target.unlink()
    os.mkfifo(target)
    with _deadline(20), pytest.raises(ImageLoadError, match="not a regular file"):
        src.load(1)


# ----------------------------------------------------------------------------------------------------------------
# 9. vitdepth outputs and --out inside the data


def test_vitdepth_outputs_inside_the_data_are_not_read(tmp_path, monkeypatch):
    root = tmp_path / "data"
    _tree(root, {"a": 2, "b": 2})
    monkeypatch.chdir(tmp_path)
    # A real run output written by OutputDir, at class level: the next run must not find a class 'runs'.
    with OutputDir(root / "runs", "run") as od:
        _png(od.tmp / "figures" / "fig.png")
        od.commit()
    assert (root / "runs" / MARKER).is_file()
    # A legacy run (vitdepth's run.json, no marker) nested in a class, and a comparison at class level.
    legacy = root / "a" / "old_run"
    _png(legacy / "figures" / "fig.png")
    (legacy / "run.json").write_text(json.dumps({"vitdepth_version": "0.1"}))
    _png(root / "cmp" / "figures" / "fig.png")
    (root / "cmp" / "compare.json").write_text("{}")
    # A partial output (hidden) was already skipped.
    _png(root / ".runs.partial-123" / "figures" / "fig.png")
    src = create_source(f"folder:{root}")
    assert src.class_names == ["a", "b"]
    assert _rel(src) == ["a/a0.png", "a/a1.png", "b/b0.png", "b/b1.png"]
    line = _one_warning(src, "vitdepth output")
    assert line.startswith("3 ") and "runs" in line and "cmp" in line and "a/old_run" in line
    # A user's own run.json is not vitdepth's: its folder stays data.
    (root / "b" / "run.json").write_text(json.dumps({"epochs": 3}))
    assert len(create_source(f"folder:{root}")) == 4


def test_exclude_keeps_out_out_of_the_scan(tmp_path):
    root = tmp_path / "data"
    _tree(root, {"a": 2, "b": 2, "out": 3})
    _png(root / "a" / "nested_out" / "fig.png")
    # Without exclude, a not-yet-marked --out (plain folder of images) is a class like any other.
    assert create_source(f"folder:{root}").class_names == ["a", "b", "out"]
    src = create_source(f"folder:{root}", exclude=[root / "out", str(root / "a" / "nested_out"), tmp_path / "nope"])
    assert src.class_names == ["a", "b"] and len(src) == 4
    line = _one_warning(src, "excluded")
    assert line.startswith("2 ") and "out" in line and "a/nested_out" in line
    # Through a symlinked spelling of the same folder, and on the class FolderSource directly.
    os.symlink(root / "out", tmp_path / "out_link")
    direct = FolderSource(f"folder:{root}", root, exclude=[tmp_path / "out_link"])
    assert direct.class_names == ["a", "b"]
    # Sources that read no folder accept and ignore exclude.
    assert len(create_source("synthetic:n=4,size=8", seed=0, exclude=[root])) == 4
    with pytest.raises(VitdepthError, match="no class subdirectories.*excluded") as info:
        create_source(f"folder:{root}", exclude=[root / "a", root / "b", root / "out"])
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------------------------------------------
# 10. split coverage and unreadable class folders


def test_split_coverage_names_a_class_that_never_reaches_test():
    names = ["cat", "dog", "solo"]
    labels = np.repeat(np.arange(3), [10, 10, 1])
    codes = stratified_splits(labels, seed=0)
    lines = split_coverage(labels, codes, names)
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "test split" in lines[0] and "solo (1 image)" in lines[0] and "cat" not in lines[0]
    # Balanced classes reach train and test: nothing to say.
    balanced = np.repeat(np.arange(3), 10)
    assert split_coverage(balanced, stratified_splits(balanced, seed=0), names) == []


def test_split_coverage_absent_classes_val_and_many_names():
    names = [f"c{k}" for k in range(9)]
    labels = np.repeat(np.arange(8), [4] + [1] * 7)  # c8 has no item at all; c1..c7 are singletons
    codes = stratified_splits(labels, seed=0)
    lines = split_coverage(labels, codes, names)
    assert lines[0].startswith("1 class(es) have no analysed image") and "c8" in lines[0]
    test_line = next(line for line in lines if "test split" in line)
    # Up to 5 named, the rest counted; singletons the refill moved to test are not named.
    missing = [k for k in range(1, 8) if not (codes[labels == k] == 2).any()]
    assert test_line.startswith(f"{len(missing)} class(es)") and f"({len(missing) - 5} more)" in test_line
    assert not any("val split" in line for line in lines)  # val is not required by default
    with_val = split_coverage(labels, codes, names, required=SPLITS)
    assert any("val split" in line for line in with_val)
    with pytest.raises(ValueError, match="same shape"):
        split_coverage(labels, codes[:-1], names)
    with pytest.raises(ValueError, match="labels must lie"):
        split_coverage(labels, codes, names[:3])


def _deny(monkeypatch, blocked) -> None:
    """Make os.scandir fail with EACCES for ``blocked``, as chmod 000 does for a non-root user."""
    real_scandir = os.scandir
    blocked = {os.fspath(p) for p in blocked}

    def scandir(path="."):
        if os.fspath(path) in blocked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)


def test_unreadable_class_folder_is_reported_with_the_reason(tmp_path, monkeypatch):
    root = tmp_path / "data"
    _tree(root, {"a": 2, "b": 2, "c": 2})
    _png(root / "c" / "locked" / "x.png")
    _deny(monkeypatch, [root / "b", root / "c" / "locked"])
    src = create_source(f"folder:{root}")
    assert src.class_names == ["a", "c"] and len(src) == 4
    line = _one_warning(src, f"'{root / 'b'}'")
    assert "cannot be read: Permission denied" in line and "has no images" not in line
    assert "c/locked" in _one_warning(src, "cannot be read (permissions)")
    # Every class unreadable: the error says why instead of "no images".
    _deny(monkeypatch, [root / "a", root / "b", root / "c"])
    with pytest.raises(VitdepthError, match="cannot be read \\(Permission denied\\)") as info:
        create_source(f"folder:{root}")
    assert "\n" not in str(info.value)
    # The dataset root itself.
    monkeypatch.undo()
    _deny(monkeypatch, [root])
    with pytest.raises(VitdepthError, match="cannot be read: Permission denied; fix its permissions"):
        create_source(f"folder:{root}")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads chmod 000 folders")
def test_unreadable_class_folder_with_real_permissions(tmp_path):
    root = tmp_path / "data"
    _tree(root, {"a": 2, "b": 2})
    (root / "b").chmod(0)
    try:
        src = create_source(f"folder:{root}")
        assert src.class_names == ["a"]
        assert "cannot be read: Permission denied" in _one_warning(src, f"'{root / 'b'}'")
    finally:
        (root / "b").chmod(0o755)


# ----------------------------------------------------------------------------------------------------------------
# 11. 32-bit integer and float images


def _ramp(dtype, lo, hi) -> np.ndarray:
    return np.linspace(lo, hi, 8 * 16).astype(dtype).reshape(8, 16)


def _grey(src, i) -> np.ndarray:
    rgb = np.asarray(src.load(i))
    assert rgb.dtype == np.uint8 and rgb.shape[2] == 3
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 1])
    return rgb[..., 0].astype(int)


def test_32bit_integer_and_float_tiffs_are_scaled_not_black(tmp_path):
    root = tmp_path / "data"
    images = {
        "a/i32.tif": _ramp(np.int32, 0, 70000),  # beyond 16 bits: stretched
        "a/i32neg.tif": _ramp(np.int32, -500, 500),
        "a/i16inI.tif": _ramp(np.int32, 0, 65535),  # 16-bit data in an I image: the fixed 16-bit scale
        "b/f32.tif": _ramp(np.float32, 0.0, 1.0),  # the float convention: 0..1
        "b/f32wide.tif": _ramp(np.float32, -3.0, 40.0),
        "b/f32const.tif": np.full((8, 16), 7.5, np.float32),
    }
    for rel, arr in images.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(root / rel)
    modes = {rel: Image.open(root / rel).mode for rel in images}
    assert modes["a/i32.tif"] == "I" and modes["b/f32.tif"] == "F"
    src = create_source(f"folder:{root}")
    index = {name: i for i, name in enumerate(_rel(src))}
    for rel, arr in images.items():
        grey = _grey(src, index[rel])
        if rel == "b/f32const.tif":
            assert (grey == 128).all()  # constant outside both conventions: mid-grey, documented
            continue
        assert grey.max() == 255 and grey.min() == 0, rel  # full range, not all black nor clipped white
        flat, out = arr.ravel(), grey.ravel()
        # Order preserved: brighter input stays brighter (or equal after rounding).
        assert np.all(np.diff(out[np.argsort(flat, kind="stable")]) >= 0), rel
    np.testing.assert_array_equal(_grey(src, index["b/f32.tif"]), np.rint(images["b/f32.tif"] * 255.0))
    np.testing.assert_array_equal(_grey(src, index["a/i16inI.tif"]), np.rint(images["a/i16inI.tif"] / 257.0))


def test_float_tiff_with_nan_and_inf(tmp_path):
    root = tmp_path / "data"
    arr = _ramp(np.float32, 0.0, 10.0)
    arr[0, 0], arr[0, 1], arr[0, 2] = np.nan, np.inf, -np.inf
    (root / "a").mkdir(parents=True)
    Image.fromarray(arr).save(root / "a" / "x.tif")
    Image.fromarray(np.full((4, 4), np.nan, np.float32)).save(root / "a" / "y.tif")
    src = create_source(f"folder:{root}")
    grey = _grey(src, 0)
    assert (grey[0, 0], grey[0, 1], grey[0, 2]) == (0, 255, 0) and grey[-1, -1] == 255
    with pytest.raises(ImageLoadError, match="no finite pixel"):
        src.load(1)
