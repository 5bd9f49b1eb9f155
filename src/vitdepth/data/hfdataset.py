"""Hugging Face ``datasets`` data as a source: ``hf-dataset:PATH_OR_ID[:split=NAME,image=COL,label=COL,config=NAME]``.

What ``PATH_OR_ID`` may be, tried in this order:

1. A directory written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (it holds ``state.json`` or
   ``dataset_dict.json``): read with ``datasets.load_from_disk``, memory-mapped in place.
2. A ``.parquet`` or ``.arrow`` file, or a glob of them (``/data/val-*.parquet``): read with
   ``datasets.load_dataset("parquet" | "arrow", data_files=...)`` (the library converts it once into its cache).
3. Any other directory: ``datasets.load_dataset(DIR)``, which infers the format and the splits from the file names
   as the library does.
4. A hub id (``user/name`` or ``name``): ``datasets.load_dataset(ID, name=config)``, which downloads into and reads
   from the library's cache and honours ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` like the library. An offline
   cache miss is a one-line error naming the id, the cache directory and the fix.

Split rule, when the data has several splits and no ``split=`` is given: a single split is used as it is; otherwise
the first present of ``validation``, ``val``, ``valid``, ``test`` (held-out data, as an evaluation wants; recorded
in :attr:`~vitdepth.data.DataSource.warnings`); otherwise the spec is refused with the available splits named.

Columns (:func:`find_image_column`, :func:`find_label_column`): the image column is the one ``datasets.Image``
feature (else the one column of encoded bytes, ``{"bytes", "path"}`` or binary); the label column is the one
``ClassLabel`` feature, else the one column named ``label``, ``labels``, ``class`` or ``target``. Several candidates
are refused with their names and the option to pass (``image=COL`` / ``label=COL``); no label candidate at all makes
the source unlabelled. ``class_names`` are the ``ClassLabel`` names (all of them, also classes without an item, so
label ids keep their meaning), else the sorted distinct values. ``ClassLabel`` value -1 means "no label" in
``datasets``: such rows are left out with a warning, and a split whose rows are all -1 (many hub test splits) is
read as unlabelled.

Images are decoded one item at a time in :meth:`HFDatasetSource.load` from the memory-mapped arrow table, with the
same decoder as image files (so the same PNG gives the same pixels as from a folder); only the label column is read
up front, so memory does not grow with the number of images.

``datasets`` is an optional extra: it is imported only when such a source is made.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .._errors import VitdepthError
from .sources import DataSource, ImageLoadError, hash_labels, image_from_value, split_spec_options
from .tabular import LABEL_COLUMN_NAMES, labels_from_values

__all__ = [
    "HFDatasetSource",
    "choose_split",
    "find_image_column",
    "find_label_column",
    "load_hf_dataset",
    "parse_hf_dataset",
]

PREFERRED_SPLITS = ("validation", "val", "valid", "test")
# A hub id: "name" or "owner/name" (letters, digits, "-", "_", "."), which no local path form looks like.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_FILE_FORMATS = {".parquet": "parquet", ".arrow": "arrow"}
_OPTION_KEYS = ("split", "image", "label", "config")


def _import_datasets(what: str) -> Any:
    try:
        import datasets
    except ImportError:
        raise VitdepthError(f"{what} needs the Hugging Face 'datasets' package; pip install datasets") from None
    return datasets


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def choose_split(available: list[str], split: str | None, where: str, example: str) -> tuple[str, str | None]:
    """Pick the split to read (see the module docstring for the rule).

    Args:
        available: The split names the data has.
        split: The split the user asked for, or None.
        where: What the data is, for messages.
        example: The spec to show with ``:split=NAME`` in messages.

    Returns:
        ``(split name, note for the warnings or None)``.

    Raises:
        VitdepthError: ``split`` is not available, or there are several splits and none is preferred.
    """
    names = ", ".join(available) or "none"
    if split is not None:
        if split in available:
            return split, None
        raise VitdepthError(
            f"no split '{split}' in {where} (splits: {names}); pass {example}:split=NAME with one of them"
        )
    if len(available) == 1:
        return available[0], None
    pick = next((p for p in PREFERRED_SPLITS if p in available), None)
    if pick is None:
        raise VitdepthError(f"{where} has splits {names}; pick one with {example}:split=NAME")
    return pick, f"read split '{pick}' of {where} (splits: {names}); pass :split=NAME for another"


def find_image_column(features: dict[str, Any], given: str | None, where: str) -> str:
    """The image column of a dataset's features (see the module docstring for the rule).

    Raises:
        VitdepthError: ``given`` is not a column, or no single image column can be found.
    """
    datasets = _import_datasets(where)
    columns = ", ".join(features) or "none"
    if given is not None:
        if given not in features:
            raise VitdepthError(f"no column '{given}' in {where} (columns: {columns}); pass image=COL with one of them")
        return given
    found = [c for c, f in features.items() if isinstance(f, datasets.Image)]
    if not found:
        found = [
            c
            for c, f in features.items()
            if (isinstance(f, dict) and "bytes" in f)
            or (isinstance(f, datasets.Value) and f.dtype in ("binary", "large_binary"))
        ]
    if len(found) > 1:
        raise VitdepthError(f"{where} has several image columns ({', '.join(found)}); pick one with image=COL")
    if not found:
        raise VitdepthError(
            f"{where} has no image column (a datasets.Image feature) among its columns ({columns}); "
            "pass image=COL"
        )
    return found[0]


def find_label_column(features: dict[str, Any], given: str | None, where: str, image_column: str) -> str | None:
    """The label column of a dataset's features, or None when there is no candidate at all (unlabelled).

    Raises:
        VitdepthError: ``given`` is not a column, or several columns could be the label.
    """
    datasets = _import_datasets(where)
    if given is not None:
        if given not in features:
            columns = ", ".join(features)
            raise VitdepthError(f"no column '{given}' in {where} (columns: {columns}); pass label=COL with one of them")
        return given
    found = [c for c, f in features.items() if isinstance(f, datasets.ClassLabel)]
    if not found:
        found = [c for c in features if c.lower() in LABEL_COLUMN_NAMES and c != image_column]
    if len(found) > 1:
        raise VitdepthError(f"{where} has several label columns ({', '.join(found)}); pick one with label=COL")
    return found[0] if found else None


class HFDatasetSource(DataSource):
    """One split of a Hugging Face ``datasets.Dataset`` (see the module docstring for the rules).

    Args:
        spec: The spec string it was created from (``object:...`` for in-memory datasets).
        dataset: The ``datasets.Dataset`` (one split; memory-mapped when loaded from disk or the cache).
        image: Image column, or None to find it.
        label: Label column, or None to find it (none found: unlabelled).
        origin: What the data is (``{"dataset": PATH_OR_ID, "split": ..., "config": ...}``) for :meth:`identity`.

    Raises:
        VitdepthError: The columns cannot be found, a label column holds unusable values, or the split is empty.
    """

    kind = "hf-dataset"

    def __init__(
        self,
        spec: str,
        dataset: Any,
        *,
        image: str | None = None,
        label: str | None = None,
        origin: dict[str, Any] | None = None,
    ) -> None:
        datasets = _import_datasets(f"'{spec}'")
        if not isinstance(dataset, datasets.Dataset):
            raise VitdepthError(
                f"'{spec}' is a {type(dataset).__name__}, not a datasets.Dataset; pass one split "
                "(e.g. ds['validation'])"
            )
        self.spec = spec
        self.origin = dict(origin or {})
        self.warnings = list(self.origin.pop("notes", []))
        where = self._where()
        features = dataset.features
        self.image_column = find_image_column(features, image, where)
        self.label_column = find_label_column(features, label, where, self.image_column)
        view = dataset.select_columns([self.image_column])
        if isinstance(features[self.image_column], datasets.Image):
            # Undecoded: load() gets the encoded bytes and decodes them like an image file (same pixels, same
            # errors); the cast changes the feature only, the memory-mapped table is not copied.
            view = view.cast_column(self.image_column, datasets.Image(decode=False))
        self._images = view
        self._rows: np.ndarray | None = None
        self._fingerprint = str(getattr(dataset, "_fingerprint", "") or "")
        self._cache_files = [str(c.get("filename")) for c in (getattr(dataset, "cache_files", None) or [])]
        n = len(dataset)
        if n == 0:
            raise VitdepthError(f"empty dataset: {where} has no rows; pick another split or data")
        if self.label_column is None:
            self._set_unlabelled(n)
            return
        self._read_labels(datasets, dataset, features[self.label_column], where)

    def _where(self) -> str:
        target = self.origin.get("dataset") or self.spec
        split = self.origin.get("split")
        return f"'{target}'" + (f" split '{split}'" if split else "")

    def _read_labels(self, datasets: Any, dataset: Any, feature: Any, where: str) -> None:
        col = self.label_column
        array = dataset.select_columns([col]).with_format("arrow")[:].column(col)
        values = array.to_pylist()
        keep = [v is not None for v in values]
        dropped_null = keep.count(False)
        if isinstance(feature, datasets.ClassLabel):
            keep = [k and v != -1 for k, v in zip(keep, values, strict=True)]
            kept = [int(v) for v, k in zip(values, keep, strict=True) if k]
            if not kept:
                self.warnings.append(f"every row of {where} has label -1 (no label): read as unlabelled data")
                self._set_unlabelled(len(values))
                self.label_column = None
                return
            self.class_names = [str(name) for name in feature.names]
            bad = [v for v in kept if not 0 <= v < len(self.class_names)]
            if bad:
                raise VitdepthError(
                    f"label column '{col}' of {where} holds {bad[0]}, outside its {len(self.class_names)} class "
                    "names; fix the dataset's ClassLabel feature"
                )
            labels = np.asarray(kept, dtype=np.int64)
        else:
            kept = [v for v, k in zip(values, keep, strict=True) if k]
            if not kept:
                raise VitdepthError(f"label column '{col}' of {where} is empty (all null); pass label=COL with labels")
            labels, self.class_names = labels_from_values(kept, f"label column '{col}' of {where}")
        dropped = len(values) - len(kept)
        if dropped:
            why = f"{dropped_null} null, {dropped - dropped_null} -1 (no label)" if dropped_null else "-1 (no label)"
            self.warnings.append(f"{dropped} row(s) of {where} have no label ({why}) and were left out")
            self._rows = np.flatnonzero(np.asarray(keep)).astype(np.int64)
        self.labels = labels

    def _row(self, i: int) -> int:
        i = self._check_index(i)
        return i if self._rows is None else int(self._rows[i])

    def item_name(self, i: int) -> str:
        """``DATASET[SPLIT][ROW]`` with the row in the dataset, e.g. ``beans[validation][12]``."""
        target = self.origin.get("dataset") or self.spec
        split = self.origin.get("split")
        return f"{target}[{split}][{self._row(i)}]" if split else f"{target}[{self._row(i)}]"

    def load(self, i: int) -> Image.Image:  # noqa: D102 - documented on DataSource
        return self.load_draft(i, None)

    def load_draft(self, i: int, draft_size: tuple[int, int] | None) -> Image.Image:  # noqa: D102 - on DataSource
        row = self._row(i)
        name = self.item_name(i)
        try:
            value = self._images[row][self.image_column]
        except Exception as exc:  # noqa: BLE001 - arrow and datasets raise many types for a bad row
            raise ImageLoadError(name, f"{type(exc).__name__}: {_first_line(exc)}") from exc
        return image_from_value(value, name, draft_size)

    def _content_hash(self) -> str:
        # The dataset's fingerprint (datasets changes it with the data and every transform) plus the sizes and
        # mtimes of its arrow files, the columns used and the labels.
        h = hashlib.sha256()
        h.update(f"{self._fingerprint}\t{self.image_column}\t{self.label_column}\n".encode())
        for path in self._cache_files:
            try:
                st = os.stat(path)
                h.update(f"{os.path.basename(path)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{os.path.basename(path)}\tmissing\n".encode())
        hash_labels(h, self.class_names, self.labels, self._rows)
        return h.hexdigest()

    def identity(self) -> dict[str, Any]:  # noqa: D102 - documented on DataSource
        out = super().identity()
        out.update(
            dataset=self.origin.get("dataset"),
            split=self.origin.get("split"),
            config=self.origin.get("config"),
            image_column=self.image_column,
            label_column=self.label_column,
            fingerprint=self._fingerprint or None,
        )
        return out


def _is_saved_to_disk(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (
        (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file()
    )


def _load_from_disk(datasets: Any, folder: Path, split: str | None, spec: str) -> tuple[Any, dict[str, Any]]:
    try:
        obj = datasets.load_from_disk(str(folder))
    except Exception as exc:  # noqa: BLE001 - a damaged save raises FileNotFoundError, ArrowInvalid, JSON errors ...
        raise VitdepthError(
            f"'{folder}' cannot be read with datasets.load_from_disk: {type(exc).__name__}: {_first_line(exc)}; "
            "save it again with save_to_disk"
        ) from None
    origin: dict[str, Any] = {"dataset": str(folder), "notes": []}
    if isinstance(obj, datasets.DatasetDict):
        name, note = choose_split(list(obj), split, f"'{folder}'", f"hf-dataset:{folder}")
        origin.update(split=name, notes=[note] if note else [])
        return obj[name], origin
    own = str(obj.split) if getattr(obj, "split", None) is not None else None
    if split is not None and split != own:
        raise VitdepthError(
            f"'{folder}' holds one dataset without splits (saved from a Dataset, not a DatasetDict); "
            f"drop :split={split}"
        )
    origin["split"] = own
    return obj, origin


def _prepare(
    datasets: Any, path: str, *, data_files: Any = None, config: str | None, split: str | None, hub: bool, shown: str
) -> tuple[Any, dict[str, Any]]:
    """Load one split through a ``datasets`` builder (hub id, local folder or data files), as load_dataset does."""
    try:
        builder = datasets.load_dataset_builder(path, name=config, data_files=data_files)
        builder.download_and_prepare()
        available = [str(s) for s in (builder.info.splits or {})]
        name, note = choose_split(available, split, f"'{shown}'", f"hf-dataset:{shown}")
        ds = builder.as_dataset(split=name)
    except VitdepthError:
        raise
    except Exception as exc:  # noqa: BLE001 - datasets and huggingface_hub raise many types; each becomes one line
        raise _load_error(datasets, exc, shown, hub) from None
    return ds, {"dataset": shown, "split": name, "config": config, "notes": [note] if note else []}


def _load_error(datasets: Any, exc: BaseException, target: str, hub: bool) -> VitdepthError:
    cache = getattr(datasets.config, "HF_DATASETS_CACHE", "the datasets cache")
    offline = bool(getattr(datasets.config, "HF_HUB_OFFLINE", False))
    kind = type(exc).__name__
    if (hub and offline and isinstance(exc, (ConnectionError, OSError))) or kind == "OfflineModeIsEnabled":
        return VitdepthError(
            f"hub dataset '{target}' is not in the cache ({cache}) and offline mode is on (HF_HUB_OFFLINE / "
            "HF_DATASETS_OFFLINE); download it once with network access (unset HF_HUB_OFFLINE), or pass a local path"
        )
    if hub and isinstance(exc, ConnectionError):
        return VitdepthError(
            f"cannot reach the Hugging Face hub for dataset '{target}' and it is not in the cache ({cache}): "
            f"{_first_line(exc)}; connect once to download it, or pass a local path"
        )
    if kind == "DatasetNotFoundError":
        return VitdepthError(
            f"hub dataset '{target}' not found ({_first_line(exc)}); check the id (and access for gated datasets), "
            "or pass a local path"
        )
    return VitdepthError(
        f"cannot load Hugging Face dataset '{target}': {kind}: {_first_line(exc)}; check the path or id, config=NAME "
        "and split=NAME"
    )


def load_hf_dataset(target: str, *, split: str | None, config: str | None, spec: str) -> tuple[Any, dict[str, Any]]:
    """Load the one split a ``hf-dataset:`` spec names (see the module docstring for the order of tries).

    Returns:
        ``(datasets.Dataset, origin)`` where origin records the dataset, split, config and notes for warnings.

    Raises:
        VitdepthError: The path does not exist, the format is not supported, the split is ambiguous or missing,
            or ``datasets`` cannot load it (offline cache miss, unknown hub id, ...), in one line.
    """
    datasets = _import_datasets(f"'{spec}'")
    local = os.path.abspath(os.path.expanduser(target))
    if any(c in target for c in "*?["):
        files = sorted(glob.glob(local))
        if not files:
            raise VitdepthError(f"the pattern '{target}' in '{spec}' matches no file; check the path")
        return _load_files(datasets, files, target, split, spec)
    path = Path(local)
    if path.is_dir():
        if _is_saved_to_disk(path):
            if config is not None:
                raise VitdepthError(f"'{path}' was saved with save_to_disk and has no configs; drop config={config}")
            return _load_from_disk(datasets, path, split, spec)
        return _prepare(datasets, local, config=config, split=split, hub=False, shown=local)
    if path.is_file():
        return _load_files(datasets, [local], local, split, spec)
    if _HUB_ID.match(target) and not target.lower().endswith(tuple(_FILE_FORMATS)):
        return _prepare(datasets, target, config=config, split=split, hub=True, shown=target)
    raise VitdepthError(
        f"'{local}' does not exist and is not a hub id (user/name); check the path after 'hf-dataset:'"
    )


def _load_files(
    datasets: Any, files: list[str], shown: str, split: str | None, spec: str
) -> tuple[Any, dict[str, Any]]:
    suffixes = {Path(f).suffix.lower() for f in files}
    if len(suffixes) != 1 or next(iter(suffixes)) not in _FILE_FORMATS:
        if suffixes <= {".csv", ".tsv"}:
            raise VitdepthError(f"'{shown}' is a table of paths: use csv:{shown} instead of hf-dataset:")
        found = ", ".join(sorted(suffixes))
        raise VitdepthError(
            f"'{shown}' holds {found} files; hf-dataset reads .parquet or .arrow files of one kind, a save_to_disk "
            "folder or a hub id"
        )
    fmt = _FILE_FORMATS[next(iter(suffixes))]
    # One "train" split, the datasets convention for plain data files; :split= may only name it.
    return _prepare(datasets, fmt, data_files=files, config=None, split=split, hub=False, shown=shown)


def parse_hf_dataset(spec: str, options: str | None) -> HFDatasetSource:
    """Create a :class:`HFDatasetSource` from the part of a ``hf-dataset:`` spec after the colon."""
    target, opts = split_spec_options(spec, options, "hf-dataset", _OPTION_KEYS)
    ds, origin = load_hf_dataset(target, split=opts.get("split"), config=opts.get("config"), spec=spec)
    return HFDatasetSource(spec, ds, image=opts.get("image"), label=opts.get("label"), origin=origin)
