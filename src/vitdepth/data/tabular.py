"""A table of image paths and labels: ``csv:FILE[:path=COL,label=COL]``.

The file is read with the standard :mod:`csv` module (no pandas needed), UTF-8 with or without a byte-order mark;
the delimiter is the one of comma, tab, semicolon and ``|`` that the header row holds most often (comma when it
holds none). The first row is the header.

- The image column is the one named ``path``, ``image``, ``file``, ``filename``, ``image_path`` or ``filepath``
  (case-insensitive); the label column the one named ``label``, ``labels``, ``class`` or ``target``. Two matches
  are ambiguous and refused with the candidates; ``path=COL`` / ``label=COL`` pick a column by name.
- Relative paths are relative to the CSV file's directory (so a table travels with its images); absolute paths and
  ``~`` are allowed.
- A table without any label column is unlabelled data (:attr:`~vitdepth.data.DataSource.labelled` False).
- Classes are the distinct label strings, sorted numerically when all are integers (``2`` before ``10``), else
  alphabetically.

Rows are kept in table order. Rows whose file is missing, not a regular file or cannot be examined, rows with an
empty path or label, and rows with too few fields are skipped and summarised in
:attr:`~vitdepth.data.DataSource.warnings` (one line per kind, with line numbers), as a folder scan reports what it
leaves out; an image that exists but does not decode is skipped by the loader like a bad file in a folder.

Example:
    >>> src = create_source("csv:/data/pets/val.csv:path=filepath,label=breed")  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import hashlib
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import VitdepthError
from .sources import FileListSource, split_spec_options, summarise_skips

__all__ = [
    "LABEL_COLUMN_NAMES",
    "PATH_COLUMN_NAMES",
    "CSVSource",
    "labels_from_values",
    "parse_csv",
    "sorted_class_names",
]

PATH_COLUMN_NAMES = ("path", "image", "file", "filename", "image_path", "filepath")
LABEL_COLUMN_NAMES = ("label", "labels", "class", "target")

_SKIP_TEXT = {
    "missing": "row(s) name an image file that does not exist and were skipped",
    "special": "row(s) name something that is not a regular file (folder, FIFO, device) and were skipped",
    "unreadable": "row(s) name a file that cannot be examined (permissions) and were skipped",
    "no_path": "row(s) have an empty image path and were skipped",
    "no_label": "row(s) have an empty label and were skipped",
    "short": "row(s) have fewer fields than the header and were skipped",
}


def sorted_class_names(values: list[str]) -> list[str]:
    """Distinct label strings, in numeric order when all are integers, else in string order.

    Numeric order keeps ``"10"`` after ``"9"``, so integer class ids exported as text keep their meaning.
    """
    distinct = set(values)
    try:
        return sorted(distinct, key=lambda v: (int(v), v))
    except ValueError:
        return sorted(distinct)


def _pick_column(header: list[str], given: str | None, names: tuple[str, ...], what: str, spec: str) -> int | None:
    """Index of the column ``given`` names, else of the one header name in ``names``; None when there is none."""
    if given is not None:
        if given in header:
            return header.index(given)
        folded = [i for i, h in enumerate(header) if h.lower() == given.lower()]
        if len(folded) == 1:
            return folded[0]
        raise VitdepthError(
            f"the {what} column '{given}' given in '{spec}' is not in the header ({', '.join(header)}); "
            f"pass {what}=COL with one of them"
        )
    found = [i for i, h in enumerate(header) if h.lower() in names]
    if len(found) > 1:
        raise VitdepthError(
            f"'{spec}' has several {what} columns ({', '.join(header[i] for i in found)}); pick one with "
            f"{what}=COL"
        )
    return found[0] if found else None


def labels_from_values(values: list[Any], what: str) -> tuple[np.ndarray, list[str]]:
    """Labels and class names from raw label values: classes are the sorted distinct values.

    Args:
        values: Integer class ids (bools count as ints) or class names, one per item.
        what: Where the values come from, for the message.

    Returns:
        ``(labels, class_names)``: int64 indices into ``class_names``; names are the values as text, integers in
        numeric order (:func:`sorted_class_names` for text).

    Raises:
        VitdepthError: The values are neither all integers nor all strings (floats, lists, mixed).
    """
    if all(isinstance(v, (bool, int, np.integer)) for v in values):
        distinct = np.unique(np.asarray(values, dtype=np.int64))
        labels = np.searchsorted(distinct, np.asarray(values, dtype=np.int64)).astype(np.int64)
        return labels, [str(int(v)) for v in distinct]
    if all(isinstance(v, str) for v in values):
        names = sorted_class_names(values)
        index = {name: k for k, name in enumerate(names)}
        return np.asarray([index[v] for v in values], dtype=np.int64), names
    kinds = sorted({type(v).__name__ for v in values})
    raise VitdepthError(
        f"{what} holds {'/'.join(kinds)} values, not class ids or names; pass label=COL with integer or text classes"
    )


class CSVSource(FileListSource):
    """Images listed in a CSV table (see the module docstring for the rules).

    Args:
        spec: The spec string it was created from.
        path: The CSV file.
        path_column: Name of the image path column, or None to find it by header name.
        label_column: Name of the label column, or None to find it by header name (none found: unlabelled).

    Raises:
        VitdepthError: The file is missing or unreadable, has no header or no image column, a named column is not
            in the header, a column name is ambiguous, or no row names an existing file.
    """

    kind = "csv"

    def __init__(
        self,
        spec: str,
        path: str | os.PathLike[str],
        *,
        path_column: str | None = None,
        label_column: str | None = None,
    ) -> None:
        self.spec = spec
        self.path = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
        self.warnings = []
        if not self.path.is_file():
            what = "is a directory" if self.path.is_dir() else "does not exist"
            raise VitdepthError(f"CSV file '{self.path}' {what}; check the path after 'csv:'")
        self.base = self.path.parent
        try:
            with open(self.path, newline="", encoding="utf-8-sig") as f:
                delimiter = self._delimiter(f.readline())
                f.seek(0)
                rows = csv.reader(f, delimiter=delimiter)
                header = [h.strip() for h in next(rows, [])]
                if not any(header):
                    raise VitdepthError(
                        f"CSV file '{self.path}' is empty or has no header row; put column names (e.g. path,label) "
                        "on its first line"
                    )
                p_col = _pick_column(header, path_column, PATH_COLUMN_NAMES, "path", spec)
                if p_col is None:
                    raise VitdepthError(
                        f"no image path column in '{self.path}' (header: {', '.join(header)}); name it path, image or "
                        f"file, or pass csv:{self.path}:path=COL"
                    )
                l_col = _pick_column(header, label_column, LABEL_COLUMN_NAMES, "label", spec)
                self.path_column = header[p_col]
                self.label_column = None if l_col is None else header[l_col]
                paths, values = self._read_rows(rows, p_col, l_col)
        except UnicodeDecodeError as exc:
            raise VitdepthError(
                f"CSV file '{self.path}' is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8"
            ) from None
        except csv.Error as exc:
            raise VitdepthError(f"CSV file '{self.path}' cannot be parsed: {exc}; check its quoting") from None
        except OSError as exc:
            raise VitdepthError(
                f"CSV file '{self.path}' cannot be read: {exc.strerror or exc}; fix its permissions"
            ) from None
        if not paths:
            raise VitdepthError(
                f"empty dataset: no row of '{self.path}' names an existing image file ({'; '.join(self.warnings)}); "
                "paths are relative to the CSV's folder"
            )
        self._paths = paths
        if l_col is None:
            self._set_unlabelled(len(paths))
        else:
            self.class_names = sorted_class_names(values)
            index = {name: k for k, name in enumerate(self.class_names)}
            self.labels = np.asarray([index[v] for v in values], dtype=np.int64)

    def _delimiter(self, header_line: str) -> str:
        # The header decides, not csv.Sniffer: the sniffer guesses from data rows, where paths may hold any of these.
        order = ("\t", ",", ";", "|") if self.path.suffix.lower() == ".tsv" else (",", "\t", ";", "|")
        counts = [header_line.count(d) for d in order]
        return order[counts.index(max(counts))] if max(counts) else order[0]

    def _read_rows(self, rows: Any, p_col: int, l_col: int | None) -> tuple[list[str], list[str]]:
        skipped: dict[str, list[str]] = {kind: [] for kind in _SKIP_TEXT}
        paths: list[str] = []
        values: list[str] = []
        need = max(p_col, -1 if l_col is None else l_col) + 1
        for row in rows:
            line = f"line {rows.line_num}"
            if not any(cell.strip() for cell in row):
                continue  # blank line
            if len(row) < need:
                skipped["short"].append(line)
                continue
            rel = row[p_col].strip()
            if not rel:
                skipped["no_path"].append(line)
                continue
            value = row[l_col].strip() if l_col is not None else ""
            if l_col is not None and not value:
                skipped["no_label"].append(f"{line}: {rel}")
                continue
            full = os.path.normpath(self.base / os.path.expanduser(rel))
            try:
                regular = stat.S_ISREG(os.stat(full).st_mode)
            except FileNotFoundError:
                skipped["missing"].append(f"{line}: {rel}")
                continue
            except OSError:
                skipped["unreadable"].append(f"{line}: {rel}")
                continue
            if not regular:
                skipped["special"].append(f"{line}: {rel}")
                continue
            paths.append(full)
            values.append(value)
        self.warnings.extend(summarise_skips(_SKIP_TEXT, skipped))
        return paths, values


    def _content_hash(self) -> str:
        # As for folders: paths, labels, sizes and mtimes (one stat per file, no reads).
        h = hashlib.sha256()
        h.update("\n".join(self.class_names).encode() + b"\0")
        for path, label in zip(self._paths, self.labels.tolist(), strict=True):
            try:
                st = os.stat(path)
                size, mtime = st.st_size, st.st_mtime_ns
            except OSError:
                size = mtime = -1  # removed since the table was read: still a stable, different hash
            h.update(f"{os.path.relpath(path, self.base)}\t{label}\t{size}\t{mtime}\n".encode())
        return h.hexdigest()

    def identity(self) -> dict[str, Any]:  # noqa: D102 - documented on DataSource
        out = super().identity()
        out.update(file=str(self.path), path_column=self.path_column, label_column=self.label_column)
        return out


def parse_csv(spec: str, options: str | None) -> CSVSource:
    """Create a :class:`CSVSource` from the part of a ``csv:`` spec after the colon."""
    file, opts = split_spec_options(spec, options, "csv", ("path", "label"))
    return CSVSource(spec, file, path_column=opts.get("path"), label_column=opts.get("label"))
