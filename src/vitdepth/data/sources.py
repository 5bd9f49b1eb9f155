"""Labelled image sources, created from a spec string.

A :class:`DataSource` is a random-access list of labelled RGB PIL images. Preprocessing lives in
:mod:`vitdepth.data.transforms` and batching in :mod:`vitdepth.data.loader`, so a source only knows how to
find and decode its images. Specs:

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download).
- ``synthetic[:n=2000,classes=10,size=224]``: procedurally generated gratings, made lazily per item.
- ``folder:PATH``: an ImageFolder tree ``PATH/<class>/<image>``.
- ``folder:PATH:split=NAME``: one split of an ImageNet-style root, ``PATH/NAME/<class>/<image>``. A plain
  ``folder:PATH`` whose folders are split names (``train``, ``val``, ...) is refused with this hint.

Example:
    >>> src = create_source("synthetic:n=20,classes=4,size=32", seed=0)
    >>> len(src), src.class_names[:2], src.load(0).size
    (20, ['class0', 'class1'], (32, 32))
"""

from __future__ import annotations

import colorsys
import difflib
import hashlib
import json
import math
import operator
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .._errors import VitdepthError
from .transforms import to_rgb

__all__ = [
    "IMAGE_EXTENSIONS",
    "DataSource",
    "DigitsSource",
    "FolderSource",
    "ImageLoadError",
    "SyntheticSource",
    "create_source",
    "list_sources",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


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
    """

    kind: str = ""
    spec: str
    class_names: list[str]
    labels: np.ndarray
    warnings: list[str]

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
    def load(self, i: int) -> Image.Image:
        """Decode item ``i``.

        Args:
            i: Item index in ``[0, len(self))``.

        Returns:
            The image in RGB mode.

        Raises:
            ImageLoadError: The file cannot be decoded.
            IndexError: ``i`` is out of range.
        """

    def item_name(self, i: int) -> str:
        """Human-readable name of item ``i`` for reports and error messages (e.g. ``digits[12]``)."""
        return f"{self.kind}[{self._check_index(i)}]"

    @abstractmethod
    def _content_hash(self) -> str:
        """sha256 hex digest that changes whenever the images or labels change."""

    def identity(self) -> dict[str, Any]:
        """Describe the data for ``run.json``: enough to tell whether two runs saw the same images.

        Returns:
            A JSON-ready dict with ``spec``, ``kind``, ``n``, ``num_classes``, ``class_names`` and a sha256
            ``content_hash``.
        """
        return {
            "spec": self.spec,
            "kind": self.kind,
            "n": len(self),
            "num_classes": len(self.class_names),
            "class_names": list(self.class_names),
            "content_hash": self._content_hash(),
        }


class DigitsSource(DataSource):
    """scikit-learn's bundled handwritten digits: 1,797 8x8 images of 0-9, no download needed.

    Pixels (0..16 in scikit-learn) are scaled to 0..255 and replicated to three channels; the transform upsamples
    them to the model's input size.

    Args:
        spec: The spec string (``"digits"``).
    """

    kind = "digits"

    def __init__(self, spec: str = "digits") -> None:
        # Imported here because scikit-learn takes about a second to import and only this source needs it.
        from sklearn.datasets import load_digits

        digits = load_digits()
        self.spec = spec
        self.class_names = [str(int(c)) for c in digits.target_names]
        self.labels = np.asarray(digits.target, dtype=np.int64)
        self.warnings = []
        gray = np.rint(np.asarray(digits.images, dtype=np.float64) * (255.0 / 16.0))
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


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


# Folder names that mark the splits of a dataset root (ImageNet-style ROOT/train/<class>/..., ROOT/val/<class>/...).
_SPLIT_NAMES = frozenset({"train", "val", "validation", "valid", "test"})
_VAL_NAMES = ("val", "validation", "valid")


def _has_nested_images(folder: Path) -> bool:
    """Whether some non-hidden subdirectory of ``folder`` holds an image (at any depth); stops at the first."""
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.is_dir() or _is_hidden(entry.name):
            continue
        for _dirpath, dirnames, filenames in os.walk(entry.path, followlinks=True):
            dirnames[:] = [d for d in dirnames if not _is_hidden(d)]
            if any(not _is_hidden(f) and f.lower().endswith(IMAGE_EXTENSIONS) for f in filenames):
                return True
    return False


def _list_names(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


class FolderSource(DataSource):
    """An ImageFolder tree: ``PATH/<class>/<image>``, as torchvision's ImageFolder and timm read it.

    Classes are the sorted names of the non-hidden subdirectories that contain at least one image; images are
    found recursively under each class directory and sorted, so indices are stable across machines. Extensions
    (case-insensitive): png, jpg, jpeg, bmp, gif, tif, tiff, webp. Hidden files and directories (``.ipynb_checkpoints``)
    are ignored. EXIF orientation is not applied, matching the eval pipelines pretrained models were scored with.

    Dataset roots with splits (ImageNet-style ``ROOT/train/<class>/<image>`` and ``ROOT/val/<class>/<image>``) are
    read one split at a time with ``split`` (spec ``folder:ROOT:split=val``): the class tree is then
    ``ROOT/<split>``. Without ``split``, a root whose folders are split names (two or more of train, val,
    validation, valid, test, or only such names) that hold subfolders with images is refused rather than read as
    classes ``train`` and ``val``; ``split=.`` reads such a root as a class tree anyway.

    Args:
        spec: The spec string it was created from.
        path: Dataset root.
        split: Subfolder of ``path`` that holds the class tree, or ``None`` for ``path`` itself.

    Raises:
        VitdepthError: The path or split folder does not exist or is not a directory, the root looks like a
            dataset root with splits and no ``split`` was given, or no class subdirectory holds images.
    """

    kind = "folder"

    def __init__(self, spec: str, path: str | os.PathLike[str], split: str | None = None) -> None:
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
        class_dirs = sorted(e.name for e in os.scandir(root) if e.is_dir() and not _is_hidden(e.name))
        if not class_dirs:
            loose = sum(1 for e in os.scandir(root) if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
            hint = f" ({loose} images sit directly in it: move them into per-class folders)" if loose else ""
            raise VitdepthError(
                f"empty dataset: '{root}' has no class subdirectories{hint}; use the layout PATH/<class>/<image>"
            )
        if split is None:
            self._refuse_split_root(root, class_dirs)
        self.warnings = []
        self.class_names = []
        paths: list[str] = []
        labels: list[int] = []
        for name in class_dirs:
            files = self._scan(root / name)
            if not files:
                self.warnings.append(f"class folder '{root / name}' has no images and was ignored")
                continue
            label = len(self.class_names)
            self.class_names.append(name)
            paths.extend(files)
            labels.extend([label] * len(files))
        if not paths:
            exts = ", ".join(e[1:] for e in IMAGE_EXTENSIONS)
            raise VitdepthError(
                f"empty dataset: no images ({exts}) found in the class folders of '{root}'; "
                "use the layout PATH/<class>/<image>"
            )
        self._paths = paths
        self.labels = np.asarray(labels, dtype=np.int64)

    @staticmethod
    def _split_dir(dataset_root: Path, split: str) -> Path:
        if not split or os.path.isabs(split):
            raise VitdepthError(
                f"split {split!r} must name a folder inside '{dataset_root}'; use e.g. folder:{dataset_root}:split=val"
            )
        folder = Path(os.path.normpath(dataset_root / split))
        if not folder.is_dir():
            subdirs = sorted(e.name for e in os.scandir(dataset_root) if e.is_dir() and not _is_hidden(e.name))
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

    @staticmethod
    def _scan(class_dir: Path) -> list[str]:
        found = []
        for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
            # Pruning in place stops os.walk descending into hidden directories.
            dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
            for f in filenames:
                if not _is_hidden(f) and f.lower().endswith(IMAGE_EXTENSIONS):
                    found.append(os.path.join(dirpath, f))
        return sorted(found)

    def item_name(self, i: int) -> str:
        """The file path of item ``i``."""
        return self._paths[self._check_index(i)]

    def load(self, i: int) -> Image.Image:  # noqa: D102 - documented on DataSource
        path = self._paths[self._check_index(i)]
        try:
            with Image.open(path) as img:
                # Image.open only reads the header; load() forces the full decode here, so a truncated file fails
                # now (PIL's LOAD_TRUNCATED_IMAGES is left off on purpose) rather than later in the transform.
                img.load()
                # Leaving the with-block closes only the file; the decoded pixels stay valid.
                return to_rgb(img)
        except Exception as exc:  # noqa: BLE001 - PIL's decoders raise OSError, SyntaxError, ValueError, EOFError ...
            # PIL often repeats the path in its message; the name already carries it.
            reason = str(exc).replace(f" '{path}'", "").replace(path, "file") or "decode failed"
            raise ImageLoadError(path, f"{type(exc).__name__}: {reason}") from exc

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
        # root is the class tree (ROOT/<split> when a split was given); split is None for a plain folder:PATH.
        out["root"] = str(self.root)
        out["split"] = self.split
        return out


def _parse_synthetic(spec: str, options: str | None, seed: int) -> SyntheticSource:
    params = dict(_SYNTHETIC_DEFAULTS)
    valid = ", ".join(_SYNTHETIC_DEFAULTS)
    seen: set[str] = set()
    for part in (options or "").split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = (s.strip() for s in part.partition("="))
        if not sep:
            raise VitdepthError(f"synthetic option '{part}' in '{spec}' is not key=value; use e.g. synthetic:n=500")
        if key not in params:
            close = difflib.get_close_matches(key, list(params), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise VitdepthError(f"unknown synthetic option '{key}' in '{spec}'{hint}; valid keys: {valid}")
        if key in seen:
            raise VitdepthError(f"synthetic option '{key}' is given twice in '{spec}'; keep one")
        seen.add(key)
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


def _parse_folder(spec: str, options: str | None, seed: int) -> FolderSource:
    if not options:
        raise VitdepthError(f"'{spec}' names no folder; use folder:PATH with PATH/<class>/<image>")
    # The last ':split=' wins, so a path that itself contains ':' still parses.
    path, sep, split = options.rpartition(":split=")
    if not sep:
        return FolderSource(spec, options)
    path, split = path.strip(), split.strip()
    if not path:
        raise VitdepthError(f"'{spec}' names no folder; use folder:PATH:split=NAME with PATH/NAME/<class>/<image>")
    if not split:
        raise VitdepthError(f"'{spec}' has an empty split name; use e.g. folder:{path}:split=val")
    return FolderSource(spec, path, split=split)


# kind -> (factory, example spec, one-line description). Order is the order list_sources() shows.
_SOURCES: dict[str, tuple[Callable[[str, str | None, int], DataSource], str, str]] = {
    "digits": (_parse_digits, "digits", "scikit-learn's 1,797 8x8 handwritten digits, 10 classes, no download"),
    "synthetic": (
        _parse_synthetic,
        "synthetic:n=2000,classes=10,size=224",
        "generated gratings (class sets orientation, frequency, hue); any size and count, seeded",
    ),
    "folder": (
        _parse_folder,
        "folder:PATH",
        "an ImageFolder tree PATH/<class>/<image> (png, jpg, ...); folder:PATH:split=val reads PATH/val/<class>/...",
    ),
}


def list_sources() -> list[tuple[str, str]]:
    """List the data specs :func:`create_source` understands.

    Returns:
        ``(example spec, one-line description)`` pairs.
    """
    return [(example, description) for _, example, description in _SOURCES.values()]


def create_source(spec: str, seed: int = 0) -> DataSource:
    """Create a data source from a spec string.

    Args:
        spec: ``digits``, ``synthetic[:key=value,...]`` (keys ``n``, ``classes``, ``size``), ``folder:PATH`` or
            ``folder:PATH:split=NAME``.
        seed: Seed for sources that generate data (``synthetic``); ignored by the others.

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
        raise VitdepthError(_unknown_spec_message(spec, kind))
    return entry[0](spec, options.strip() if sep else None, int(seed))


def _valid_forms() -> str:
    return ", ".join(f"'{example}'" for example, _ in list_sources())


def _unknown_spec_message(spec: str, kind: str) -> str:
    close = difflib.get_close_matches(kind.strip().lower(), list(_SOURCES), n=3, cutoff=0.5)
    hints = []
    if close:
        hints.append("did you mean " + " or ".join(f"'{c}'" for c in close) + "?")
    if os.path.isdir(os.path.expanduser(spec)):
        hints.append(f"for a folder of images use 'folder:{spec}';")
    hint = (" " + " ".join(hints)) if hints else ""
    return f"unknown data spec '{spec}';{hint} valid forms: {_valid_forms()}"
