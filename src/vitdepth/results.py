"""The results table: the only interface between computing and analysing (style rule 13).

``layers.csv`` holds tidy rows ``model, layer, depth, metric, token_set, value, ci_low,
ci_high, n`` (design §6). Phases, comparison and reports read only this and ``run.json``.
:func:`load_run` checks both files as it reads them, and :func:`load_phases` accepts a
``phases.json`` only when it was fitted to the ``layers.csv`` that is there now.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

from ._errors import VitdepthError
from .outputs import CHECKPOINT_DIR, MARKER, interrupted_run_message, is_own_partial

ROW_FIELDS = ("model", "layer", "depth", "metric", "token_set", "value", "ci_low", "ci_high", "n")


def layer_depth(layer: str, depth: int) -> float:
    """Relative depth ℓ/L; ``pre`` sits one step before layer 0, at −1/L."""
    return (-1 if layer == "pre" else int(layer)) / depth


def layer_order(layer: str) -> int:
    """Sort key: pre → −1, ℓ → ℓ."""
    return -1 if layer == "pre" else int(layer)


@dataclass
class RunResults:
    """A run directory loaded back: ``run.json`` and the ``layers.csv`` rows."""

    path: Path
    run: dict
    rows: list[dict]
    layers_sha256: str = ""  # sha256 of the layers.csv bytes the rows were read from

    @property
    def model(self) -> str:
        """Display name of the analysed model."""
        return self.run["model"]["name"]

    def curve(self, metric: str, token_set: str = "") -> list[dict]:
        """Rows of one metric (and token set), in layer order."""
        rows = [r for r in self.rows if r["metric"] == metric and r["token_set"] == token_set]
        return sorted(rows, key=lambda r: layer_order(r["layer"]))


def write_layers(rows: list[dict], run_dir: Path) -> None:
    """Write ``layers.csv`` (and ``layers.parquet`` when pyarrow is installed)."""
    with open(run_dir / "layers.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=ROW_FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(r[k]) for k in ROW_FIELDS})
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return
    table = pa.table({k: [r[k] for r in rows] for k in ROW_FIELDS})
    pq.write_table(table, run_dir / "layers.parquet")


def _fmt(v):
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    return v


RERUN = "re-run vitdepth analyze"


def _describe_json_error(e: json.JSONDecodeError) -> str:
    return f"{e.msg}, line {e.lineno} column {e.colno}"


def _read_json(file: Path, fix: str) -> object:
    """Parse a JSON file, or raise a one-line error naming it and ``fix``."""
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise VitdepthError(f"{file} is not a text JSON file (corrupt); {fix}") from None
    except OSError as e:
        raise VitdepthError(f"cannot read {file} ({e.strerror or e}); {fix}") from None
    if not text.strip():
        raise VitdepthError(f"{file} is empty (an interrupted write?); {fix}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise VitdepthError(f"{file} is not valid JSON, truncated or corrupt ({_describe_json_error(e)}); "
                            f"{fix}") from None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def valid_layer(layer, depth: int) -> bool:
    """Whether ``layer`` names a layer of a ``depth``-block model: ``pre`` or an integer string 0..depth."""
    if layer == "pre":
        return True
    return isinstance(layer, str) and layer.isdigit() and layer == str(int(layer)) and int(layer) <= depth


def _check_run(run: object, file: Path) -> dict:
    """The keys of ``run.json`` that loading, phases, compare and reports rely on."""
    if not isinstance(run, dict):
        raise VitdepthError(f"{file} holds a JSON {type(run).__name__}, not an object; {RERUN}")
    model = run.get("model")
    if not isinstance(model, dict):
        raise VitdepthError(f"{file} lacks the model section; {RERUN}")
    if not isinstance(model.get("name"), str):
        raise VitdepthError(f"{file} lacks model.name (a string); {RERUN}")
    depth = model.get("depth")
    if not _is_int(depth) or depth < 1:
        raise VitdepthError(f"{file}: model.depth is {depth!r}, not a positive integer; {RERUN}")
    layers = model.get("layers")
    if not isinstance(layers, list) or not layers:
        raise VitdepthError(f"{file} lacks model.layers (the list of analysed layers); {RERUN}")
    bad = next((x for x in layers if not valid_layer(x, depth)), None)
    if bad is not None:
        raise VitdepthError(f"{file}: model.layers holds {bad!r}, not a layer of a depth-{depth} model "
                            f"(pre, 0..{depth}); {RERUN}")
    if not isinstance(run.get("data"), dict):
        raise VitdepthError(f"{file} lacks the data section; {RERUN}")
    return run


def _float(text: str, col: str, file: Path, line: int) -> float:
    if text == "":
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise VitdepthError(f"{file} line {line}: {col} {text[:40]!r} is not a number; {RERUN}") from None


def _read_layers(file: Path, run: dict) -> tuple[list[dict], str]:
    """Parse and check ``layers.csv``: its columns, numbers and layer ids; returns the rows and the file's sha256."""
    try:
        data = file.read_bytes()
    except OSError as e:
        raise VitdepthError(f"cannot read {file} ({e.strerror or e}); {RERUN}") from None
    sha = hashlib.sha256(data).hexdigest()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise VitdepthError(f"{file} is not a text CSV file (corrupt); {RERUN}") from None
    if not text.strip():
        raise VitdepthError(f"{file} is empty (an interrupted write?); {RERUN}")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
        missing = [c for c in ROW_FIELDS if c not in header]
        if missing:
            raise VitdepthError(f"{file} lacks the column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                                f"(needs {', '.join(ROW_FIELDS)}); {RERUN}")
        col = {c: header.index(c) for c in ROW_FIELDS}
        layers = set(run["model"]["layers"])
        depth = run["model"]["depth"]
        rows = []
        for cells in reader:
            if not cells:
                continue
            line = reader.line_num
            if len(cells) != len(header):
                raise VitdepthError(f"{file} line {line} has {len(cells)} fields, the header {len(header)}; "
                                    f"{RERUN}")
            r = {c: cells[i] for c, i in col.items()}
            if r["layer"] not in layers:
                raise VitdepthError(f"{file} line {line}: layer {r['layer'][:40]!r} is not a layer of this "
                                    f"depth-{depth} model ({run['model']['layers'][0]}..{depth}); {RERUN}")
            if not r["metric"]:
                raise VitdepthError(f"{file} line {line} has no metric; {RERUN}")
            for k in ("depth", "value", "ci_low", "ci_high"):
                r[k] = _float(r[k], k, file, line)
            try:
                r["n"] = int(r["n"])
            except ValueError:
                raise VitdepthError(f"{file} line {line}: n {r['n'][:40]!r} is not an integer; {RERUN}") from None
            rows.append(r)
    except StopIteration:
        raise VitdepthError(f"{file} is empty (an interrupted write?); {RERUN}") from None
    except csv.Error as e:
        raise VitdepthError(f"{file} is not a readable CSV file ({e}); {RERUN}") from None
    if not rows:
        raise VitdepthError(f"{file} holds no result rows, only its header; {RERUN}")
    return rows, sha


def load_run(run_dir: str | Path) -> RunResults:
    """Load ``run.json`` and ``layers.csv`` of a run directory, checking what later steps rely on.

    Args:
        run_dir: a run directory written by ``vitdepth analyze``.

    Returns:
        The run, with the sha256 of the ``layers.csv`` bytes (see :func:`load_phases`).

    Raises:
        VitdepthError: a file is missing, not JSON / CSV, truncated, lacks a required key or column, holds a
            field that does not parse as a number, or a layer that the model (``model.layers`` of run.json)
            does not have; one line naming the file and the fix.
    """
    path = Path(run_dir)
    if not path.exists() and (waiting := interrupted_run_message(path)):
        raise VitdepthError(waiting)
    marker = path / MARKER
    own = is_own_partial(path)  # the analysis reads its own run before it commits it
    if not own and (path / CHECKPOINT_DIR).is_dir():
        raise VitdepthError(f"{path} is an interrupted vitdepth run (a checkpoint, not results); resume it with the "
                            "command that started it and --resume")
    if not (path / "run.json").is_file() or not (path / "layers.csv").is_file():
        raise VitdepthError(f"{path} is not a vitdepth run directory (needs run.json and layers.csv); "
                            "create one with vitdepth analyze")
    if marker.is_file() and not own:  # a run still being written (or killed while it was) carries complete: false
        try:
            complete = json.loads(marker.read_text()).get("complete") is True
        except (OSError, ValueError, AttributeError):
            complete = False
        if not complete:
            raise VitdepthError(f"{path} is an incomplete vitdepth run (still being written, or interrupted); wait "
                                f"for it to finish or {RERUN}")
    run = _check_run(_read_json(path / "run.json", RERUN), path / "run.json")
    rows, sha = _read_layers(path / "layers.csv", run)
    return RunResults(path, run, rows, sha)


def _phases_fix(file: Path) -> str:
    return f"delete {file.name} to refit the phases from layers.csv, or {RERUN}"


def _check_phases(phases: dict, file: Path, depth: int) -> None:
    """The fields of ``phases.json`` that compare, reports and figures read."""
    fix = _phases_fix(file)

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise VitdepthError(f"{file}: {what}; {fix}")

    fits = phases.get("fits")
    need(isinstance(fits, dict), "fits is missing or not an object")
    for key, fit in fits.items():
        need(isinstance(fit, dict), f"fits.{key} is not an object")
        need(isinstance(fit.get("label"), str), f"fits.{key}.label is not a string")
        for field in ("breakpoints", "breakpoints_depth"):
            v = fit.get(field)
            need(isinstance(v, list) and len(v) == 2 and all(_is_number(b) for b in v),
                 f"fits.{key}.{field} is not two numbers")
        v = fit.get("breakpoints_layer")
        need(isinstance(v, list) and len(v) == 2 and all(valid_layer(b, depth) for b in v),
             f"fits.{key}.breakpoints_layer is not two layers of the model")
        need(fit.get("r2") is None or _is_number(fit.get("r2")), f"fits.{key}.r2 is not a number")
        ci = fit.get("breakpoints_ci")
        need(ci is None or (isinstance(ci, list) and len(ci) == 2 and all(
            c is None or (isinstance(c, list) and len(c) == 2 and all(v is None or _is_number(v) for v in c))
            for c in ci)), f"fits.{key}.breakpoints_ci is not two intervals")
    saturation = phases.get("saturation")
    need(isinstance(saturation, dict), "saturation is missing or not an object")
    for ts, sat in saturation.items():
        need(isinstance(sat, dict) and valid_layer(sat.get("layer"), depth)
             and _is_number(sat.get("relative_depth")), f"saturation.{ts} lacks a valid layer and relative_depth")
    need(_is_number(phases.get("useful_depth", 0.0)), "useful_depth is not a number")
    onset = phases.get("tradeoff_onset")
    if onset is not None:
        need(isinstance(onset, dict) and valid_layer(onset.get("layer"), depth)
             and _is_number(onset.get("relative_depth"))
             and (onset.get("isi_rise_after") is None or _is_number(onset.get("isi_rise_after"))),
             "tradeoff_onset lacks a valid layer, relative_depth and isi_rise_after")
    need(phases.get("truncation") is None or isinstance(phases.get("truncation"), dict),
         "truncation is not an object")
    recs = phases.get("recommendations", [])
    need(isinstance(recs, list) and all(isinstance(r, str) for r in recs), "recommendations is not a list of text")


def load_phases(res: RunResults) -> dict | None:
    """Read ``phases.json`` of a loaded run, if it belongs to the run's current ``layers.csv``.

    ``phases.json`` records the sha256 of the ``layers.csv`` it was fitted to (``layers_sha256``, written by
    :func:`vitdepth.summaries.build_phases`). A file that records another hash was fitted to other results
    and is refused; one that records none (written by vitdepth before the hash existed) cannot be checked,
    so it is ignored.

    Args:
        res: the run, from :func:`load_run`.

    Returns:
        The phases, or ``None`` when the run has no ``phases.json`` or a legacy one without ``layers_sha256``:
        the caller then refits them from ``layers.csv`` (:func:`vitdepth.summaries.build_phases`).

    Raises:
        VitdepthError: ``phases.json`` is not valid JSON, lacks or mistypes a field, or was fitted to another
            ``layers.csv``; one line naming the file and the fix.
    """
    file = res.path / "phases.json"
    if not file.is_file():
        return None
    fix = _phases_fix(file)
    phases = _read_json(file, fix)
    if not isinstance(phases, dict):
        raise VitdepthError(f"{file} holds a JSON {type(phases).__name__}, not an object; {fix}")
    recorded = phases.get("layers_sha256")
    if recorded is None:
        return None
    if recorded != res.layers_sha256:
        raise VitdepthError(f"{file} was fitted to another layers.csv (layers_sha256 differs: layers.csv changed "
                            f"after the phases were fitted); {fix}")
    _check_phases(phases, file, int(res.run["model"]["depth"]))
    return phases
