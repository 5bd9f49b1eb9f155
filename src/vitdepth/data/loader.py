"""Batches of preprocessed images, with unreadable files skipped and reported.

Unreadable images are the norm in real folders (a truncated download, a ``.png`` that is really HTML). By default
they are skipped and every skip is reported with its index, name and reason, so the caller can count them in
``run.json``; ``strict=True`` turns the first one into an error. Decoding runs in a torch ``DataLoader``, so
``num_workers > 0`` decodes in parallel; skips are carried back as data rather than raised inside a worker,
because a worker's exception reaches the main process wrapped in a multi-line traceback.

Items are PIL images or tensors (:func:`prepare_item`). A PIL image goes through the transform (the model's own
preprocessing). A tensor is an item the user's dataset already transformed (the common torchvision pattern of a
``Dataset`` with ``transform=...``, wrapped by :func:`~vitdepth.data.source_from_object`), so it is used as it is:
it must be a float ``(3, H, W)`` tensor of the shape every item gets, else that item is skipped like an unreadable
file, with its index and the reason. That reference shape is the transform's ``output_shape``, else what it makes of a
blank image, else (a transform that takes no PIL images, for tensor-only data) the shape of the first requested item
that loads; it is found once per :func:`iterate_batches` call, in the calling process, so every worker checks against
the same shape. PIL and tensor items may be mixed freely.

Example:
    >>> import numpy as np
    >>> from vitdepth.data import PreprocessConfig, build_transform, create_source
    >>> src = create_source("synthetic:n=10,size=16")
    >>> t = build_transform(PreprocessConfig(input_size=(16, 16)))
    >>> [b.images.shape[0] for b in iterate_batches(src, np.arange(10), t, batch_size=4)]
    [4, 4, 2]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from .._errors import VitdepthError
from .sources import DataSource, ImageLoadError

__all__ = ["Batch", "iterate_batches", "prepare_item"]

#: Batches each DataLoader worker prepares ahead: enough to hide decoding jitter behind a GPU forward.
PREFETCH_BATCHES = 4


@dataclass
class Batch:
    """One chunk of the requested indices, preprocessed.

    Attributes:
        images: ``(B, 3, H, W)`` float32 images; ``B`` may be smaller than the batch size, even 0, when items
            were skipped.
        indices: ``(B,)`` int64 dataset indices of ``images``, in request order.
        skipped: ``(index, item_name, reason)`` for each unreadable item of this chunk.
    """

    images: torch.Tensor
    indices: np.ndarray
    skipped: list[tuple[int, str, str]] = field(default_factory=list)

    def pin_memory(self) -> Batch:
        """Page-locked images (the DataLoader calls this under ``pin_memory=True``)."""
        if self.images.numel():
            self.images = self.images.pin_memory()
        return self


def prepare_item(
    item: Image.Image | torch.Tensor,
    transform: Callable[[Image.Image], torch.Tensor],
    *,
    index: int | None = None,
    name: str = "item",
    expected_shape: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """Turn what :meth:`DataSource.load` returned into the model's input tensor.

    A PIL image goes through ``transform``. A tensor was already transformed by the user's dataset and is used as
    it is, converted to float32: it must be a floating ``(3, H, W)`` tensor, and when ``expected_shape`` is given
    (the shape ``transform`` makes, which the other items have) of that shape, so items stack into one batch.

    Args:
        item: The loaded item.
        transform: The model's preprocessing for PIL images.
        index: The item's dataset index, named in errors.
        name: The item's name for :class:`ImageLoadError`.
        expected_shape: The shape every item must have; None to skip that check (the transform's shape is not
            computed here).

    Returns:
        A ``float32`` tensor of shape ``(3, H, W)``.

    Raises:
        ImageLoadError: The item is a tensor of the wrong dtype, rank or shape, or neither an image nor a tensor.
    """
    where = f"item {index}" if index is not None else "the item"
    if isinstance(item, Image.Image):
        return transform(item)
    if not isinstance(item, torch.Tensor):
        raise ImageLoadError(name, f"{where} is a {type(item).__name__}, not a PIL image or a tensor")
    if not item.is_floating_point():
        raise ImageLoadError(
            name,
            f"{where} is a {item.dtype} tensor; yield a normalised float tensor (e.g. ToTensor + Normalize) or a PIL "
            "image",
        )
    shape = tuple(int(d) for d in item.shape)
    if item.ndim != 3 or shape[0] != 3:
        raise ImageLoadError(name, f"{where} is a tensor of shape {shape}; items must be (3, H, W) images")
    if expected_shape is not None and shape != tuple(expected_shape):
        raise ImageLoadError(
            name,
            f"{where} is a tensor of shape {shape} but the other items are {tuple(expected_shape)} (the model's "
            "input); resize in the dataset's transform to that size, or yield PIL images",
        )
    return item.detach().to(device="cpu", dtype=torch.float32)


class _ItemDataset(Dataset):
    """Map-style view used by the DataLoader: the sampler yields dataset indices, items never raise on bad files."""

    def __init__(
        self,
        source: DataSource,
        transform: Callable[[Image.Image], torch.Tensor],
        shape: tuple[int, ...] | None = None,
        draft_size: tuple[int, int] | None = None,
    ) -> None:
        self.source = source
        self.transform = transform
        self._shape = shape  # what every tensor item must be (see _reference_shape)
        # Travels to the workers inside this (pickled) dataset; the source itself is not changed.
        self.draft_size = draft_size

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None, str | None]:
        try:
            item = self.source.load(i) if self.draft_size is None else self.source.load_draft(i, self.draft_size)
            if isinstance(item, Image.Image):
                tensor = self.transform(item)
            else:
                name = self.source.item_name(i)
                tensor = prepare_item(item, self.transform, index=i, name=name, expected_shape=self._shape)
        except ImageLoadError as exc:
            return i, None, self.source.item_name(i), exc.reason
        return i, tensor, None, None


def _collate(items: list[tuple[int, torch.Tensor | None, str | None, str | None]]) -> Batch:
    ok = [(i, t) for i, t, _, _ in items if t is not None]
    skipped = [(int(i), str(name), str(reason)) for i, t, name, reason in items if t is None]
    if ok and len({tuple(t.shape) for _, t in ok}) > 1:
        # Only reachable without a reference shape (nothing loaded when it was looked for): keep the first item's.
        first = tuple(ok[0][1].shape)
        skipped += [(int(i), f"item {i}", f"item {i} has shape {tuple(t.shape)}, others {first}") for i, t in ok
                    if tuple(t.shape) != first]
        ok = [(i, t) for i, t in ok if tuple(t.shape) == first]
    # An all-skipped chunk leaves images as an empty placeholder; the main process gives it the right shape.
    images = torch.stack([t for _, t in ok]) if ok else torch.empty(0)
    return Batch(images=images, indices=np.array([i for i, _ in ok], dtype=np.int64), skipped=skipped)


def _output_shape(transform: Callable[[Image.Image], torch.Tensor]) -> tuple[int, ...]:
    shape = getattr(transform, "output_shape", None)
    if shape is not None:
        return tuple(shape)
    # Any other callable: ask it what it makes of a blank image.
    return tuple(transform(Image.new("RGB", (8, 8))).shape)


_SHAPE_PROBES = 16  # items tried for a reference shape when the transform cannot give one


def _reference_shape(
    source: DataSource, idx: np.ndarray, transform: Callable[[Image.Image], torch.Tensor]
) -> tuple[int, ...] | None:
    """The shape every item of this pass must have (see the module docstring), or None when none can be found."""
    try:
        return _output_shape(transform)
    except Exception:  # noqa: BLE001 - a transform for tensor-only data may refuse PIL images in any way
        pass
    for i in idx[:_SHAPE_PROBES].tolist():
        try:
            item = source.load(i)
        except ImageLoadError:
            continue
        if isinstance(item, torch.Tensor) and item.ndim == 3 and item.shape[0] == 3:
            return tuple(int(d) for d in item.shape)
        return None  # a PIL image the transform refuses, or a bad tensor: those items are reported on their own
    return None


def iterate_batches(
    source: DataSource,
    indices: np.ndarray,
    transform: Callable[[Image.Image], torch.Tensor],
    batch_size: int,
    strict: bool = False,
    num_workers: int = 0,
    pin_memory: bool = False,
    *,
    draft_size: tuple[int, int] | None = None,
) -> Iterator[Batch]:
    """Load, preprocess and batch ``source[indices]`` in order.

    ``indices`` is walked in chunks of ``batch_size``; each chunk yields one :class:`Batch` holding the items that
    decoded. Results do not depend on ``num_workers``: sources are deterministic per index.

    Args:
        source: The data source.
        indices: ``(M,)`` dataset indices to load, in the order wanted.
        transform: Maps an RGB PIL image to a ``(3, H, W)`` tensor (see
            :func:`~vitdepth.data.transforms.build_transform`). Tensor items skip it (see :func:`prepare_item`).
        batch_size: Items per chunk.
        strict: Raise on the first unreadable image instead of skipping it.
        num_workers: DataLoader worker processes (0 decodes in this process); each keeps
            :data:`PREFETCH_BATCHES` batches ready ahead of the consumer.
        pin_memory: return images in page-locked memory, so the copy to a GPU can be non-blocking.
        draft_size: ``(width, height)`` below which no JPEG is decoded, letting large JPEGs decode downscaled
            (:meth:`DataSource.load_draft <vitdepth.data.sources.DataSource.load_draft>`); pass
            ``draft_size_for(transform)`` (:func:`~vitdepth.data.transforms.draft_size_for`), which is None where
            drafting is not known to keep the transform's output within its documented tolerance. None (the
            default) decodes every image in full.

    Yields:
        One :class:`Batch` per chunk, also when all of its items were skipped (then ``images`` is
        ``(0, 3, H, W)``).

    Raises:
        VitdepthError: ``strict`` and an image cannot be read, or bad arguments.
    """
    idx = np.asarray(indices)
    if idx.ndim != 1 or not (idx.size == 0 or np.issubdtype(idx.dtype, np.integer)):
        raise VitdepthError(
            f"The 'indices' parameter of iterate_batches must be a 1-D integer array. Got dtype {idx.dtype}, "
            f"shape {idx.shape}."
        )
    if idx.size and (idx.min() < 0 or idx.max() >= len(source)):
        raise VitdepthError(
            f"The 'indices' parameter of iterate_batches must lie in [0, {len(source)}) for '{source.spec}'. "
            f"Got range [{idx.min()}, {idx.max()}] instead."
        )
    for name, value, low in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise VitdepthError(
                f"The '{name}' parameter of iterate_batches must be an int >= {low}. Got {value!r} instead."
            )
    if draft_size is not None:
        pair = tuple(draft_size) if isinstance(draft_size, (tuple, list)) else ()
        if len(pair) != 2 or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in pair
        ):
            raise VitdepthError(
                "The 'draft_size' parameter of iterate_batches must be None or a pair of positive ints "
                f"(width, height). Got {draft_size!r} instead."
            )
        draft_size = (int(pair[0]), int(pair[1]))
    # Arguments are checked above, eagerly; the generator below only starts work when iterated.
    return _iterate(source, idx.astype(np.int64), transform, int(batch_size), bool(strict), int(num_workers),
                    bool(pin_memory), draft_size)


def _iterate(
    source: DataSource,
    idx: np.ndarray,
    transform: Callable[[Image.Image], torch.Tensor],
    batch_size: int,
    strict: bool,
    num_workers: int,
    pin_memory: bool = False,
    draft_size: tuple[int, int] | None = None,
) -> Iterator[Batch]:
    if idx.size == 0:
        return
    shape = _reference_shape(source, idx, transform)
    loader = DataLoader(
        _ItemDataset(source, transform, shape, draft_size),
        batch_size=batch_size,
        sampler=idx.tolist(),
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=pin_memory,
        prefetch_factor=PREFETCH_BATCHES if num_workers > 0 else None,
    )
    empty_shape: tuple[int, ...] | None = None
    for batch in loader:
        if strict and batch.skipped:
            _, name, reason = batch.skipped[0]
            raise VitdepthError(
                f"unreadable image '{name}' ({reason}); remove or replace the file, or drop --strict to skip it"
            )
        if batch.indices.size == 0:
            if empty_shape is None:
                empty_shape = shape if shape is not None else (3, 0, 0)
            batch.images = torch.empty((0, *empty_shape), dtype=torch.float32)
        yield batch
