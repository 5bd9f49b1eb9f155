"""The results table: the only interface between computing and analysing (style rule 13).

``layers.csv`` holds tidy rows ``model, layer, depth, metric, token_set, value, ci_low,
ci_high, n`` (design §6). Phases, comparison and reports read only this and ``run.json``.
:func:`load_run` checks both files as it reads them, and :func:`load_phases` accepts a
``phases.json`` only when it was fitted to the ``layers.csv`` that is there now.

The notebook API sits on top: :class:`RunResults` (``to_pandas``, ``curve``, ``plot``, ``phases``, a short
repr and an HTML card) and :func:`load_compare` / :class:`CompareResults` for a comparison directory.
pandas and matplotlib are imported inside the methods that need them.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import hashlib
import html
import io
import json
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from ._errors import VitdepthError
from .outputs import CHECKPOINT_DIR, MARKER, interrupted_run_message, is_own_partial

ROW_FIELDS = ("model", "layer", "depth", "metric", "token_set", "value", "ci_low", "ci_high", "n")


def layer_depth(layer: str, depth: int) -> float:
    """Relative depth ℓ/L; ``pre`` sits one step before layer 0, at −1/L."""
    return (-1 if layer == "pre" else int(layer)) / depth


def layer_order(layer: str) -> int:
    """Sort key: pre → −1, ℓ → ℓ."""
    return -1 if layer == "pre" else int(layer)


@dataclass(frozen=True, eq=False)
class Curve:
    """One metric (and token set) across the layers of a run, as numpy arrays in layer order.

    Attributes:
        metric: the metric id.
        token_set: the token set (``""`` for metrics without one).
        layers: layer ids (``"pre"``, ``"0"`` .. ``"L"``), dtype str.
        layer_index: the layers as numbers, ``pre`` at −1 (the x axis of the report's figures).
        depth: relative depth ℓ/L.
        values: the metric per layer (NaN where it was not finite).
        ci_low: lower end of the 95% confidence interval (NaN where there is none).
        ci_high: upper end of the 95% confidence interval.
        n: images (or test images, for probes) behind each value.
        rows: the ``layers.csv`` rows the arrays come from. Iterating a curve, indexing it with an integer
            and ``len()`` go through these rows, which is how the report and phase code read curves.

    Example:
        >>> c = run.curve("token_sim")  # doctest: +SKIP
        >>> c.layers[c.values.argmax()]  # doctest: +SKIP
        '12'
    """

    metric: str
    token_set: str
    layers: np.ndarray
    layer_index: np.ndarray
    depth: np.ndarray
    values: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    n: np.ndarray
    rows: tuple[dict, ...] = dataclasses.field(repr=False, default=())

    @classmethod
    def from_rows(cls, metric: str, token_set: str, rows: list[dict]) -> Curve:
        """A curve from ``layers.csv`` rows (any order; they are sorted by layer)."""
        rows = sorted(rows, key=lambda r: layer_order(r["layer"]))
        return cls(metric, token_set, np.array([r["layer"] for r in rows], dtype=str),
                   np.array([layer_order(r["layer"]) for r in rows], dtype=int),
                   *(np.array([r[k] for r in rows], dtype=float) for k in ("depth", "value", "ci_low", "ci_high")),
                   np.array([r["n"] for r in rows], dtype=int), tuple(rows))

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]

    def __repr__(self) -> str:
        key = f"{self.metric}/{self.token_set}" if self.token_set else self.metric
        if not self.rows:
            return f"Curve({key}: empty)"
        return f"Curve({key}: {len(self)} layers {self.layers[0]}..{self.layers[-1]})"


@dataclass(frozen=True)
class PhaseFit:
    """A three-segment phase fit of one curve (``fits`` of ``phases.json``).

    Attributes:
        key: ``metric`` or ``metric/token_set``.
        label: the shape, e.g. ``"cliff-climb"`` or ``"plateau-climb-plateau"``.
        breakpoints: the two boundaries on the layer axis (``pre`` = −1).
        breakpoints_depth: the same in relative depth ℓ/L.
        breakpoints_layer: the nearest layers.
        breakpoints_ci: bootstrap 95% intervals of the boundaries, where fitted.
        r2: fit quality.
        slopes: the three segment slopes.
    """

    key: str
    label: str
    breakpoints: tuple[float, float]
    breakpoints_depth: tuple[float, float]
    breakpoints_layer: tuple[str, str]
    breakpoints_ci: tuple | None = None
    r2: float | None = None
    slopes: tuple[float, ...] = ()


@dataclass(frozen=True)
class Saturation:
    """Where the probe accuracy of one token set reaches ``fraction`` of its best value.

    Attributes:
        token_set: the probe's token set.
        layer: the first layer at ``fraction`` × the best accuracy.
        relative_depth: that layer in ℓ/L.
        value: the accuracy there.
        best: the best accuracy.
        best_layer: where the best accuracy is.
        fraction: the threshold, e.g. 0.99.
    """

    token_set: str
    layer: str
    relative_depth: float
    value: float | None = None
    best: float | None = None
    best_layer: str | None = None
    fraction: float | None = None


@dataclass(frozen=True)
class Onset:
    """The trade-off onset: where probe accuracy has saturated while the ISI still rises.

    Attributes:
        layer: the onset layer.
        relative_depth: it in ℓ/L.
        isi_metric: the ISI curve used (``isi_attn`` or ``isi_rec``).
        isi_rise_after: how much the ISI still rises after the onset.
    """

    layer: str
    relative_depth: float
    isi_metric: str | None = None
    isi_rise_after: float | None = None


@dataclass(frozen=True)
class Truncation:
    """The truncation suggestion: keep ``blocks_kept`` of ``depth`` blocks.

    Attributes:
        layer: the last layer kept.
        blocks_kept: blocks kept.
        depth: blocks of the model.
        flops_fraction_saved: share of forward FLOPs saved.
        latency_fraction_saved: share of measured latency saved, where measured.
        probe_acc_lost: probe accuracy given up.
    """

    layer: str
    blocks_kept: int | None = None
    depth: int | None = None
    flops_fraction_saved: float | None = None
    latency_fraction_saved: float | None = None
    probe_acc_lost: float | None = None


@dataclass(frozen=True)
class Phases:
    """``phases.json`` of a run as objects (see :attr:`RunResults.phases`).

    Attributes:
        fits: phase fit per curve key (``"token_sim"``, ``"probe_acc/mean"``, ...).
        saturation: probe saturation per token set.
        useful_depth: the relative depth where the probe saturates (the effective depth).
        tradeoff_onset: the trade-off onset, if found.
        truncation: the truncation suggestion, if any.
        recommendations: the recommendations, as sentences.
        raw: the parsed ``phases.json``.
    """

    fits: dict[str, PhaseFit]
    saturation: dict[str, Saturation]
    useful_depth: float | None
    tradeoff_onset: Onset | None
    truncation: Truncation | None
    recommendations: list[str]
    raw: dict = dataclasses.field(repr=False, default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> Phases:
        """Objects from a ``phases.json`` already checked by :func:`load_phases`."""
        def pick(klass, src: dict, **fixed):
            names = {f.name for f in dataclasses.fields(klass)} - set(fixed)
            return klass(**fixed, **{k: src[k] for k in names if k in src})

        def tup(v):
            return None if v is None else tuple(tup(x) if isinstance(x, list) else x for x in v)

        fits = {k: PhaseFit(k, f["label"], tup(f["breakpoints"]), tup(f["breakpoints_depth"]),
                            tup(f["breakpoints_layer"]), tup(f.get("breakpoints_ci")), f.get("r2"),
                            tup(f.get("slopes") or ())) for k, f in d["fits"].items()}
        onset, trunc = d.get("tradeoff_onset"), d.get("truncation")
        return cls(fits, {ts: pick(Saturation, s, token_set=ts) for ts, s in d["saturation"].items()},
                   d.get("useful_depth"), pick(Onset, onset) if onset else None,
                   pick(Truncation, trunc) if trunc and "layer" in trunc else None,
                   list(d.get("recommendations", [])), d)


def _close(word: str, options) -> str:
    near = difflib.get_close_matches(word, sorted(options), n=3, cutoff=0.5)
    return f"; did you mean {' or '.join(near)}?" if near else ""


def _known_token_sets(metric: str) -> set[str]:
    from .metrics.catalog import METRICS  # a table of names, no torch: results may read it

    info = METRICS.get(metric)
    return set(info.token_sets) if info and info.token_sets else {""}


# y-axis label: what the number is and its range (from the formulas in metrics/catalog.py)
_UNITS = {
    "token_sim": "mean cosine, −1..1", "token_sim_centered": "mean cosine, −1..1", "cls_patch_sim": "cosine, −1..1",
    "isi_attn": "(1 − cos)·entropy, 0..2", "attn_delta": "1 − cos, 0..2", "attn_entropy": "normalised entropy, 0..1",
    "probe_acc": "test accuracy, 0..1", "probe_acc_logistic": "test accuracy, 0..1", "isi_rec": "R² difference",
    "r2_self": "held-out R², ≤ 1", "r2_all": "held-out R², ≤ 1", "cls_centrality": "attention mass, 0..1",
    "cls_self": "attention, 0..1", "attn_consensus": "ACI, 0..1", "attn_distance": "patches",
    "nc4": "disagreement fraction, 0..1",
}


def _escape(v) -> str:
    return html.escape(str(v), quote=True)


@dataclass(repr=False)
class RunResults:
    """A run directory loaded back: ``run.json`` and the ``layers.csv`` rows.

    Load it with :func:`load_run`. ``rows`` are the ``layers.csv`` rows as dicts and ``run`` the parsed
    ``run.json``; :meth:`to_pandas`, :meth:`curve`, :meth:`plot` and :attr:`phases` are the notebook views.

    Example:
        >>> run = vitdepth.load_run("runs/vit_s")  # doctest: +SKIP
        >>> run  # doctest: +SKIP
        RunResults(ViT-S on digits: 1797 images, layers pre..12, 26 curves; path runs/vit_s)
    """

    path: Path
    run: dict
    rows: list[dict]
    layers_sha256: str = ""  # sha256 of the layers.csv bytes the rows were read from

    @property
    def model(self) -> str:
        """Display name of the analysed model."""
        return self.run["model"]["name"]

    @property
    def metrics(self) -> list[str]:
        """The metric ids in this run, in table order.

        Example:
            >>> run.metrics[:2]  # doctest: +SKIP
            ['attn_consensus', 'attn_delta']
        """
        return list(dict.fromkeys(r["metric"] for r in self.rows))

    def token_sets(self, metric: str) -> list[str]:
        """The token sets ``metric`` has in this run (``[""]`` for metrics without one).

        Example:
            >>> run.token_sets("probe_acc")  # doctest: +SKIP
            ['cls', 'mean']
        """
        return sorted({r["token_set"] for r in self.rows if r["metric"] == metric})

    def curve(self, metric: str, token_set: str | None = None) -> Curve:
        """One metric across layers, as numpy arrays (:class:`Curve`) in layer order.

        Args:
            metric: a metric id (the ``metric`` column), e.g. ``"token_sim"``.
            token_set: ``"cls"`` or ``"mean"`` for metrics reported per token set (probes, neural collapse);
                ``None`` picks the only one there is.

        Returns:
            The curve. A metric or token set that vitdepth knows but this run did not compute gives an empty
            curve (``len(curve) == 0``), so code can test for it; :meth:`plot` refuses one.

        Raises:
            VitdepthError: an unknown metric or token set (with close matches), or ``token_set=None`` for a
                metric with several token sets.

        Example:
            >>> c = run.curve("probe_acc", "mean")  # doctest: +SKIP
            >>> c.layers, c.values, c.ci_low, c.ci_high  # doctest: +SKIP
        """
        present = self.metrics
        if metric not in present and not self._is_known_metric(metric):
            raise VitdepthError(f"unknown metric {metric!r}{_close(metric, present)} (this run has: "
                                f"{', '.join(present)})")
        sets = self.token_sets(metric)
        if token_set is None:
            if len(sets) > 1:
                raise VitdepthError(f"{metric} has the token sets {', '.join(sets)}; pass one, e.g. "
                                    f"curve({metric!r}, {sets[-1]!r})")
            token_set = sets[0] if sets else ""
        elif token_set not in sets and token_set not in _known_token_sets(metric):
            options = sets or sorted(_known_token_sets(metric))
            raise VitdepthError(f"{metric} has no token set {token_set!r}{_close(token_set, options)} (it has: "
                                f"{', '.join(repr(s) for s in options)})")
        return Curve.from_rows(metric, token_set,
                               [r for r in self.rows if r["metric"] == metric and r["token_set"] == token_set])

    @staticmethod
    def _is_known_metric(metric: str) -> bool:
        from .metrics.catalog import METRICS

        return metric in METRICS

    def to_pandas(self):
        """The tidy ``layers.csv`` table as a pandas DataFrame (pandas is imported here, on first use).

        Columns: ``model``, ``metric``, ``token_set`` (str); ``layer`` (ordered categorical ``pre, 0 .. L``);
        ``depth``, ``value``, ``ci_low``, ``ci_high`` (float64); ``n`` (int64).

        Example:
            >>> df = run.to_pandas()  # doctest: +SKIP
            >>> probes = df[df.metric == "probe_acc"]  # doctest: +SKIP
            >>> probes.pivot(index="layer", columns="token_set", values="value")  # doctest: +SKIP
        """
        import pandas as pd

        layers = sorted({*self.run["model"]["layers"], *(r["layer"] for r in self.rows)}, key=layer_order)
        cols = {k: [r[k] for r in self.rows] for k in ROW_FIELDS}
        df = pd.DataFrame({
            **{k: pd.Series(cols[k], dtype=str) for k in ("model", "metric", "token_set")},
            "layer": pd.Categorical(cols["layer"], categories=layers, ordered=True),
            **{k: pd.Series(cols[k], dtype="float64") for k in ("depth", "value", "ci_low", "ci_high")},
            "n": pd.Series(cols["n"], dtype="int64"),
        })
        return df[list(ROW_FIELDS)]

    @cached_property
    def phases(self) -> Phases | None:
        """``phases.json`` as :class:`Phases` (read on first use, checked by :func:`load_phases`).

        ``None`` when the run has none, or a legacy one fitted before ``layers.csv`` hashes were recorded
        (``vitdepth.summaries.build_phases(run.path)`` refits it).

        Example:
            >>> run.phases.useful_depth, run.phases.fits["token_sim"].label  # doctest: +SKIP
            (0.75, 'cliff-climb')
        """
        d = load_phases(self)
        return None if d is None else Phases.from_dict(d)

    def plot(self, metric: str, token_set: str | None = None, ax=None):
        """Plot one curve with its 95% CI band and phase boundaries (matplotlib is imported here).

        Args:
            metric: a metric id, as in :meth:`curve`.
            token_set: as in :meth:`curve`.
            ax: a matplotlib Axes to draw on; a new figure when ``None``.

        Returns:
            The Axes drawn on.

        Raises:
            VitdepthError: as :meth:`curve`, or a curve this run did not compute.

        Example:
            >>> ax = run.plot("token_sim")  # doctest: +SKIP
            >>> run.plot("probe_acc", "mean", ax=ax.twinx())  # doctest: +SKIP
        """
        c = self.curve(metric, token_set)
        key = f"{metric}/{c.token_set}" if c.token_set else metric
        if not len(c):
            raise VitdepthError(f"{key} was not computed in this run (it has: {', '.join(self.metrics)})")
        own_figure = ax is None
        if own_figure:
            import matplotlib.pyplot as plt  # not matplotlib.use(): a notebook keeps its own backend

            _, ax = plt.subplots(figsize=(5, 3.2))
        line, = ax.plot(c.layer_index, c.values, marker="o", ms=3, label=f"{self.model} {key}")
        ax.fill_between(c.layer_index, c.ci_low, c.ci_high, color=line.get_color(), alpha=0.15, lw=0)
        fit = self.phases.fits.get(key) if self.phases else None
        if fit:  # the report's convention: dashed verticals at the boundaries, their CI shaded
            for b, ci in zip(fit.breakpoints, fit.breakpoints_ci or (None, None), strict=True):
                ax.axvline(b, color=line.get_color(), ls="--", lw=1, alpha=0.8)
                if ci is not None and all(v is not None for v in ci):
                    ax.axvspan(ci[0], ci[1], color=line.get_color(), alpha=0.08, lw=0)
        unit = _UNITS.get(metric)
        ax.set_ylabel(f"{key} ({unit})" if unit else key)
        ax.set_xlabel("layer")
        ticks = c.layer_index[:: max(1, len(c) // 10)]  # at most ~10 labels, as in the report's figures
        ax.set_xticks(ticks, ["pre" if i < 0 else str(i) for i in ticks])
        ax.set_title(f"{self.model}: {key}" + (f" ({fit.label})" if fit else ""), fontsize=10)
        ax.grid(alpha=0.3)
        if own_figure:
            ax.figure.tight_layout()
        return ax

    def _summary(self) -> dict:
        data, model = self.run["data"], self.run["model"]
        layers = model["layers"]
        return {"model": self.model, "data": data.get("spec", "?"), "images": data.get("analyzed", "?"),
                "layers": f"{layers[0]}..{layers[-1]}", "depth": model["depth"],
                "curves": len({(r["metric"], r["token_set"]) for r in self.rows}), "metrics": len(self.metrics)}

    def __repr__(self) -> str:
        s = self._summary()
        return (f"RunResults({s['model']} on {s['data']}: {s['images']} images, layers {s['layers']}, "
                f"{s['metrics']} metrics; path {self.path})")

    def _repr_html_(self) -> str:
        s = self._summary()
        model = self.run["model"]
        rows = [("model", f"{model.get('class', '?')}, {s['depth']} blocks, width {model.get('embed_dim', '?')}"),
                ("data", f"{s['data']} ({s['images']} images)"), ("layers", f"{s['layers']} ({s['depth']} blocks)"),
                ("table", f"{len(self.rows)} rows: {s['metrics']} metrics, {s['curves']} curves"),
                ("path", str(self.path))]
        try:
            ph = self.phases
        except VitdepthError as e:
            rows.append(("phases", f"not read: {e}"))
        else:
            if ph is not None and ph.useful_depth is not None:
                sat = ph.saturation.get("mean") or next(iter(ph.saturation.values()), None)
                rows.append(("effective depth", f"{ph.useful_depth:.2f}"
                             + (f" (probe saturates at layer {sat.layer})" if sat else "")))
            if ph is not None and ph.truncation is not None:
                t = ph.truncation
                rows.append(("truncation", f"keep {t.blocks_kept} of {t.depth} blocks"))
        return _card(f"vitdepth run: {s['model']}", rows)


def _card(title: str, rows: list[tuple[str, str]]) -> str:
    """A small HTML table for notebooks; every value is escaped."""
    cells = "".join(f"<tr><th style='text-align:left;padding-right:1em'>{_escape(k)}</th>"
                    f"<td style='text-align:left'>{_escape(v[:300])}</td></tr>" for k, v in rows)
    return f"<div><b>{_escape(title[:200])}</b><table>{cells}</table></div>"


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


@dataclass(repr=False)
class CompareResults:
    """A comparison directory loaded back (``compare.json``, written by :func:`vitdepth.compare.compare_runs`).

    Attributes:
        path: the comparison directory.
        data: the parsed ``compare.json``: ``models`` (a summary per run), ``shifts`` (how phase boundaries move
            from one model to the next), ``recommendations``.

    Example:
        >>> cmp = vitdepth.load_compare("runs/compare")  # doctest: +SKIP
        >>> cmp.to_pandas()[["from", "to", "what", "layers"]]  # doctest: +SKIP
    """

    path: Path
    data: dict

    @property
    def models(self) -> list[str]:
        """The compared models' names, in comparison order."""
        return [m["name"] for m in self.data["models"]]

    @property
    def run_dirs(self) -> list[Path]:
        """The run directories, as recorded; one that has moved is looked for next to the comparison."""
        out = []
        for m in self.data["models"]:
            recorded = Path(m["run_dir"])
            beside = self.path.parent / recorded.name  # e.g. the demo writes S, B, L and compare side by side
            out.append(recorded if recorded.is_dir() or not beside.is_dir() else beside)
        return out

    @cached_property
    def runs(self) -> list[RunResults]:
        """The compared runs, loaded with :func:`load_run` on first use.

        Raises:
            VitdepthError: a run directory that is gone or is not a run any more.

        Example:
            >>> [r.phases.useful_depth for r in cmp.runs]  # doctest: +SKIP
        """
        return [load_run(d) for d in self.run_dirs]

    def to_pandas(self):
        """The shifts table as a pandas DataFrame: one row per boundary that moves between consecutive models.

        Columns: ``from``, ``to``, ``what``, ``sentence`` (str); ``layers``, ``relative_depth`` (float64).

        Example:
            >>> cmp.to_pandas().query("what == 'probe saturation'")  # doctest: +SKIP
        """
        import pandas as pd

        shifts = self.data["shifts"]
        cols = {k: pd.Series([s.get(k) for s in shifts], dtype=str) for k in ("from", "to", "what")}
        cols |= {k: pd.Series([s.get(k) for s in shifts], dtype="float64") for k in ("layers", "relative_depth")}
        cols["sentence"] = pd.Series([s.get("sentence") for s in shifts], dtype=str)
        return pd.DataFrame(cols)

    def models_table(self):
        """One row per compared model: ``name``, ``depth``, ``best_probe``, ``saturation_layer``, ``useful_depth``,
        ``tradeoff_onset_layer``, ``run_dir``.

        Example:
            >>> cmp.models_table().set_index("name")["useful_depth"]  # doctest: +SKIP
        """
        import pandas as pd

        keys = ("name", "depth", "best_probe", "saturation_layer", "useful_depth", "tradeoff_onset_layer", "run_dir")
        table = [{k: m.get(k) for k in keys} | {"run_dir": str(d)}
                 for m, d in zip(self.data["models"], self.run_dirs, strict=True)]
        return pd.DataFrame(table, columns=list(keys))

    def __repr__(self) -> str:
        return (f"CompareResults({' → '.join(self.models)}: {len(self.data['shifts'])} shifts; "
                f"path {self.path})")

    def _repr_html_(self) -> str:
        rows = []
        for m in self.data["models"]:
            useful = m.get("useful_depth")
            rows.append((m["name"], f"depth {m.get('depth')}, effective depth "
                         + ("—" if not _is_number(useful) else f"{useful:.2f}")
                         + f", saturation layer {m.get('saturation_layer')}"))
        rows += [("shift", s.get("sentence", "")) for s in self.data["shifts"][:6]]
        if len(self.data["shifts"]) > 6:
            rows.append(("", f"… {len(self.data['shifts']) - 6} more shifts (to_pandas())"))
        rows.append(("path", str(self.path)))
        return _card(f"vitdepth comparison: {' → '.join(self.models)}", rows)


def load_compare(compare_dir: str | Path) -> CompareResults:
    """Load a comparison directory written by ``vitdepth compare`` (or :func:`vitdepth.compare_runs`).

    Args:
        compare_dir: the comparison's output directory (holds ``compare.json``).

    Returns:
        The comparison; its runs load on first use of :attr:`CompareResults.runs`.

    Raises:
        VitdepthError: no ``compare.json``, or one that is not JSON or lacks ``models`` / ``shifts``; one line
            naming the file and the fix.

    Example:
        >>> cmp = vitdepth.load_compare("runs/compare")  # doctest: +SKIP
        >>> cmp.models  # doctest: +SKIP
        ['ViT-S', 'ViT-B', 'ViT-L']
    """
    path = Path(compare_dir)
    file = path / "compare.json"
    fix = "re-run vitdepth compare"
    if not file.is_file():
        raise VitdepthError(f"{path} is not a vitdepth comparison directory (needs compare.json); create one with "
                            "vitdepth compare RUN_DIR RUN_DIR ... --out DIR")
    data = _read_json(file, fix)
    if not isinstance(data, dict):
        raise VitdepthError(f"{file} holds a JSON {type(data).__name__}, not an object; {fix}")
    models, shifts = data.get("models"), data.get("shifts")
    if not isinstance(models, list) or not all(isinstance(m, dict) and isinstance(m.get("name"), str)
                                               and isinstance(m.get("run_dir"), str) for m in models):
        raise VitdepthError(f"{file}: models is not a list of {{name, run_dir, ...}} objects; {fix}")
    if not isinstance(shifts, list) or not all(isinstance(s, dict) for s in shifts):
        raise VitdepthError(f"{file}: shifts is not a list of objects; {fix}")
    return CompareResults(path, data)
