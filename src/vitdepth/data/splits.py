"""Class-stratified subsets and train/val/test splits.

Probes fit on ``train``, choose their regularisation on ``val`` and report accuracy on ``test``, so every class
must reach train and test. Splits are stored as one small integer code per item (see :data:`SPLITS`) so they
can sit beside per-image results and travel in ``per_image.npz``.

Example:
    >>> import numpy as np
    >>> codes = stratified_splits(np.repeat(np.arange(2), 10), seed=0)
    >>> [int((codes == k).sum()) for k in range(3)]
    [14, 2, 4]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .._errors import VitdepthError

__all__ = ["SPLITS", "check_labels", "split_coverage", "stratified_splits", "stratified_subset"]

SPLITS = ("train", "val", "test")
_TRAIN, _VAL, _TEST = 0, 1, 2


def _as_labels(labels: np.ndarray, owner: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1 or not (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)):
        raise VitdepthError(
            f"The 'labels' parameter of {owner} must be a 1-D integer array. Got dtype {arr.dtype}, shape {arr.shape}."
        )
    return arr


def _largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """Integers proportional to ``weights`` that sum to ``total`` (Hamilton's method).

    Each result is the floor or the ceiling of its exact quota, which is what "proportional within rounding"
    means in the tests. Ties go to the earlier entry, so the result is deterministic.
    """
    quota = total * weights / weights.sum()
    counts = np.floor(quota).astype(np.int64)
    short = total - int(counts.sum())
    if short > 0:
        order = np.argsort(-(quota - counts), kind="stable")
        counts[order[:short]] += 1
    return counts


def stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Pick a class-stratified random subset.

    Each class gets its share of ``n`` (largest-remainder rounding); when ``n`` is at least the number of
    classes, every class gets at least one item, taken from the class with the largest share.

    Args:
        labels: ``(N,)`` integer labels.
        n: Subset size; ``n >= N`` returns every index.
        seed: Seed for the choice within each class.

    Returns:
        Sorted ``(min(n, N),)`` int64 indices into ``labels``.

    Raises:
        VitdepthError: ``n < 1`` or ``labels`` is not a 1-D integer array.
    """
    labels = _as_labels(labels, "stratified_subset")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise VitdepthError(f"The 'n' parameter of stratified_subset must be an int >= 1. Got {n!r} instead.")
    total = labels.shape[0]
    if n >= total:
        return np.arange(total, dtype=np.int64)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    alloc = _largest_remainder(int(n), counts.astype(np.float64))
    if n >= len(classes):
        for k in np.flatnonzero(alloc == 0):
            alloc[np.argmax(alloc)] -= 1
            alloc[k] = 1
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(inverse == k), size=int(m), replace=False) for k, m in enumerate(alloc)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def _split_counts(m: int, fractions: np.ndarray) -> np.ndarray:
    """Train/val/test counts for one class of ``m`` items."""
    if m == 1:
        # One item cannot be both fitted and tested; training on it at least lets the probe know the class.
        return np.array([1, 0, 0], dtype=np.int64)
    counts = _largest_remainder(m, fractions)
    # Guarantee one train and one test item, taking from val first: val only tunes lambda, and the val split as a
    # whole is refilled later if this empties it.
    for need in (_TRAIN, _TEST):
        if counts[need] == 0:
            donors = [d for d in (_VAL, _TRAIN, _TEST) if d != need and counts[d] > (1 if d != _VAL else 0)]
            counts[donors[0]] -= 1
            counts[need] += 1
    return counts


def _refill(counts: np.ndarray, split: int, donors: Sequence[tuple[int, int]]) -> bool:
    """Move one item into ``split`` from the first donor split that can spare one.

    ``donors`` holds ``(split, keep)`` pairs: a class gives from that split only if it keeps more than ``keep``.
    The class with the most items in the donor split gives, so proportions move the least.
    """
    for donor, keep in donors:
        spare = counts[:, donor] > keep
        if spare.any():
            k = int(np.argmax(np.where(spare, counts[:, donor], -1)))
            counts[k, donor] -= 1
            counts[k, split] += 1
            return True
    return False


def stratified_splits(labels: np.ndarray, fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0) -> np.ndarray:
    """Split items into train/val/test, stratified by class.

    Each class is split in proportion to ``fractions`` (largest-remainder rounding). Guarantees: a class with at
    least two items has at least one train and one test item (a class with a single item goes to train); when
    ``N >= 10`` and the val fraction is positive, val is not empty as a whole (tiny classes may have no val item),
    and when ``N >= 2`` test is not empty as a whole.

    Args:
        labels: ``(N,)`` integer labels.
        fractions: ``(train, val, test)`` fractions, non-negative, summing to 1, train and test positive.
        seed: Seed for which items of a class go where.

    Returns:
        ``(N,)`` int8 split codes: 0 = train, 1 = val, 2 = test (see :data:`SPLITS`).

    Raises:
        VitdepthError: Bad ``fractions`` or ``labels``.
    """
    labels = _as_labels(labels, "stratified_splits")
    frac = np.asarray(fractions, dtype=np.float64)
    if (
        frac.shape != (3,)
        or not np.all(np.isfinite(frac))
        or np.any(frac < 0)
        or frac[_TRAIN] <= 0
        or frac[_TEST] <= 0
        or abs(frac.sum() - 1.0) > 1e-6
    ):
        raise VitdepthError(
            "The 'fractions' parameter of stratified_splits must be 3 non-negative floats (train, val, test) summing "
            f"to 1 with train and test > 0. Got {tuple(fractions)!r} instead."
        )
    total = labels.shape[0]
    codes = np.zeros(total, dtype=np.int8)
    if total == 0:
        return codes
    classes, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    counts = np.stack([_split_counts(int(m), frac) for m in sizes])
    if total >= 10 and frac[_VAL] > 0 and counts[:, _VAL].sum() == 0:
        # Prefer donors that keep each class's train/test guarantee; a singleton class's only item is the last resort.
        _refill(counts, _VAL, [(_TRAIN, 1), (_TEST, 1), (_TRAIN, 0)])
    if total >= 2 and counts[:, _TEST].sum() == 0:
        # Only possible when every class is a singleton: then test gets one of them.
        _refill(counts, _TEST, [(_TRAIN, 1), (_VAL, 0), (_TRAIN, 0)])
    rng = np.random.default_rng(seed)
    for k in range(len(classes)):
        members = rng.permutation(np.flatnonzero(inverse == k))
        n_train, n_val, _ = counts[k]
        codes[members[n_train : n_train + n_val]] = _VAL
        codes[members[n_train + n_val :]] = _TEST
    return codes


def check_labels(labels: np.ndarray, class_names: Sequence[str]) -> None:
    """Check that a dataset can feed probes: not empty and at least two classes present.

    Args:
        labels: ``(N,)`` integer labels in ``[0, len(class_names))``.
        class_names: Class names, used to name the class in the message.

    Raises:
        VitdepthError: The dataset is empty or has fewer than two classes with images.
        ValueError: A label is outside ``[0, len(class_names))`` (a bug in the data source, not user input).
    """
    labels = np.asarray(labels)
    if labels.size == 0:
        raise VitdepthError(
            "empty dataset: the data source has no images; check the data spec "
            "(folder:PATH needs images in PATH/<class>/)"
        )
    labels = _as_labels(labels, "check_labels")
    if labels.min() < 0 or labels.max() >= len(class_names):
        raise ValueError(f"labels must lie in [0, {len(class_names)}), got range [{labels.min()}, {labels.max()}]")
    present = np.unique(labels)
    if present.size < 2:
        name = class_names[int(present[0])]
        raise VitdepthError(
            f"single-class dataset: probes need >= 2 classes; add images of another class (found only '{name}')"
        )


# What a class missing from a split costs, and the fix, for the warning line.
_MISSING_COST = {
    "train": "the probe never learns them",
    "val": "the regularisation is chosen without them",
    "test": "test accuracy says nothing about them",
}
_MISSING_FIX = {
    "train": "add images to those classes (2 or more each reach train and test) or remove them",
    "val": "add images to those classes or raise the val fraction",
    "test": "add images to those classes (2 or more each reach train and test) or remove them",
}


def _class_list(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def split_coverage(
    labels: np.ndarray,
    splits: np.ndarray,
    class_names: Sequence[str],
    *,
    required: Sequence[str] = ("train", "test"),
) -> list[str]:
    """Name the classes that some split does not reach, one warning line per split.

    :func:`stratified_splits` sends a class with a single item to train only, so its test accuracy is never
    measured while the overall score looks fine; a class missing from the analysed items altogether (a small
    ``--samples``) reaches no split. By default only train and test are required: :func:`stratified_splits` leaves
    tiny classes out of val by design (val only picks the regularisation), so pass ``required=SPLITS`` to report
    val gaps too.

    Args:
        labels: ``(N,)`` integer labels in ``[0, len(class_names))`` of the analysed items.
        splits: ``(N,)`` split codes of the same items (0 = train, 1 = val, 2 = test; see :data:`SPLITS`).
        class_names: Name of each class; every class is expected in every required split.
        required: Names of the splits every class must reach.

    Returns:
        Warning lines (empty when every class reaches every required split): one for classes with no analysed
        item at all, then one per split, each naming up to 5 classes with their item counts and the fix.

    Raises:
        ValueError: ``labels`` and ``splits`` differ in shape, a label or split code is out of range, or
            ``required`` names an unknown split (bugs in the caller, not user input).
    """
    labels = _as_labels(labels, "split_coverage")
    codes = np.asarray(splits)
    if codes.shape != labels.shape:
        raise ValueError(f"labels and splits must have the same shape, got {labels.shape} and {codes.shape}")
    unknown = [r for r in required if r not in SPLITS]
    if unknown:
        raise ValueError(f"required splits must be among {SPLITS}, got {unknown}")
    n_classes = len(class_names)
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes}), got range [{labels.min()}, {labels.max()}]")
    if codes.size and (codes.min() < 0 or codes.max() >= len(SPLITS)):
        raise ValueError(f"split codes must lie in [0, {len(SPLITS)}), got range [{codes.min()}, {codes.max()}]")
    # (class, split) item counts in one pass.
    table = np.zeros((n_classes, len(SPLITS)), dtype=np.int64)
    np.add.at(table, (labels.astype(np.int64), codes.astype(np.int64)), 1)
    sizes = table.sum(axis=1)
    out = []
    absent = [str(class_names[k]) for k in np.flatnonzero(sizes == 0)]
    if absent:
        out.append(
            f"{len(absent)} class(es) have no analysed image, so no split reaches them: {_class_list(absent)}; "
            "analyse more images (a larger --samples) or remove those class folders"
        )
    for name in required:
        s = SPLITS.index(name)
        missing = np.flatnonzero((sizes > 0) & (table[:, s] == 0))
        if missing.size == 0:
            continue
        named = [f"{class_names[k]} ({sizes[k]} image{'s' if sizes[k] != 1 else ''})" for k in missing]
        out.append(
            f"{missing.size} class(es) have no image in the {name} split, so {_MISSING_COST[name]}: "
            f"{_class_list(named)}; {_MISSING_FIX[name]}"
        )
    return out
