"""Python objects as data sources: :func:`source_from_object`.

For notebooks and scripts that already hold their data: a map-style ``torch.utils.data.Dataset`` yielding
``(image, label)`` pairs (torchvision's ``ImageFolder``, ``CIFAR10``, ``Subset`` and any user class), a
``torch.utils.data.DataLoader`` over one, or a Hugging Face ``datasets.Dataset``.

Items may be PIL images (or ``(H, W[, C])`` uint8 arrays), which the analysis preprocesses with the model's own
transform, or ``(3, H, W)`` float tensors that the user's dataset already transformed (the common torchvision
pattern); those are used as they are, see :func:`vitdepth.data.prepare_item`.

The analysis needs every label up front (stratified subsets and splits), so labels come from, in order: the
``labels`` argument; the dataset's ``targets`` attribute (torchvision's ``ImageFolder``, ``CIFAR`` and ``MNIST``
have one; a ``Subset`` of such a dataset uses its parent's, indexed); else one pass over the dataset reading
``dataset[i][1]`` for every item. That pass runs the dataset's full ``__getitem__``, so it costs as much as decoding
and transforming every image once (an epoch); pass ``labels=`` or give the dataset a ``targets`` attribute to skip
it. Items that raise during the pass are left out and recorded in :attr:`~vitdepth.data.DataSource.warnings`.

Nothing is held in memory but the labels; images are fetched from the dataset when loaded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from .._errors import VitdepthError
from .sources import DataSource, ImageLoadError, hash_labels, image_from_value, summarise_skips
from .tabular import labels_from_values

__all__ = ["TorchDatasetSource", "source_from_object"]

_HASHED_ITEMS = 3  # items whose content enters the content hash (when loading them is deterministic)
_SKIP_TEXT = {"unreadable": "item(s) raised an error while their labels were read and were left out"}


def _qualname(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _scalar_label(value: Any, i: int, what: str) -> int | str:
    """An int or str class from a label value (int, 0-d tensor or array, numpy scalar, str)."""
    if isinstance(value, torch.Tensor):
        if value.ndim != 0:
            raise VitdepthError(
                f"the label of item {i} of {what} is a tensor of shape {tuple(value.shape)}; yield a class index "
                "(an int or 0-d tensor), not one-hot or multi-label targets"
            )
        value = value.item()
    elif isinstance(value, np.ndarray):
        if value.ndim != 0:
            raise VitdepthError(f"the label of item {i} of {what} is an array of shape {value.shape}; yield an int")
        value = value.item()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, str)):
        return value
    raise VitdepthError(
        f"the label of item {i} of {what} is a {type(value).__name__} ({value!r}); yield an int class index or a name"
    )


def _targets(dataset: Any) -> list[Any] | None:
    """The dataset's own label list (``targets``; a torch ``Subset`` indexes its parent's), or None."""
    targets = getattr(dataset, "targets", None)
    if targets is None and isinstance(dataset, torch.utils.data.Subset):
        parent = _targets(dataset.dataset)
        if parent is not None:
            return [parent[int(j)] for j in dataset.indices]
    return None if targets is None else list(targets)


def _content_bytes(img: Any) -> bytes:
    if isinstance(img, torch.Tensor):
        return repr((tuple(img.shape), str(img.dtype))).encode() + img.detach().cpu().contiguous().numpy().tobytes()
    return repr((img.size, img.mode)).encode() + img.tobytes()


class TorchDatasetSource(DataSource):
    """A map-style dataset of ``(image, label)`` pairs, or of bare images (unlabelled), as a source.

    See the module docstring for where labels come from and what an item may be. ``class_names`` come from the
    dataset's ``classes`` attribute when it has one and labels are ints in its range, else from the sorted distinct
    labels. :meth:`item_name` is the file path for datasets with ``samples`` (``ImageFolder``), else
    ``ClassName[i]``.

    Args:
        dataset: The dataset (``__len__`` and ``__getitem__``).
        spec: What to record as the spec (default ``object:<module>.<class>``).
        labels: One label per item, to skip reading them from the dataset.

    Raises:
        VitdepthError: The dataset is empty, a label is not a class index or name, or ``labels``/``targets`` do not
            have one entry per item.
    """

    kind = "torch-dataset"

    def __init__(self, dataset: Any, *, spec: str | None = None, labels: Sequence[Any] | None = None) -> None:
        self.dataset = dataset
        self.spec = spec or f"object:{_qualname(dataset)}"
        self.warnings = []
        self._rows: np.ndarray | None = None
        self._items_digest: tuple[str, int] | None = None
        what = f"the {type(dataset).__name__} dataset"
        n = len(dataset)
        if n == 0:
            raise VitdepthError(f"empty dataset: {what} has no items; pass a dataset with images")
        given = "labels" if labels is not None else "dataset.targets"
        raw = list(labels) if labels is not None else _targets(dataset)
        if raw is not None and len(raw) != n:
            raise VitdepthError(f"{given} has {len(raw)} entries for {n} items of {what}; give one label per item")
        if raw is None:
            raw = self._scan_labels(n, what)
            if raw is None:
                self._set_unlabelled(n)
                return
        values = [_scalar_label(v, i, what) for i, v in enumerate(raw)]
        classes = getattr(dataset, "classes", None)
        if isinstance(classes, Sequence) and not isinstance(classes, str) and len(classes) > 0:
            self.class_names = [str(c) for c in classes]
            self.labels = self._labels_by_classes(values, what)
        else:
            self.labels, self.class_names = labels_from_values(values, f"the labels of {what}")

    def _labels_by_classes(self, values: list[int | str], what: str) -> np.ndarray:
        """Labels as indices into ``dataset.classes``: ints must lie in its range, names must be in it."""
        names = self.class_names
        if all(isinstance(v, int) for v in values):
            bad = next((v for v in values if not 0 <= v < len(names)), None)
            if bad is not None:
                raise VitdepthError(
                    f"{what} has a label {bad} but its 'classes' attribute names {len(names)} classes; make the labels "
                    "indices into classes, or drop the attribute"
                )
            return np.asarray(values, dtype=np.int64)
        index = {name: k for k, name in enumerate(names)}
        missing = next((v for v in values if str(v) not in index), None)
        if missing is not None:
            raise VitdepthError(
                f"{what} has a label {missing!r} that is not in its 'classes' attribute; add it there or fix the label"
            )
        return np.asarray([index[str(v)] for v in values], dtype=np.int64)

    def _scan_labels(self, n: int, what: str) -> list[Any] | None:
        """Read ``dataset[i][1]`` for every item (one full pass); None when items are bare images (unlabelled)."""
        values: list[Any] = []
        rows: list[int] = []
        failed: list[str] = []
        paired: bool | None = None
        for i in range(n):
            try:
                item = self.dataset[i]
            except Exception:  # noqa: BLE001 - a user's __getitem__ may raise anything for a bad file
                failed.append(self._raw_name(i))
                continue
            is_pair = isinstance(item, (tuple, list)) and len(item) >= 2
            if paired is None:
                paired = is_pair
                if not paired:
                    return None  # bare images: unlabelled, no need to read further
            if not is_pair:
                raise VitdepthError(
                    f"item {i} of {what} is a {type(item).__name__}, but earlier items were (image, label) pairs; "
                    "yield the same kind of item throughout"
                )
            values.append(item[1])
            rows.append(i)
        self.warnings.extend(summarise_skips(_SKIP_TEXT, {"unreadable": failed}))
        if not values:
            raise VitdepthError(f"empty dataset: every item of {what} raised an error when read; check the dataset")
        if len(rows) != n:
            self._rows = np.asarray(rows, dtype=np.int64)
        return values

    def _row(self, i: int) -> int:
        i = self._check_index(i)
        return i if self._rows is None else int(self._rows[i])

    def _raw_name(self, row: int) -> str:
        samples = getattr(self.dataset, "samples", None)
        if isinstance(samples, Sequence) and len(samples) > row:
            entry = samples[row]
            path = entry[0] if isinstance(entry, (tuple, list)) and entry else entry
            if isinstance(path, str):
                return path
        return f"{type(self.dataset).__name__}[{row}]"

    def item_name(self, i: int) -> str:
        """The file path of item ``i`` for ``ImageFolder``-like datasets, else ``ClassName[row]``."""
        return self._raw_name(self._row(i))

    def load(self, i: int) -> Image.Image | torch.Tensor:
        """Fetch item ``i`` from the dataset: an RGB PIL image, or the ``(3, H, W)`` tensor the dataset made.

        Raises:
            ImageLoadError: The dataset raised for this item, or the item is not an image or a tensor.
            IndexError: ``i`` is out of range.
        """
        return self.load_draft(i, None)

    def load_draft(self, i: int, draft_size: tuple[int, int] | None) -> Image.Image | torch.Tensor:
        """As :meth:`load`; items that are encoded bytes or file paths honour ``draft_size`` (see
        :meth:`DataSource.load_draft`), decoded images and tensors are returned as they are."""
        row = self._row(i)
        name = self._raw_name(row)
        try:
            item = self.dataset[row]
        except Exception as exc:  # noqa: BLE001 - a user's __getitem__ may raise anything for a bad file
            raise ImageLoadError(name, f"{type(exc).__name__}: {exc}") from exc
        img = item[0] if isinstance(item, (tuple, list)) and item else item
        if isinstance(img, torch.Tensor):
            return img  # checked (float, (3, H, W), same shape as the others) by the loader's prepare_item
        return image_from_value(img, name, draft_size)

    def _items_hash(self) -> tuple[str, int]:
        """sha256 of the first few items' content, and how many were hashed (0 when loading is not repeatable)."""
        if self._items_digest is None:
            h = hashlib.sha256()
            count = min(_HASHED_ITEMS, len(self))
            try:
                for i in range(count):
                    first, second = _content_bytes(self.load(i)), _content_bytes(self.load(i))
                    if first != second:  # random augmentation: content cannot identify the data
                        count = 0
                        break
                    h.update(first)
            except (ImageLoadError, AttributeError):
                count = 0
            self._items_digest = (h.hexdigest() if count else "", count)
        return self._items_digest

    def _content_hash(self) -> str:
        digest, _ = self._items_hash()
        h = hashlib.sha256()
        h.update(f"{_qualname(self.dataset)}\t{len(self)}\t{digest}\n".encode())
        hash_labels(h, self.class_names, self.labels, self._rows)
        return h.hexdigest()

    def identity(self) -> dict[str, Any]:  # noqa: D102 - documented on DataSource
        out = super().identity()
        _, count = self._items_hash()
        out.update(
            object_class=_qualname(self.dataset),
            labels_hash=hashlib.sha256(self.labels.tobytes()).hexdigest(),
            items_hashed=count,
        )
        return out


def source_from_object(
    obj: Any,
    *,
    labels: Sequence[Any] | None = None,
    image: str | None = None,
    label: str | None = None,
) -> DataSource:
    """Make a data source from a Python object.

    Accepted:

    - a map-style ``torch.utils.data.Dataset`` (or anything with ``__len__`` and ``__getitem__``) yielding
      ``(image, label)`` pairs, or bare images for unlabelled data; images are PIL images, uint8 arrays or
      ``(3, H, W)`` float tensors (used as they are); labels are ints, 0-d tensors or class names;
    - a ``torch.utils.data.DataLoader``: its ``dataset`` is used item by item (its batching, sampler and
      ``collate_fn`` are not), so it must be map-style;
    - a Hugging Face ``datasets.Dataset`` (detected by its module, so ``datasets`` is never imported for other
      objects), with the image and label columns found as for ``hf-dataset:`` specs;
    - a :class:`~vitdepth.data.DataSource`, returned as it is.

    Args:
        obj: The object.
        labels: One label per item for torch datasets, to skip reading them (see the module docstring for the cost).
        image: Image column of a Hugging Face dataset (found automatically when None).
        label: Label column of a Hugging Face dataset (found automatically when None).

    Returns:
        The source; its ``spec`` is ``object:<module>.<class>``.

    Raises:
        VitdepthError: The object is not a supported kind (an iterable-style dataset, a ``DatasetDict`` ...), or
            its items or labels cannot be used; one line naming the problem and the fix.
    """
    if isinstance(obj, DataSource):
        return obj
    module = type(obj).__module__ or ""
    name = type(obj).__name__
    if module == "datasets" or module.startswith("datasets."):
        return _from_hf(obj, name, labels=labels, image=image, label=label)
    if image is not None or label is not None:
        raise VitdepthError(f"image= and label= name columns of Hugging Face datasets; a {name} has none, drop them")
    if isinstance(obj, torch.utils.data.DataLoader):
        inner = obj.dataset
        if isinstance(inner, torch.utils.data.IterableDataset):
            raise VitdepthError(
                f"this DataLoader wraps an iterable-style {type(inner).__name__}, which has no random access; "
                "pass a loader over a map-style Dataset (with __getitem__ and __len__)"
            )
        return source_from_object(inner, labels=labels)
    if isinstance(obj, torch.utils.data.IterableDataset):
        raise VitdepthError(
            f"{name} is an iterable-style dataset without random access; pass a map-style Dataset "
            "(with __getitem__ and __len__)"
        )
    if isinstance(obj, (str, bytes)) or not (hasattr(obj, "__getitem__") and hasattr(obj, "__len__")):
        hint = "; for a spec string use create_source" if isinstance(obj, str) else ""
        raise VitdepthError(
            f"cannot use a {name} as data: pass a map-style torch Dataset, a DataLoader or a datasets.Dataset{hint}"
        )
    return TorchDatasetSource(obj, labels=labels)


def _from_hf(obj: Any, name: str, *, labels: Any, image: str | None, label: str | None) -> DataSource:
    if labels is not None:
        raise VitdepthError("labels= is for torch datasets; for a datasets.Dataset pass label=COL instead")
    if hasattr(obj, "keys") and name.endswith("DatasetDict"):
        splits = list(obj.keys())
        first = splits[0] if splits else "validation"
        raise VitdepthError(
            f"a {name} holds several splits ({', '.join(map(str, splits))}); pass one, e.g. ds['{first}']"
        )
    if name.startswith("Iterable"):
        raise VitdepthError(
            f"a streaming {name} has no random access; load the dataset without streaming=True and pass that"
        )
    from .hfdataset import HFDatasetSource

    split = getattr(obj, "split", None)
    origin = {"dataset": f"<in-memory {name}>", "split": None if split is None else str(split)}
    return HFDatasetSource(f"object:{_qualname(obj)}", obj, image=image, label=label, origin=origin)

