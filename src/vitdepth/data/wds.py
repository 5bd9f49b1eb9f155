"""Webdataset tar shards as a random-access source: ``wds:PATTERN[:image=EXT,label=EXT]``.

A webdataset is a list of plain tar files (``train-{000000..000009}.tar``) whose members are grouped into samples
by key: ``sample000123.jpg`` and ``sample000123.cls`` are the image and the integer class of sample
``sample000123``. The pattern is brace-expanded (``braceexpand``, webdataset's own dependency) and may also hold
``*``/``?`` globs; shards are read in the order the pattern lists them.

Why this is hand-written rather than webdataset's pipeline: ``webdataset.WebDataset`` is an iterable that streams
shards from start to end, while the analysis needs random access by index (class-stratified subsets, ordered
batches, per-image results matched back to items). So each shard is indexed once with :mod:`tarfile`: its member
headers are read (tarfile seeks over the data of an uncompressed tar), grouped into samples by webdataset's own rule
(:func:`webdataset.tariterators.base_plus_ext`: the key is the member name up to the first dot of its last path
component, suffixes lower-cased, ``__meta__`` files and non-regular members skipped), and only each sample's shard,
byte offset and size are kept, with its key and label; no image bytes. :meth:`WebDatasetSource.load` then seeks to
the offset and decodes the bytes. Memory holds index metadata only, whatever the number of samples.

Compressed shards (``.tar.gz``) cannot be read at an offset without decompressing everything before it, so they
are refused with the fix (decompress them).

What indexing leaves out is recorded in :attr:`~vitdepth.data.DataSource.warnings`, one line per kind: samples
without an image or without a class, a class that is not an integer, duplicate files in a sample, members cut off
by a truncated shard, and a shard whose tar headers become unreadable part way. An image that does not decode is
found when it is loaded and skipped by the loader like a bad file in a folder (:class:`ImageLoadError`).

Splits: :meth:`WebDatasetSource.assign_splits` puts each sample in train/val/test by a stable hash of its key
(sha256, not Python's salted ``hash``), so a sample keeps its split whatever the shard order or subset analysed.

Example:
    >>> src = create_source("wds:/data/imagenet/val-{000000..000006}.tar")  # doctest: +SKIP
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import tarfile
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from .._errors import VitdepthError
from .sources import DataSource, ImageLoadError, decode_image_bytes, split_spec_options, summarise_skips

__all__ = ["WDS_IMAGE_SUFFIXES", "WebDatasetSource", "parse_wds"]

# Image suffixes in the order a sample's image is chosen when it holds several (webdataset's "jpg;png;..." habit).
WDS_IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm", "pbm")
_LABEL_SUFFIX = "cls"
_MAX_CLS_BYTES = 64  # a class index is a short decimal number; anything longer is not one
_TAR_BLOCK = 512
# Magic bytes of compressed shards, for a one-line refusal instead of tarfile's "invalid header".
_COMPRESSED = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"))

# What indexing left out, by kind; order is the order of the warnings.
_SKIP_TEXT = {
    "no_label": "sample(s) without a class file were skipped",
    "bad_label": "sample(s) whose class is not an integer were skipped",
    "no_image": "sample(s) without an image were skipped",
    "duplicate": "sample(s) with two files of the same suffix were skipped",
    "truncated": "sample(s) cut off by the end of a truncated shard were skipped",
}


def _fallback_base_plus_ext(path: str) -> tuple[str | None, str | None]:
    # The same rule as webdataset.tariterators.base_plus_ext (webdataset 1.0), for installs without webdataset.
    match = re.match(r"^((?:.*/|)[^.]+)[.]([^/]*)$", path)
    if not match:
        return None, None
    return match.group(1), match.group(2)


def _key_rule() -> Callable[[str], tuple[str | None, str | None]]:
    """webdataset's own key/suffix split when installed, so samples group exactly as webdataset groups them."""
    try:
        from webdataset.tariterators import base_plus_ext
    except ImportError:
        return _fallback_base_plus_ext
    return base_plus_ext


def _is_meta(name: str) -> bool:
    # webdataset's tar_file_iterator skips "__...__" members (skip_meta=r"__[^/]*__($|/)"), e.g. __index__.
    return re.match(r"__[^/]*__($|/)", name) is not None


def expand_shards(pattern: str, spec: str) -> list[str]:
    """The shard paths a pattern names, in its order: braces expanded, then ``*``/``?`` globs sorted.

    Raises:
        VitdepthError: The pattern names no file, or some named shards do not exist.
    """
    expanded = [pattern]
    if "{" in pattern:
        try:
            from braceexpand import braceexpand
        except ImportError:
            raise VitdepthError(
                f"'{spec}' uses a brace pattern but 'braceexpand' is not installed; pip install webdataset"
            ) from None
        expanded = list(braceexpand(pattern))
    shards: list[str] = []
    for item in expanded:
        item = os.path.expanduser(item)
        if any(c in item for c in "*?["):
            shards.extend(sorted(glob.glob(item)))
        else:
            shards.append(item)
    seen: set[str] = set()
    unique = []
    for shard in shards:
        real = os.path.abspath(shard)
        if real not in seen:
            seen.add(real)
            unique.append(real)
    if not unique:
        raise VitdepthError(f"the pattern in '{spec}' matches no shard file; check it (e.g. wds:train-{{0..9}}.tar)")
    missing = [s for s in unique if not os.path.isfile(s)]
    if missing:
        raise VitdepthError(
            f"{len(missing)} of the {len(unique)} shard(s) named by '{spec}' do not exist (first: '{missing[0]}'); "
            "check the pattern's path and brace range"
        )
    return unique


def _refuse_compressed(path: str, spec: str) -> None:
    with open(path, "rb") as f:
        head = f.read(8)
    for magic, name in _COMPRESSED:
        if head.startswith(magic):
            raise VitdepthError(
                f"shard '{path}' of '{spec}' is {name}-compressed, which allows no random access; decompress the "
                "shards to plain .tar files and pass their pattern"
            )


class _Sample:
    """Members of one sample while a shard is indexed: suffix -> (offset, size), plus what went wrong."""

    __slots__ = ("key", "members", "label_raw", "duplicate", "truncated")

    def __init__(self, key: str) -> None:
        self.key = key
        self.members: dict[str, tuple[int, int]] = {}
        self.label_raw: bytes | None = None
        self.duplicate = False
        self.truncated = False


class WebDatasetSource(DataSource):
    """Samples of webdataset tar shards, indexed once for random access (see the module docstring for why).

    Item order is shard order, then member order within a shard. A sample's image is its first member whose suffix
    is ``image`` (default: the first of jpg, jpeg, png, webp, bmp, gif, tif, tiff, ppm, pgm, pbm present); its class
    is the decimal integer in the member with suffix ``label`` (default ``cls``, webdataset's convention). Classes
    are the sorted distinct class values; ``class_names`` are those values as strings (``"0"``, ``"7"``, ...), and
    label ``k`` means the ``k``-th smallest value.

    Args:
        spec: The spec string it was created from.
        shards: Shard paths in order.
        image: Image suffix to use, or None for the default list.
        label: Class suffix (default ``cls``).

    Raises:
        VitdepthError: A shard is compressed or is not a tar file, or no shard holds a usable sample.
    """

    kind = "wds"

    def __init__(self, spec: str, shards: list[str], *, image: str | None = None, label: str = _LABEL_SUFFIX) -> None:
        self.spec = spec
        self.shards = list(shards)
        self.image_suffixes = (image.lower().lstrip("."),) if image else WDS_IMAGE_SUFFIXES
        self.label_suffix = label.lower().lstrip(".")
        self.warnings = []
        self._split_u: np.ndarray | None = None
        skipped: dict[str, list[str]] = {kind: [] for kind in _SKIP_TEXT}
        shard_ids: list[int] = []
        offsets: list[int] = []
        sizes: list[int] = []
        ext_ids: list[int] = []
        keys: list[str] = []
        values: list[int] = []
        stats = []
        for s, path in enumerate(self.shards):
            _refuse_compressed(path, spec)
            st = os.stat(path)
            stats.append((st.st_size, st.st_mtime_ns))
            for sample in self._index_shard(path, spec, st.st_size):
                name = f"{path}/{sample.key}"
                if sample.duplicate:
                    skipped["duplicate"].append(name)
                    continue
                if sample.truncated:
                    skipped["truncated"].append(name)
                    continue
                ext = next((e for e in self.image_suffixes if e in sample.members), None)
                if ext is None:
                    skipped["no_image"].append(name)
                    continue
                value = self._label_value(sample, name, skipped)
                if value is None:
                    continue
                offset, size = sample.members[ext]
                shard_ids.append(s)
                offsets.append(offset)
                sizes.append(size)
                ext_ids.append(self.image_suffixes.index(ext))
                keys.append(sample.key)
                values.append(value)
        self.warnings.extend(summarise_skips(_SKIP_TEXT, skipped))
        if not keys:
            wanted = "/".join(self.image_suffixes[:3])
            raise VitdepthError(
                f"no usable sample in the {len(self.shards)} shard(s) of '{spec}' (each needs KEY.{wanted}... and "
                f"KEY.{self.label_suffix}); check the pattern, or pass :image=EXT,label=EXT for other suffixes"
            )
        self._shard_stats = stats
        self._shard = np.asarray(shard_ids, dtype=np.int32)
        self._offset = np.asarray(offsets, dtype=np.int64)
        self._size = np.asarray(sizes, dtype=np.int64)
        self._ext = np.asarray(ext_ids, dtype=np.uint8)
        self.keys = keys
        distinct = np.unique(np.asarray(values, dtype=np.int64))
        self.class_names = [str(int(v)) for v in distinct]
        self.labels = np.searchsorted(distinct, np.asarray(values, dtype=np.int64)).astype(np.int64)

    def _index_shard(self, path: str, spec: str, file_size: int) -> list[_Sample]:
        """Group the members of one shard into samples (offsets and sizes only), as webdataset groups them."""
        keys = _key_rule()
        samples: list[_Sample] = []
        current: _Sample | None = None
        try:
            tf = tarfile.open(path, mode="r:")  # noqa: SIM115 - closed in the finally below
        except tarfile.TarError as exc:
            raise VitdepthError(
                f"shard '{path}' of '{spec}' is not a readable tar file ({exc}); check the pattern or the file"
            ) from None
        stopped_at = None
        try:
            while True:
                try:
                    info = tf.next()
                except tarfile.TarError:
                    stopped_at = tf.offset
                    break
                if info is None:
                    stopped_at = tf.offset
                    break
                # Keep memory flat on big shards: tarfile would otherwise hold every TarInfo (webdataset does the same).
                tf.members = []
                if not info.isreg() or _is_meta(info.name):
                    continue
                prefix, suffix = keys(info.name)
                if prefix is None or suffix is None:
                    continue
                suffix = suffix.lower()
                if current is None or prefix != current.key:
                    current = _Sample(prefix)
                    samples.append(current)
                if suffix in current.members:
                    current.duplicate = True
                current.members[suffix] = (info.offset_data, info.size)
                if info.offset_data + info.size > file_size:
                    current.truncated = True
                elif suffix == self.label_suffix and info.size <= _MAX_CLS_BYTES:
                    # Labels are needed up front (stratified subsets); read the few bytes now, from the open shard.
                    member = tf.extractfile(info)
                    current.label_raw = member.read() if member is not None else None
        finally:
            tf.close()
        if stopped_at is not None and stopped_at < file_size and self._has_data_after(path, stopped_at):
            self.warnings.append(
                f"shard '{path}' has an unreadable tar header at byte {stopped_at}: the remaining "
                f"{file_size - stopped_at} bytes were not indexed; re-create the shard to include them"
            )
        return samples

    @staticmethod
    def _has_data_after(path: str, offset: int) -> bool:
        # A tar ends with zero blocks (padded to its record size); anything else after the last header is lost data.
        with open(path, "rb") as f:
            f.seek(offset)
            while chunk := f.read(1 << 16):
                if chunk.strip(b"\0"):
                    return True
        return False

    def _label_value(self, sample: _Sample, name: str, skipped: dict[str, list[str]]) -> int | None:
        if self.label_suffix not in sample.members:
            skipped["no_label"].append(name)
            return None
        try:
            if sample.label_raw is None:  # longer than any class index
                raise ValueError(name)
            return int(sample.label_raw.decode("utf-8").strip())
        except (UnicodeDecodeError, ValueError):
            skipped["bad_label"].append(name)
            return None

    def item_name(self, i: int) -> str:
        """``SHARD/KEY.EXT``: the shard and the tar member of item ``i``'s image."""
        i = self._check_index(i)
        return f"{self.shards[int(self._shard[i])]}/{self.keys[i]}.{self.image_suffixes[int(self._ext[i])]}"

    def load(self, i: int) -> Image.Image:  # noqa: D102 - documented on DataSource
        return self.load_draft(i, None)

    def load_draft(self, i: int, draft_size: tuple[int, int] | None) -> Image.Image:  # noqa: D102 - on DataSource
        i = self._check_index(i)
        name = self.item_name(i)
        size = int(self._size[i])
        try:
            # A fresh handle per item: no shared file position between DataLoader workers forked from one process.
            with open(self.shards[int(self._shard[i])], "rb") as f:
                f.seek(int(self._offset[i]))
                data = f.read(size)
        except OSError as exc:
            raise ImageLoadError(name, f"shard cannot be read: {exc.strerror or exc}") from exc
        if len(data) != size:
            raise ImageLoadError(name, "the shard is shorter than when it was indexed (changed since?)")
        return decode_image_bytes(data, name, draft_size)

    def assign_splits(self, fractions: tuple[float, float, float]) -> np.ndarray:
        """Split by a stable hash of each sample's key: ``u = sha256(key)`` read as a number in ``[0, 1)``.

        A sample goes to train when ``u < train``, to val when ``u < train + val``, else to test. The same key
        always lands in the same split, in any shard order, subset or process; split sizes are proportional to
        ``fractions`` up to sampling noise, and not stratified by class.

        Args:
            fractions: ``(train, val, test)``, non-negative, summing to 1.

        Returns:
            ``(N,)`` int8 split codes (0 train, 1 val, 2 test).

        Raises:
            VitdepthError: ``fractions`` is not three non-negative numbers summing to 1.
        """
        frac = np.asarray(fractions, dtype=np.float64)
        if frac.shape != (3,) or not np.all(np.isfinite(frac)) or np.any(frac < 0) or abs(frac.sum() - 1.0) > 1e-6:
            raise VitdepthError(
                "The 'fractions' parameter of assign_splits must be 3 non-negative floats (train, val, test) summing "
                f"to 1. Got {tuple(fractions)!r} instead."
            )
        if self._split_u is None:
            # The first 8 bytes of sha256 as an unsigned integer, scaled to [0, 1): stable across runs and machines.
            top = np.asarray([int.from_bytes(hashlib.sha256(k.encode()).digest()[:8], "big") for k in self.keys],
                             dtype=np.uint64)
            self._split_u = (top >> np.uint64(11)).astype(np.float64) / float(1 << 53)
        bounds = np.cumsum(frac)[:2]
        return np.searchsorted(bounds, self._split_u, side="right").astype(np.int8)

    def _content_hash(self) -> str:
        # Shard sizes and mtimes (one stat each, no reads) plus the index: changes when a shard is rewritten.
        h = hashlib.sha256()
        for path, (size, mtime) in zip(self.shards, self._shard_stats, strict=True):
            h.update(f"{os.path.basename(path)}\t{size}\t{mtime}\n".encode())
        h.update("\n".join(self.keys).encode())
        for arr in (self._shard, self._offset, self._size, self.labels):
            h.update(arr.tobytes())
        h.update("\n".join(self.class_names).encode())
        return h.hexdigest()

    def identity(self) -> dict[str, Any]:  # noqa: D102 - documented on DataSource
        out = super().identity()
        out.update(
            shards=len(self.shards),
            first_shard=self.shards[0],
            last_shard=self.shards[-1],
            label_suffix=self.label_suffix,
            split_rule="sha256(key)",
        )
        return out


def parse_wds(spec: str, options: str | None) -> WebDatasetSource:
    """Create a :class:`WebDatasetSource` from the part of a ``wds:`` spec after the colon."""
    pattern, opts = split_spec_options(spec, options, "wds", ("image", "label"))
    shards = expand_shards(pattern, spec)
    return WebDatasetSource(spec, shards, image=opts.get("image"), label=opts.get("label", _LABEL_SUFFIX))
