"""Labelled image sources, created from a spec string.

A :class:`DataSource` is a random-access list of labelled RGB PIL images. Preprocessing lives in
:mod:`vitdepth.data.transforms` and batching in :mod:`vitdepth.data.loader`, so a source only knows how to
find and decode its images. Specs:

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download).
- ``synthetic[:n=2000,classes=10,size=224]``: procedurally generated gratings, made lazily per item.
- ``folder:PATH``: an ImageFolder tree ``PATH/<class>/<image>``; a folder of loose images without class
  subfolders is read as unlabelled data.
- ``folder:PATH:split=NAME``: one split of an ImageNet-style root, ``PATH/NAME/<class>/<image>``. A plain
  ``folder:PATH`` whose folders are split names (``train``, ``val``, ...) is refused with this hint.
- ``hf-dataset:PATH_OR_ID[:split=NAME,image=COL,label=COL,config=NAME]``: a Hugging Face ``datasets`` dataset
  (:mod:`vitdepth.data.hfdataset`).
- ``wds:PATTERN[:image=EXT,label=EXT]``: webdataset tar shards, e.g. ``train-{000000..000009}.tar``
  (:mod:`vitdepth.data.wds`).
- ``csv:FILE[:path=COL,label=COL]``: a table of image paths and labels (:mod:`vitdepth.data.tabular`).

In-memory datasets (a torch ``Dataset`` or ``DataLoader``, a Hugging Face ``Dataset``) become sources through
:func:`vitdepth.data.source_from_object`.

Example:
    >>> src = create_source("synthetic:n=20,classes=4,size=32", seed=0)
    >>> len(src), src.class_names[:2], src.load(0).size
    (20, ['class0', 'class1'], (32, 32))
"""

from __future__ import annotations

import colorsys
import difflib
import hashlib
import io
import json
import math
import operator
import os
import re
import stat
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .._errors import VitdepthError
from ..outputs import is_vitdepth_output
from ..specs import DATA_SPECS, data_forms, unknown_data_spec_message
from .transforms import to_rgb

if TYPE_CHECKING:
    import torch

__all__ = [
    "IMAGE_EXTENSIONS",
    "DataSource",
    "DigitsSource",
    "FolderSource",
    "ImageLoadError",
    "SyntheticSource",
    "UNLABELLED",
    "create_source",
    "list_sources",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

# The one class name of an unlabelled source (all labels 0); the parentheses keep it from clashing with a folder name.
UNLABELLED = "(unlabelled)"


@dataclass(eq=False)  # eq=False keeps exceptions hashable, as the traceback machinery expects
class ImageLoadError(Exception):
    """An image file that cannot be decoded (unreadable, truncated, or not an image).

    Attributes:
        name: The item's name (its file path for folders).
        reason: What the decoder reported.
    """

    name: str
    reason: str

    def __post_init__(self) -> None:
        # The dataclass __init__ bypasses Exception.__init__; setting args keeps pickling (DataLoader workers)
        # and repr working.
        Exception.__init__(self, self.name, self.reason)

    def __str__(self) -> str:
        return f"cannot read image '{self.name}': {self.reason}"


def _sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _seed_entropy(seed: int) -> int:
    # SeedSequence rejects negative entropy; wrapping to 64 bits keeps every int seed valid and distinct.
    return int(seed) & 0xFFFF_FFFF_FFFF_FFFF


class DataSource(ABC):
    """A random-access list of labelled RGB images.

    Attributes:
        spec: The spec string the source was created from.
        class_names: Name of each class; label ``k`` means ``class_names[k]``.
        labels: ``(N,)`` int64 labels in ``[0, len(class_names))``.
        warnings: Things the user should know that are not errors (e.g. empty class folders that were dropped).
        labelled: False for data without labels (a folder of loose images, a table without a label column): then
            ``labels`` is all zeros and ``class_names`` is ``[UNLABELLED]``, and label-based measurements (probes,
            neural collapse) do not apply.
    """

    kind: str = ""
    spec: str
    class_names: list[str]
    labels: np.ndarray
    warnings: list[str]
    labelled: bool = True

    def _set_unlabelled(self, n: int) -> None:
        """Make this an unlabelled source of ``n`` items (labels all 0, one class :data:`UNLABELLED`)."""
        self.labelled = False
        self.class_names = [UNLABELLED]
        self.labels = np.zeros(int(n), dtype=np.int64)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(spec={self.spec!r}, n={len(self)}, num_classes={len(self.class_names)})"

    def _check_index(self, i: int) -> int:
        i = operator.index(i)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} is out of range for {self.spec!r} with {len(self)} items")
        return i

    @abstractmethod
    def load(self, i: int) -> Image.Image | torch.Tensor:
        """Decode item ``i``.

        Args:
            i: Item index in ``[0, len(self))``.

        Returns:
            The image in RGB mode. Sources wrapping a user's dataset (:func:`~vitdepth.data.source_from_object`)
            may instead return the ``(3, H, W)`` float tensor that dataset's own transform made; the loader uses
            such a tensor as it is (:func:`~vitdepth.data.prepare_item`).

        Raises:
            ImageLoadError: The file cannot be decoded.
            IndexError: ``i`` is out of range.
        """

    def load_draft(self, i: int, draft_size: tuple[int, int] | None) -> Image.Image | torch.Tensor:
        """Decode item ``i``, letting a JPEG decoder downscale it to no less than ``draft_size``.

        Sources that decode encoded files (folders, CSV tables, webdataset shards, Hugging Face datasets holding
        bytes or paths) pass ``draft_size`` to PIL's ``Image.draft`` for JPEG images (``img.format`` JPEG or MPO)
        large enough to shrink by at least 2x: the decoder then scales by 1/2, 1/4 or 1/8 in the DCT domain and
        the result is at least ``draft_size`` in both dimensions (aspect ratio kept). Other formats and smaller
        JPEGs decode exactly as :meth:`load` does. The default (sources that hold decoded pixels) is :meth:`load`.
        :func:`~vitdepth.data.transforms.draft_size_for` says what size a transform needs.

        Args:
            i: Item index in ``[0, len(self))``.
            draft_size: ``(width, height)`` the decoded image must at least have, or None for :meth:`load`.

        Returns:
            As :meth:`load`.

        Raises:
            ImageLoadError: The file cannot be decoded.
            IndexError: ``i`` is out of range.
        """
        return self.load(i)

    def item_name(self, i: int) -> str:
        """Human-readable name of item ``i`` for reports and error messages (e.g. ``digits[12]``)."""
        return f"{self.kind}[{self._check_index(i)}]"

    @abstractmethod
    def _content_hash(self) -> str:
        """sha256 hex digest that changes whenever the images or labels change."""

    def identity(self) -> dict[str, Any]:
        """Describe the data for ``run.json``: enough to tell whether two runs saw the same images.

        Returns:
            A JSON-ready dict with ``spec``, ``kind``, ``n``, ``num_classes``, ``class_names``, ``labelled`` and a
            sha256 ``content_hash``.
        """
        return {
            "spec": self.spec,
            "kind": self.kind,
            "n": len(self),
            "num_classes": len(self.class_names),
            "class_names": list(self.class_names),
            "labelled": bool(self.labelled),
            "content_hash": self._content_hash(),
        }

    def assign_splits(self, fractions: tuple[float, float, float]) -> np.ndarray | None:
        """Train/val/test split of every item fixed by the data itself, or None to use stratified splits.

        Most sources have no such split and return None: the analysis then draws class-stratified splits
        (:func:`~vitdepth.data.stratified_splits`). Sharded sources (``wds:``) return a split per item from a
        stable hash of its key, so an item keeps its split whatever the shard order or subset.

        Args:
            fractions: ``(train, val, test)`` fractions, non-negative and summing to 1.

        Returns:
            ``(N,)`` int8 split codes (0 train, 1 val, 2 test; see :data:`~vitdepth.data.SPLITS`) for all items,
            or None.
        """
        return None


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: images (1797, 8, 8) float64 in 0..16 and labels (1797,), as ``load_digits`` gives.

    Read straight from the file scikit-learn ships and ``load_digits`` parses (``sklearn/datasets/data/
    digits.csv.gz``: 64 pixels and the label per row), found without importing scikit-learn, whose import takes
    about a second: most of what a small ``analyze --data digits`` or ``vitdepth demo`` would otherwise spend
    before its first image. Falls back to ``load_digits`` if the file is not where that version keeps it.
    """
    import gzip
    import importlib.util

    found = importlib.util.find_spec("sklearn")
    for root in (found.submodule_search_locations or []) if found is not None else []:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, "rt") as f:
                data = np.loadtxt(f, delimiter=",")
            if data.shape == (1797, 65):
                return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.asarray(digits.images, dtype=np.float64), np.asarray(digits.target, dtype=np.int64)


class DigitsSource(DataSource):
    """scikit-learn's bundled handwritten digits: 1,797 8x8 images of 0-9, no download needed.

    Pixels (0..16 in scikit-learn) are scaled to 0..255 and replicated to three channels; the transform upsamples
    them to the model's input size.

    Args:
        spec: The spec string (``"digits"``).
    """

    kind = "digits"

    def __init__(self, spec: str = "digits") -> None:
        images, target = load_digits_arrays()
        self.spec = spec
        self.class_names = [str(c) for c in range(10)]
        self.labels = np.asarray(target, dtype=np.int64)
        self.warnings = []
        gray = np.rint(np.asarray(images, dtype=np.float64) * (255.0 / 16.0))
        self._images = np.ascontiguousarray(np.clip(gray, 0, 255).astype(np.uint8))

    def load(self, i: int) -> Image.Image:  # noqa: D102 - documented on DataSource
        gray = self._images[self._check_index(i)]
        return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2))

    def _content_hash(self) -> str:
        h = hashlib.sha256()
        h.update(self._images.tobytes())
        h.update(self.labels.tobytes())
        return h.hexdigest()


# Bump whenever SyntheticSource's pictures change, so content hashes of old runs stop matching.
_SYNTHETIC_VERSION = 1
_SYNTHETIC_DEFAULTS = {"n": 2000, "classes": 10, "size": 224}
_SYNTHETIC_MIN = {"n": 1, "classes": 2, "size": 8}
# Distinct stream tags so the label permutation and the per-item images never share random numbers.
_SALT_LABELS = 0x5EED_1AB1
_SALT_ITEMS = 0x5EED_17E5
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


class SyntheticSource(DataSource):
    """Procedurally generated labelled images of any size and count.

    Each image is a sinusoidal grating whose orientation and spatial frequency depend on the class, tinted with a
    class-dependent hue, with a random phase and contrast, a randomly placed Gaussian blob of random colour and
    grey Gaussian pixel noise. Orientation and frequency need spatial features to read out (with a random phase their
    pixel average is zero); the hue is linearly visible in raw pixels but jittered and only partly separates
    neighbouring classes. A linear probe therefore does better on learned features than on pixels, while no
    class is hopeless.

    Images are made in :meth:`load` from a generator seeded by ``(seed, i)``, so nothing is materialised, items
    can be loaded in any order or in worker processes, and the pictures are the same for the same
    ``(seed, n, classes, size)``. Labels are balanced: ``i % classes``, permuted by the seed.

    Args:
        spec: The spec string it was created from.
        n: Number of images.
        classes: Number of classes (>= 2).
        size: Image side in pixels (square images).
        seed: Seed for labels and pictures.
    """

    kind = "synthetic"

    def __init__(self, spec: str, n: int, classes: int, size: int, seed: int = 0) -> None:
        self.spec = spec
        self.n, self.num_classes, self.size, self.seed = int(n), int(classes), int(size), int(seed)
        self.class_names = [f"class{c}" for c in range(self.num_classes)]
        self.warnings = []
        label_rng = np.random.default_rng([_SALT_LABELS, _seed_entropy(self.seed)])
        self.labels = label_rng.permutation(np.arange(self.n, dtype=np.int64) % self.num_classes)
        # Class prototypes depend on the class index only, so "class3" looks alike under every seed.
        c = np.arange(self.num_classes)
        self._theta = np.pi * c / self.num_classes
        # Golden-ratio sequences spread frequency and hue over their ranges for any class count and decorrelate
        # them from orientation, so no single cue orders the classes.
        self._cycles = 2.0 + 4.0 * ((c * _GOLDEN * _GOLDEN + 0.5) % 1.0)
        self._hue = (c * _GOLDEN) % 1.0
        self._coords = np.arange(self.size, dtype=np.float32) - (self.size - 1) / 2.0

    def _params(self) -> dict[str, int]:
        return {"n": self.n, "classes": self.num_classes, "size": self.size}

    def item_name(self, i: int) -> str:  # noqa: D102 - documented on DataSource
        return f"synthetic[{self._check_index(i)}]"

    def load(self, i: int) -> Image.Image:  # noqa: D102 - documented on DataSource
        i = self._check_index(i)
        c = int(self.labels[i])
        rng = np.random.default_rng([_SALT_ITEMS, _seed_entropy(self.seed), i])
        size, x = self.size, self._coords
        y = x  # square images share the coordinate vector

        # Grating: jitter a quarter of the class spacing in orientation, so neighbouring classes overlap a little.
        theta = self._theta[c] + rng.normal(0.0, 0.25 * np.pi / self.num_classes)
        cycles = self._cycles[c] * math.exp(rng.normal(0.0, 0.08))
        phase = rng.uniform(0.0, 2.0 * np.pi)
        contrast = rng.uniform(0.25, 0.6)
        tint = colorsys.hsv_to_rgb(
            (self._hue[c] + rng.normal(0.0, 0.03)) % 1.0, rng.uniform(0.2, 0.6), rng.uniform(0.5, 0.85)
        )
        # Blob: a class-independent distractor, so that no fixed pixel location is reliable.
        cx, cy = rng.uniform(0.15, 0.85, size=2) * size - (size - 1) / 2.0
        sigma = rng.uniform(0.05, 0.15) * size
        strength = rng.uniform(0.5, 1.0)
        blob_rgb = rng.uniform(0.0, 1.0, size=3)
        noise_sd = rng.uniform(0.02, 0.08)

        # Three planes, filled in place: numpy time here went mostly to page-faulting fresh temporaries.
        planes = np.empty((3, size, size), dtype=np.float32)
        lum, alpha, noise = planes
        k = 2.0 * np.pi * cycles / size
        ax = (k * math.cos(theta)) * x + phase
        ay = (k * math.sin(theta)) * y
        # sin(kx*x + ky*y + phase) as two outer products: O(size) transcendental calls instead of O(size^2).
        np.multiply.outer(np.cos(ay), np.sin(ax), out=lum)
        np.multiply.outer(np.sin(ay), np.cos(ax), out=alpha)
        lum += alpha
        lum *= contrast
        lum += 1.0
        gx = np.exp(-((x - cx) ** 2) / (2 * sigma**2)).astype(np.float32)
        gy = np.exp(-((y - cy) ** 2) / (2 * sigma**2)).astype(np.float32) * np.float32(strength)
        np.multiply.outer(gy, gx, out=alpha)
        np.multiply(lum, alpha, out=noise)
        lum -= noise  # lum * (1 - alpha): the blob covers the grating
        # Grey noise (one draw per pixel, shared by the channels): a third of the cost of colour noise.
        rng.standard_normal(dtype=np.float32, out=noise)

        # All channels in one small matmul, (pixels x planes) @ (planes x RGB), rather than several passes over
        # an (H, W, 3) array.
        colours = np.asarray([tint, blob_rgb, [noise_sd] * 3], dtype=np.float32) * np.float32(255.0)
        img = planes.reshape(3, -1).T @ colours
        img += 0.5
        np.clip(img, 0.0, 255.0, out=img)
        return Image.fromarray(img.astype(np.uint8).reshape(size, size, 3))

    def _content_hash(self) -> str:
        return _sha256_json({"kind": self.kind, "version": _SYNTHETIC_VERSION, "seed": self.seed, **self._params()})

    def identity(self) -> dict[str, Any]:  # noqa: D102 - documented on DataSource
        out = super().identity()
        out.update(options=self._params(), seed=self.seed, generator_version=_SYNTHETIC_VERSION)
        return out


def hash_labels(h, class_names, labels: np.ndarray, rows: np.ndarray | None = None) -> None:
    """Feed class names, labels and (where a source keeps only some rows) the row indices into a content hash."""
    h.update("\n".join(class_names).encode() + b"\0")
    h.update(labels.tobytes())
    if rows is not None:
        h.update(rows.tobytes())


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


# Folder names that mark the splits of a dataset root (ImageNet-style ROOT/train/<class>/..., ROOT/val/<class>/...).
_SPLIT_NAMES = frozenset({"train", "val", "validation", "valid", "test"})
_VAL_NAMES = ("val", "validation", "valid")

# What a folder scan leaves out, by kind: one summary warning per kind (count and a few examples), never one line
# per file, because a single bad link can stand for thousands of entries. Order is the order of the warnings.
_SKIP_TEXT = {
    "revisit": "directory link(s) to a folder already scanned or to one of its parents (a loop) were not followed",
    "other_class": "directory link(s) into another class or elsewhere in the dataset were not followed",
    "broken": "broken symbolic link(s) (missing or looping target) were skipped",
    "special": "image-named entries that are not regular files (FIFO, socket, device) were skipped, never opened",
    "unreadable": "entries that cannot be read (permissions) were skipped",
    "output": "vitdepth output folder(s) (a run, comparison, demo ...) inside the data were not read as data",
    "excluded": "excluded folder(s) (e.g. this command's --out) inside the data were not read",
}
_SKIP_EXAMPLES = 3


class _Skips:
    """Entries a folder scan left out, collected by kind and summarised as one warning per kind."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.paths: dict[str, list[str]] = {kind: [] for kind in _SKIP_TEXT}

    def add(self, kind: str, path: str) -> None:
        self.paths[kind].append(path)

    def warnings(self) -> list[str]:
        out = []
        for kind, paths in self.paths.items():
            if not paths:
                continue
            # Paths relative to the class tree keep the line short; the tree itself is in run.json.
            rel = sorted(os.path.relpath(p, self.root) for p in paths)
            more = f", ... ({len(rel) - _SKIP_EXAMPLES} more)" if len(rel) > _SKIP_EXAMPLES else ""
            out.append(f"{len(rel)} {_SKIP_TEXT[kind]}: {', '.join(rel[:_SKIP_EXAMPLES])}{more}")
        return out


def _is_within(path: str, folder: str) -> bool:
    """Whether real path ``path`` is ``folder`` or lies inside it (both absolute and resolved)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _is_broken_link(entry: os.DirEntry[str]) -> bool:
    # os.path.exists follows the link and is False for a missing target and for a link loop (ELOOP).
    return entry.is_symlink() and not os.path.exists(entry.path)


def _entry_is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # e.g. ELOOP on a link that points at itself: reported as a broken link by the caller
        return False


@dataclass
class _ScanContext:
    """What every directory test of one folder scan needs: the other classes, the exclusions, the skip record."""

    dataset: str  # real path of the dataset root (above the split folder for split=NAME)
    other_classes: tuple[str, ...]  # real paths of the other class folders
    exclude: tuple[str, ...]  # real paths never read as data
    skips: _Skips


def _dir_skip(ctx: _ScanContext, path: str, real: str, is_link: bool, visited: set[str], top_real: str) -> str | None:
    """Why the directory ``path`` (real path ``real``) must not be walked, as a :data:`_SKIP_TEXT` key, or None."""
    if real in visited:
        return "revisit"
    if is_link:
        # A link to the class folder, one of its parents or a folder inside it would walk images twice (a/loop -> ..
        # turned 36 images into 11,357); a link into another class (or another split of the same root) would give
        # those images to this class too.
        if _is_within(top_real, real) or _is_within(real, top_real):
            return "revisit"
        if _is_within(real, ctx.dataset) or any(_is_within(o, real) or _is_within(real, o) for o in ctx.other_classes):
            return "other_class"
    if any(_is_within(real, ex) for ex in ctx.exclude):
        return "excluded"
    # An --out inside the dataset root: the next run would read the first run's figures as images.
    if _is_output(path):
        return "output"
    return None


def _is_output(path: str) -> bool:
    try:
        return is_vitdepth_output(Path(path))
    except OSError:  # a folder without search permission: the walk reports it as unreadable instead
        return False


def _walk_images(ctx: _ScanContext, top: str, top_real: str) -> Iterator[str]:
    """Yield the image files under ``top`` (unsorted), following directory links at most once.

    Hidden entries are ignored; links that loop, lead into another class, vitdepth outputs, excluded folders,
    broken links, non-regular files and unreadable subfolders are recorded in ``ctx.skips``. Nothing is opened.

    Raises:
        OSError: ``top`` itself cannot be listed (the caller names the class folder).
    """
    visited = {top_real}
    stack = [(top, top_real)]
    while stack:
        path, real = stack.pop()
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            if path == top:
                raise
            ctx.skips.add("unreadable", path)
            continue
        subdirs = []
        for entry in entries:
            if _is_hidden(entry.name):
                continue
            if _entry_is_dir(entry):
                is_link = entry.is_symlink()
                # A plain child of a resolved folder needs no realpath call (one lstat per path component).
                child_real = os.path.realpath(entry.path) if is_link else os.path.join(real, entry.name)
                kind = _dir_skip(ctx, entry.path, child_real, is_link, visited, top_real)
                if kind:
                    ctx.skips.add(kind, entry.path)
                    continue
                visited.add(child_real)
                subdirs.append((entry.path, child_real))
            elif _is_broken_link(entry):
                ctx.skips.add("broken", entry.path)
            elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
                # is_file() follows links and is False for a FIFO, which would block the first open() forever.
                try:
                    regular = entry.is_file()
                except OSError:  # a link whose target cannot be examined (no search permission on its folder)
                    ctx.skips.add("unreadable", entry.path)
                    continue
                if regular:
                    yield entry.path
                else:
                    ctx.skips.add("special", entry.path)
        stack.extend(reversed(subdirs))


def _has_nested_images(folder: Path) -> bool:
    """Whether some non-hidden subdirectory of ``folder`` holds an image (at any depth); stops at the first."""
    ctx = _ScanContext(dataset=os.path.realpath(folder), other_classes=(), exclude=(), skips=_Skips(str(folder)))
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return False
    for entry in entries:
        if _is_hidden(entry.name) or not _entry_is_dir(entry):
            continue
        try:
            if next(_walk_images(ctx, entry.path, os.path.realpath(entry.path)), None) is not None:
                return True
        except OSError:
            continue
    return False


def _list_names(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _list_dir(folder: Path) -> list[os.DirEntry[str]]:
    """The sorted entries of a data folder the user named; an unreadable one is a one-line error."""
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as exc:
        raise VitdepthError(
            f"data folder '{folder}' cannot be read: {exc.strerror or exc}; fix its permissions or pass another folder"
        ) from None


# Wide greyscale modes that convert("L") would clip or truncate (a 32-bit TIFF of 0..70000 came out black).
_WIDE_MODES = ("I", "F")
_UINT16_MAX = 65535


def _wide_to_rgb(img: Image.Image, name: str) -> Image.Image:
    """RGB of a 32-bit integer (``I``) or float (``F``) greyscale image; see :class:`FolderSource` for the rule."""
    arr = np.asarray(img, dtype=np.float64)
    finite = np.isfinite(arr)
    if not finite.any():
        raise ImageLoadError(name, f"mode {img.mode} image has no finite pixel value (all NaN or infinite)")
    lo, hi = float(arr[finite].min()), float(arr[finite].max())
    if img.mode == "I" and lo >= 0 and hi <= _UINT16_MAX:
        # 16-bit data (a 16-bit PGM opens as "I"): the same fixed scale as "I;16", so brightness stays comparable
        # across images.
        return to_rgb(img)
    if img.mode == "F" and lo >= 0.0 and hi <= 1.0:
        out = arr * 255.0  # the usual float-image convention: 0 is black, 1 is white
    elif hi > lo:
        out = (arr - lo) * (255.0 / (hi - lo))
    else:
        out = np.full_like(arr, 128.0)  # a constant image outside both conventions: no brightness to show
    out[np.isposinf(arr)] = 255.0
    out[np.isnan(arr) | np.isneginf(arr)] = 0.0
    gray = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


def load_image_file(path: str, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode the image file ``path`` fully into RGB, as :class:`FolderSource` does (32-bit greyscale scaled).

    Shared by every source that reads image files (folders, CSV tables, Hugging Face datasets that store paths), so
    one file gives the same pixels whichever spec names it.

    Args:
        path: The file.
        draft_size: ``(width, height)`` a large JPEG may be downscaled to while decoding (see
            :func:`draft_jpeg`); None decodes at full size.

    Raises:
        ImageLoadError: The file is missing, not a regular file, or cannot be decoded.
    """
    try:
        # A scan skips non-regular files, but one may have been swapped in since: opening a FIFO blocks until
        # something writes to it, i.e. forever.
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ImageLoadError(path, "not a regular file (FIFO, socket or device); it was not opened")
        with Image.open(path) as img:
            return _decoded_rgb(img, path, draft_size)
    except ImageLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL's decoders raise OSError, SyntaxError, ValueError, EOFError ...
        # PIL often repeats the path in its message; the name already carries it.
        reason = str(exc).replace(f" '{path}'", "").replace(path, "file") or "decode failed"
        raise ImageLoadError(path, f"{type(exc).__name__}: {reason}") from exc


def decode_image_bytes(data: bytes, name: str, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode an encoded image (PNG, JPEG, ... bytes from a tar shard or an arrow column) fully into RGB.

    Args:
        data: The encoded file's bytes.
        name: The item's name for the error.
        draft_size: ``(width, height)`` a large JPEG may be downscaled to while decoding (see
            :func:`draft_jpeg`); None decodes at full size.

    Raises:
        ImageLoadError: The bytes are not a decodable image.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            return _decoded_rgb(img, name, draft_size)
    except ImageLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - as in load_image_file
        raise ImageLoadError(name, f"{type(exc).__name__}: {exc or 'decode failed'}") from exc


def draft_jpeg(img: Image.Image, draft_size: tuple[int, int] | None) -> bool:
    """Configure a just-opened JPEG to decode downscaled, no smaller than ``draft_size``; True when it will.

    Only JPEGs (``img.format`` ``"JPEG"``, or ``"MPO"``: a camera JPEG with extra frames, whose first frame is a
    plain JPEG) not yet decoded and at least twice ``draft_size`` in both dimensions are drafted, with PIL's
    ``Image.draft``: the decoder scales by 1/2, 1/4 or 1/8 (the largest keeping both sides >= ``draft_size``,
    rounded up) in the DCT domain, without changing the colour mode. Anything else is left as it is, so it decodes
    to exactly the pixels it always did. A truncated file still fails when it is loaded.

    Args:
        img: An image from ``Image.open`` whose pixels have not been loaded.
        draft_size: ``(width, height)``, or None to leave the image alone.
    """
    if draft_size is None or img.format not in ("JPEG", "MPO"):
        return False
    width, height = (int(v) for v in draft_size)
    if width < 1 or height < 1 or min(img.size[0] // width, img.size[1] // height) < 2:
        return False
    # draft() itself does nothing (returns None) once the pixels are loaded.
    return img.draft(None, (width, height)) is not None


def _decoded_rgb(img: Image.Image, name: str, draft_size: tuple[int, int] | None = None) -> Image.Image:
    # Image.open only reads the header; load() forces the full decode here, so a truncated file fails now (PIL's
    # LOAD_TRUNCATED_IMAGES is left off on purpose) rather than later in the transform. Leaving the caller's
    # with-block closes only the file; the decoded pixels stay valid.
    draft_jpeg(img, draft_size)
    img.load()
    return _wide_to_rgb(img, name) if img.mode in _WIDE_MODES else to_rgb(img)


def image_from_value(value: Any, name: str, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """An RGB image from what a dataset cell or a user's dataset item holds.

    Accepted: encoded bytes, a ``{"bytes", "path"}`` dict (``datasets.Image(decode=False)``), a file path, a PIL
    image or an ``(H, W[, C])`` uint8 array. Everything goes through the same decoder and RGB conversion as image
    files, so one picture gives the same pixels from any source.

    Args:
        value: The cell or item.
        name: The item's name for errors.
        draft_size: ``(width, height)`` a large JPEG held as bytes or a path may be downscaled to while decoding
            (see :func:`draft_jpeg`); None decodes at full size. Already-decoded images and arrays are unaffected.

    Raises:
        ImageLoadError: The cell is empty or its content does not decode.
    """
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if data:
            return decode_image_bytes(bytes(data), name, draft_size)
        if path:
            return load_image_file(os.fspath(path), draft_size)
        raise ImageLoadError(name, "the image cell is empty (no bytes, no path)")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return decode_image_bytes(bytes(value), name, draft_size)
    if isinstance(value, (str, os.PathLike)):
        return load_image_file(os.fspath(value), draft_size)
    if isinstance(value, Image.Image):
        try:
            value.load()
        except Exception as exc:  # noqa: BLE001 - PIL's decoders raise many types
            raise ImageLoadError(name, f"{type(exc).__name__}: {exc}") from exc
        return _wide_to_rgb(value, name) if value.mode in _WIDE_MODES else to_rgb(value)
    if value is None:
        raise ImageLoadError(name, "the image cell is empty (None)")
    arr = np.asarray(value)
    if arr.dtype == np.uint8 and (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3, 4))):
        return to_rgb(Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr))
    raise ImageLoadError(
        name, f"the image cell holds {type(value).__name__} {arr.dtype} {arr.shape}, not an image"
    )


def summarise_skips(text: dict[str, str], found: dict[str, list[str]], examples: int = _SKIP_EXAMPLES) -> list[str]:
    """One warning line per kind of skipped item: count, what happened and a few examples.

    Used by the table and shard sources, like :class:`_Skips` for folders: one bad link or a broken export can
    stand for thousands of items, so never one line per item.

    Args:
        text: Kind -> what happened to those items (the order of the warnings).
        found: Kind -> names of the skipped items.
        examples: How many names to show per line.
    """
    out = []
    for kind, what in text.items():
        names = found.get(kind) or []
        if names:
            more = f", ... ({len(names) - examples} more)" if len(names) > examples else ""
            out.append(f"{len(names)} {what}: {', '.join(names[:examples])}{more}")
    return out


class FileListSource(DataSource):
    """A source whose items are image files listed in ``self._paths`` (folders, CSV tables)."""

    _paths: list[str]

    def item_name(self, i: int) -> str:
        """The file path of item ``i``."""
        return self._paths[self._check_index(i)]

    def load(self, i: int) -> Image.Image:  # noqa: D102 - documented on DataSource
        return load_image_file(self._paths[self._check_index(i)])

    def load_draft(self, i: int, draft_size: tuple[int, int] | None) -> Image.Image:  # noqa: D102 - on DataSource
        return load_image_file(self._paths[self._check_index(i)], draft_size)


class FolderSource(FileListSource):
    """An ImageFolder tree: ``PATH/<class>/<image>``, as torchvision's ImageFolder and timm read it.

    Classes are the sorted names of the non-hidden subdirectories that contain at least one image; images are
    found recursively under each class directory and sorted, so indices are stable across machines. Extensions
    (case-insensitive): png, jpg, jpeg, bmp, gif, tif, tiff, webp. Hidden files and directories (``.ipynb_checkpoints``)
    are ignored. EXIF orientation is not applied, matching the eval pipelines pretrained models were scored with.

    A folder without class subfolders whose images sit directly in it is read as unlabelled data
    (:attr:`~DataSource.labelled` False, one class ``(unlabelled)``): label-free measurements still apply to it. In a
    folder that has class subfolders, images lying directly in it belong to no class and are left out with a
    warning.

    Dataset roots with splits (ImageNet-style ``ROOT/train/<class>/<image>`` and ``ROOT/val/<class>/<image>``) are
    read one split at a time with ``split`` (spec ``folder:ROOT:split=val``): the class tree is then
    ``ROOT/<split>``. Without ``split``, a root whose folders are split names (two or more of train, val,
    validation, valid, test, or only such names) that hold subfolders with images is refused rather than read as
    classes ``train`` and ``val``; ``split=.`` reads such a root as a class tree anyway.

    What the scan leaves out (each kind is summarised in one line of :attr:`warnings`, with a count and examples):

    - Directory links are followed at most once per class: a link to a folder the class already reaches (the
      class folder itself, one of its parents, a folder inside it, or one walked before) is a loop and is not
      followed, and neither is a link to anywhere else inside the dataset root (another class, another split) or
      to a folder holding a class, whose images would otherwise be counted twice under different labels. Links to
      folders outside the dataset are followed once; file links are kept.
    - Broken links, and image-named entries that are not regular files after resolving links (a FIFO named
      ``pipe.png`` would block the first read forever), are skipped without being opened.
    - vitdepth's own outputs (a folder with ``.vitdepth-output.json``, a run with vitdepth's ``run.json``, a
      ``compare.json``), at class level or nested, and the folders in ``exclude`` are not read as data, so an
      ``--out`` inside the dataset does not become a class on the next run.
    - A class folder that cannot be read is dropped with the reason (``cannot be read: Permission denied``);
      unreadable subfolders are skipped.

    32-bit greyscale images are scaled to 8 bits rather than clipped: integer (``I``) images whose values lie in
    0..65535 use the fixed 16-bit scale (``v / 257``, as for ``I;16``) and float (``F``) images whose values lie in
    0..1 the fixed float scale (``v * 255``), so brightness stays comparable across such images; any other range is
    stretched linearly from the image's own finite minimum..maximum to 0..255 (a constant image becomes mid-grey
    128). NaN and -inf pixels become 0, +inf 255; an image without a finite pixel is unreadable (skipped).

    Args:
        spec: The spec string it was created from.
        path: Dataset root.
        split: Subfolder of ``path`` that holds the class tree, or ``None`` for ``path`` itself.
        exclude: Folders never read as data (the analysis passes its ``--out``); folders that do not exist are
            ignored.

    Raises:
        VitdepthError: The path or split folder does not exist, is not a directory or cannot be read, the root
            looks like a dataset root with splits and no ``split`` was given, or it holds no images (neither in class
            subdirectories nor directly).
    """

    kind = "folder"

    def __init__(
        self,
        spec: str,
        path: str | os.PathLike[str],
        split: str | None = None,
        *,
        exclude: Iterable[str | os.PathLike[str]] = (),
    ) -> None:
        self.spec = spec
        given = os.fspath(path)
        dataset_root = Path(os.path.abspath(os.path.expanduser(given)))
        if not dataset_root.exists():
            hint = " (the only folder option is ':split=NAME')" if re.search(r":\w+=", given) else ""
            raise VitdepthError(f"data folder '{dataset_root}' does not exist{hint}; check the path after 'folder:'")
        if not dataset_root.is_dir():
            raise VitdepthError(
                f"data folder '{dataset_root}' is not a directory; "
                "pass the dataset root that holds one subdirectory per class"
            )
        self.split = split
        root = dataset_root if split is None else self._split_dir(dataset_root, split)
        self.root = root
        self.warnings = []
        skips = _Skips(str(root))
        exclude_real = tuple(sorted({os.path.realpath(os.path.expanduser(os.fspath(p))) for p in exclude}))
        classes = self._class_dirs(root, exclude_real, skips)
        class_dirs = [name for name, _ in classes]
        loose = self._loose_images(root, skips)
        if not class_dirs and not loose:
            left_out = sum(len(skips.paths[k]) for k in ("output", "excluded", "other_class", "revisit"))
            hint = ""
            if left_out:
                hint = f" (only vitdepth outputs, excluded folders or looping links: {left_out} skipped)"
            raise VitdepthError(
                f"empty dataset: '{root}' has no class subdirectories and no images{hint}; use the layout "
                "PATH/<class>/<image>, or PATH/<image> for unlabelled data"
            )
        if split is None and class_dirs:
            self._refuse_split_root(root, class_dirs)
        self.class_names = []
        paths: list[str] = []
        labels: list[int] = []
        unreadable = []
        reals = [real for _, real in classes]
        dataset_real = os.path.realpath(dataset_root)
        for k, (name, real) in enumerate(classes):
            others = tuple(r for j, r in enumerate(reals) if j != k and r != real)
            ctx = _ScanContext(dataset=dataset_real, other_classes=others, exclude=exclude_real, skips=skips)
            try:
                files = sorted(_walk_images(ctx, str(root / name), real))
            except OSError as exc:
                # Said as it is: "has no images" sent users looking for missing files instead of at permissions.
                reason = exc.strerror or str(exc)
                unreadable.append(reason)
                self.warnings.append(
                    f"class folder '{root / name}' cannot be read: {reason}, so it was ignored; "
                    "fix its permissions (chmod +rx) to include it"
                )
                continue
            if not files:
                self.warnings.append(f"class folder '{root / name}' has no images and was ignored")
                continue
            label = len(self.class_names)
            self.class_names.append(name)
            paths.extend(files)
            labels.extend([label] * len(files))
        if not paths and loose:
            # No class folder holds an image: the loose images are the data, without labels.
            self.warnings.extend(skips.warnings())
            self._paths = loose
            self._set_unlabelled(len(loose))
            return
        if loose:
            rel = [os.path.basename(p) for p in loose]
            more = f", ... ({len(rel) - _SKIP_EXAMPLES} more)" if len(rel) > _SKIP_EXAMPLES else ""
            self.warnings.append(
                f"{len(rel)} image(s) directly in '{root}' belong to no class folder and were ignored: "
                f"{', '.join(rel[:_SKIP_EXAMPLES])}{more}; move them into a class folder to include them"
            )
        self.warnings.extend(skips.warnings())
        if not paths:
            if unreadable:
                raise VitdepthError(
                    f"empty dataset: {len(unreadable)} class folder(s) of '{root}' cannot be read ({unreadable[0]}) "
                    "and the others hold no images; fix their permissions (chmod -R +rX)"
                )
            exts = ", ".join(e[1:] for e in IMAGE_EXTENSIONS)
            raise VitdepthError(
                f"empty dataset: no images ({exts}) found in the class folders of '{root}'; "
                "use the layout PATH/<class>/<image>"
            )
        self._paths = paths
        self.labels = np.asarray(labels, dtype=np.int64)

    @staticmethod
    def _class_dirs(root: Path, exclude_real: tuple[str, ...], skips: _Skips) -> list[tuple[str, str]]:
        """``(name, real path)`` of the candidate class folders of ``root``, sorted by name."""
        root_real = os.path.realpath(root)
        candidates = []
        for entry in _list_dir(root):
            if _is_hidden(entry.name):
                continue
            if _entry_is_dir(entry):
                candidates.append((entry.name, os.path.realpath(entry.path), entry.is_symlink()))
            elif _is_broken_link(entry):
                skips.add("broken", entry.path)
        plain = [real for _, real, is_link in candidates if not is_link]
        out = []
        for name, real, is_link in candidates:
            path = str(root / name)
            kind = None
            if is_link and _is_within(root_real, real):
                kind = "revisit"  # root/all -> . would read the whole dataset as one class
            elif is_link and any(_is_within(real, p) or _is_within(p, real) for p in plain):
                kind = "other_class"  # root/b -> root/a would give every image of 'a' two labels
            elif any(_is_within(real, ex) for ex in exclude_real):
                kind = "excluded"
            elif _is_output(path):
                kind = "output"
            if kind:
                skips.add(kind, path)
            else:
                out.append((name, real))
        return out

    @staticmethod
    def _loose_images(root: Path, skips: _Skips) -> list[str]:
        """Sorted paths of the image files directly in ``root`` (regular files only; nothing is opened)."""
        out = []
        for entry in _list_dir(root):
            if _is_hidden(entry.name) or not entry.name.lower().endswith(IMAGE_EXTENSIONS) or _entry_is_dir(entry):
                continue
            if _is_broken_link(entry):
                continue  # already recorded by _class_dirs
            try:
                regular = entry.is_file()
            except OSError:
                skips.add("unreadable", entry.path)
                continue
            if regular:
                out.append(entry.path)
            else:
                skips.add("special", entry.path)
        return out

    @staticmethod
    def _split_dir(dataset_root: Path, split: str) -> Path:
        if not split or os.path.isabs(split):
            raise VitdepthError(
                f"split {split!r} must name a folder inside '{dataset_root}'; use e.g. folder:{dataset_root}:split=val"
            )
        folder = Path(os.path.normpath(dataset_root / split))
        if not folder.is_dir():
            subdirs = [e.name for e in _list_dir(dataset_root) if _entry_is_dir(e) and not _is_hidden(e.name)]
            has = f"its folders are {_list_names(subdirs)}" if subdirs else "it has no subfolders"
            raise VitdepthError(
                f"no split folder '{split}' in '{dataset_root}' ({has}); pass folder:{dataset_root}:split=NAME "
                "with one of them"
            )
        return folder

    @staticmethod
    def _refuse_split_root(root: Path, class_dirs: list[str]) -> None:
        # ImageNet-style ROOT/{train,val}/<class>/<image> read as a class tree would give the classes "train" and
        # "val" and a meaningless score: a refusal is better than a wrong number.
        split_like = [d for d in class_dirs if d.lower() in _SPLIT_NAMES]
        if not split_like or (len(split_like) < 2 and len(split_like) != len(class_dirs)):
            return
        nested = [d for d in split_like if _has_nested_images(root / d)]
        if not nested:
            return
        pick = next((d for d in nested if d.lower() in _VAL_NAMES), nested[0])
        others = [d for d in nested if d != pick]
        alt = f" (or {' or '.join(others)})" if others else ""
        raise VitdepthError(
            f"'{root}' looks like a dataset root with splits {', '.join(nested)}, not a class tree: "
            f"pass folder:{root}:split={pick}{alt}, or folder:{root}:split=. to read its folders as classes"
        )


    def _content_hash(self) -> str:
        # Paths, sizes and mtimes: cheap (one stat per file, no reads) and changes whenever a file is added,
        # removed, renamed or rewritten.
        h = hashlib.sha256()
        for path, label in zip(self._paths, self.labels.tolist(), strict=True):
            st = os.stat(path)
            rel = Path(path).relative_to(self.root).as_posix()
            h.update(f"{rel}\t{label}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    def identity(self) -> dict[str, Any]:  # noqa: D102 - documented on DataSource
        out = super().identity()
        # root is the class tree (ROOT/<split> when a split was given, the folder itself for unlabelled images);
        # split is None for a plain folder:PATH.
        out["root"] = str(self.root)
        out["split"] = self.split
        return out


def _parse_synthetic(spec: str, options: str | None, seed: int) -> SyntheticSource:
    params = dict(_SYNTHETIC_DEFAULTS)
    for key, value in parse_spec_options(spec, options or "", "synthetic", tuple(_SYNTHETIC_DEFAULTS)).items():
        try:
            number = int(value)
        except ValueError:
            number = None
        if number is None or number < _SYNTHETIC_MIN[key]:
            raise VitdepthError(
                f"synthetic option '{key}' must be an integer >= {_SYNTHETIC_MIN[key]}, got '{value}' in '{spec}'"
            )
        params[key] = number
    return SyntheticSource(spec, seed=seed, **params)


def _parse_digits(spec: str, options: str | None, seed: int) -> DigitsSource:
    if options:
        raise VitdepthError(f"'digits' takes no options, got '{spec}'; use plain 'digits'")
    return DigitsSource(spec)


def _parse_folder(
    spec: str, options: str | None, seed: int, exclude: Iterable[str | os.PathLike[str]] = ()
) -> FolderSource:
    if not options:
        raise VitdepthError(f"'{spec}' names no folder; use folder:PATH with PATH/<class>/<image>")
    # The last ':split=' wins, so a path that itself contains ':' still parses.
    path, sep, split = options.rpartition(":split=")
    if not sep:
        return FolderSource(spec, options, exclude=exclude)
    path, split = path.strip(), split.strip()
    if not path:
        raise VitdepthError(f"'{spec}' names no folder; use folder:PATH:split=NAME with PATH/NAME/<class>/<image>")
    if not split:
        raise VitdepthError(f"'{spec}' has an empty split name; use e.g. folder:{path}:split=val")
    return FolderSource(spec, path, split=split, exclude=exclude)


_OPTIONS_TAIL = re.compile(r"^\s*[A-Za-z_][\w-]*\s*=")


def split_spec_options(spec: str, body: str | None, kind: str, keys: tuple[str, ...]) -> tuple[str, dict[str, str]]:
    """Split ``TARGET[:key=value,...]`` (the part of a spec after ``kind:``) into the target and its options.

    Options are recognised only after the last ``:`` and only when that part starts with ``key=``, so paths and
    hub ids that contain ``:`` still parse.

    Args:
        spec: The whole spec, for messages.
        body: What follows ``kind:`` (None when there was no ``:``).
        kind: The spec's kind, for messages.
        keys: The valid option keys.

    Returns:
        ``(target, {key: value})``.

    Raises:
        VitdepthError: No target, an option that is not ``key=value``, an unknown or repeated key, or an empty value.
    """
    body = (body or "").strip()
    target, sep, tail = body.rpartition(":")
    if not sep or not _OPTIONS_TAIL.match(tail):
        target, tail = body, ""
    target = target.strip()
    valid = ", ".join(keys)
    if not target:
        raise VitdepthError(f"'{spec}' names no data; use {kind}:TARGET[:key=value,...] (keys: {valid})")
    return target, parse_spec_options(spec, tail, kind, keys)


def parse_spec_options(spec: str, tail: str, kind: str, keys) -> dict[str, str]:
    """Parse ``key=value,...`` options of a spec: unknown keys (with a close match), repeats and empty values are
    one-line errors naming the spec."""
    valid = ", ".join(keys)
    options: dict[str, str] = {}
    for part in tail.split(","):
        part = part.strip()
        if not part:
            continue
        key, eq, value = (x.strip() for x in part.partition("="))
        if not eq:
            raise VitdepthError(f"{kind} option '{part}' in '{spec}' is not key=value; valid keys: {valid}")
        if key not in keys:
            close = difflib.get_close_matches(key, list(keys), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise VitdepthError(f"unknown {kind} option '{key}' in '{spec}'{hint}; valid keys: {valid}")
        if key in options:
            raise VitdepthError(f"{kind} option '{key}' is given twice in '{spec}'; keep one")
        if not value:
            raise VitdepthError(f"{kind} option '{key}' in '{spec}' is empty; give a value ({key}=...) or drop it")
        options[key] = value
    return options


def _parse_hf_dataset(spec: str, options: str | None, seed: int) -> DataSource:
    from .hfdataset import parse_hf_dataset  # lazy: the module imports `datasets` only when a spec needs it

    return parse_hf_dataset(spec, options)


def _parse_wds(spec: str, options: str | None, seed: int) -> DataSource:
    from .wds import parse_wds

    return parse_wds(spec, options)


def _parse_csv(spec: str, options: str | None, seed: int) -> DataSource:
    from .tabular import parse_csv

    return parse_csv(spec, options)


# kind -> factory; the example specs, descriptions and their order are vitdepth.specs.DATA_SPECS (which
# `vitdepth models` and the CLI's early spec check read without importing this module)
_FACTORIES: dict[str, Callable[..., DataSource]] = {
    "digits": _parse_digits, "synthetic": _parse_synthetic, "folder": _parse_folder,
    "hf-dataset": _parse_hf_dataset, "wds": _parse_wds, "csv": _parse_csv,
}
_SOURCES: dict[str, tuple[Callable[..., DataSource], str, str]] = {
    form.kind: (_FACTORIES[form.kind], form.example, form.description) for form in DATA_SPECS
}


def list_sources() -> list[tuple[str, str]]:
    """List the data specs :func:`create_source` understands.

    Returns:
        ``(example spec, one-line description)`` pairs.
    """
    return [(example, description) for _, example, description in _SOURCES.values()]


def create_source(spec: str, seed: int = 0, *, exclude: Iterable[str | os.PathLike[str]] = ()) -> DataSource:
    """Create a data source from a spec string.

    Args:
        spec: ``digits``, ``synthetic[:key=value,...]`` (keys ``n``, ``classes``, ``size``), ``folder:PATH``,
            ``folder:PATH:split=NAME``, ``hf-dataset:PATH_OR_ID[:split=NAME,image=COL,label=COL,config=NAME]``,
            ``wds:PATTERN[:image=EXT,label=EXT]`` or ``csv:FILE[:path=COL,label=COL]``.
        seed: Seed for sources that generate data (``synthetic``); ignored by the others.
        exclude: Folders that ``folder:`` sources never read as data (pass the command's own output directory,
            which may lie inside the dataset); ignored by the other sources.

    Returns:
        The data source.

    Raises:
        VitdepthError: The spec is unknown or malformed, or the data it names cannot be used.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise VitdepthError(f"data spec must be a non-empty string, got {spec!r}; valid forms: {_valid_forms()}")
    spec = spec.strip()
    kind, sep, options = spec.partition(":")
    entry = _SOURCES.get(kind.strip().lower())
    if entry is None:
        raise VitdepthError(unknown_data_spec_message(spec, kind))
    options = options.strip() if sep else None
    if entry[0] is _parse_folder:
        # Only folder sources read paths from disk; the others have nothing to exclude.
        return _parse_folder(spec, options, int(seed), exclude=tuple(exclude))
    return entry[0](spec, options, int(seed))


def _valid_forms() -> str:
    return data_forms()
