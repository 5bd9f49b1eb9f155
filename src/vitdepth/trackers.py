"""Experiment-tracker sinks: TensorBoard, Weights & Biases and MLflow behind one small protocol.

A :class:`Sink` takes what vitdepth logs — per-layer scalars, tables, HTML reports — and writes it to
one tracker. The ISI monitor (:class:`vitdepth.train.ISIMonitor`, ``sinks=``) logs to them while
training, and ``vitdepth export`` (:mod:`vitdepth.export`) logs a finished run directory.

**One chart per metric.** :meth:`Sink.log_scalars` takes one metric and a ``{series: value}`` map (the
monitor's series are layers), and each backend puts the series of a metric on one chart:

- TensorBoard: each series is a run (a subdirectory ``LOGDIR/<series>``) and the metric is the tag, so
  the Scalars tab shows one chart per metric with one line per layer (the ``add_scalars`` layout, with
  one run per series instead of one per series × metric).
- Weights & Biases: the keys are ``<metric>/<series>``, so the workspace puts each metric in its own
  section; :meth:`close` adds one ``line_series`` chart per metric holding every series.
- MLflow: the keys are ``<metric>/<series>`` (the UI groups them by prefix); :meth:`close` adds one
  figure per metric (``charts/<metric>.png``) holding every series.

Each backend imports its library only when constructed and names the pip extra when it is missing
(``pip install 'vitdepth[tensorboard]'``, ``[wandb]``, ``[mlflow]``). Nothing needs the network:
W&B runs with ``mode="offline"`` and MLflow with a ``file://`` tracking URI work on an offline machine.
"""

from __future__ import annotations

import html as _html
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ._errors import VitdepthError

__all__ = ["Sink", "TensorBoardSink", "WandbSink", "MlflowSink", "create_sink", "layer_series", "SINKS"]


@runtime_checkable
class Sink(Protocol):
    """Where vitdepth's numbers go: one tracker run."""

    def log_scalars(self, metric: str, values: Mapping[str, float], step: int) -> None:
        """Log one metric's ``{series: value}`` at ``step``; all series of a metric share one chart."""

    def log_table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Log a small table (e.g. the phase fits)."""

    def log_html(self, name: str, path: str | Path) -> None:
        """Log an HTML file (e.g. ``report.html``) as an artifact."""

    def close(self) -> None:
        """Flush and finish (a run the sink did not start is left open)."""


def _missing(extra: str, module: str) -> VitdepthError:
    return VitdepthError(f"the {extra} sink needs the '{module}' package; install it with "
                         f"pip install 'vitdepth[{extra}]'")


def layer_series(layer: str | int) -> str:
    """Series name of a layer: ``layer_01`` (zero-padded, so trackers sort 2 before 10), ``pre`` unchanged."""
    try:
        return f"layer_{int(layer):02d}"
    except (TypeError, ValueError):
        return str(layer)


class _History:
    """What has been logged, per metric and series: the close-time one-chart-per-metric summaries read it."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, list[tuple[int, float]]]] = {}

    def add(self, metric: str, values: Mapping[str, float], step: int) -> None:
        per = self.data.setdefault(metric, {})
        for series, v in values.items():
            per.setdefault(str(series), []).append((int(step), float(v)))


class TensorBoardSink:
    """TensorBoard event files under ``logdir``: one run per series, one tag (chart) per metric.

    Args:
        logdir: the directory to point ``tensorboard --logdir`` at (or a subdirectory of it).
    """

    def __init__(self, logdir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise _missing("tensorboard", "tensorboard") from None
        self._writer_cls = SummaryWriter
        self.logdir = Path(logdir)
        self._main = SummaryWriter(str(self.logdir))  # tables and text
        self._series: dict[str, Any] = {}

    def _writer(self, series: str):
        if series not in self._series:
            self._series[series] = self._writer_cls(str(self.logdir / series))
        return self._series[series]

    def log_scalars(self, metric: str, values: Mapping[str, float], step: int) -> None:
        """One ``add_scalar(metric, ...)`` per series, each in the series' own run."""
        for series, v in values.items():
            self._writer(str(series)).add_scalar(metric, float(v), int(step))

    def log_table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """A Markdown table in the Text tab."""
        lines = ["| " + " | ".join(map(str, columns)) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
        self._main.add_text(name, "\n".join(lines), 0)

    def log_html(self, name: str, path: str | Path) -> None:
        """TensorBoard does not render HTML: copy the file next to the events and note where it is."""
        dest = self.logdir / Path(path).name
        if Path(path).resolve() != dest.resolve():
            shutil.copyfile(path, dest)
        self._main.add_text(name, f"HTML report: `{dest}` (open it in a browser)", 0)

    def close(self) -> None:
        """Flush and close every writer."""
        for w in [self._main, *self._series.values()]:
            w.close()
        self._series = {}


class WandbSink:
    """A Weights & Biases run: keys ``<metric>/<series>``, plus one ``line_series`` chart per metric on close.

    Args:
        project: the W&B project (ignored when ``run`` is given).
        run: an existing ``wandb`` run to log into (left open by :meth:`close`); None starts one.
        step_metric: log the step as this key and plot against it (``define_metric``) instead of W&B's own
            step, which must only grow; ``vitdepth export`` uses ``"layer"`` (its x axis is the layer index).
        **init: passed to ``wandb.init`` (``mode="offline"``, ``dir=``, ``name=``, ``config=``, ...).
    """

    def __init__(self, project: str | None = "vitdepth", run: Any = None, step_metric: str | None = None,
                 **init: Any):
        try:
            import wandb
        except ImportError:
            raise _missing("wandb", "wandb") from None
        self._wandb = wandb
        self._own = run is None
        self.run = wandb.init(project=project, **init) if run is None else run
        self.step_metric = step_metric
        self._defined: set[str] = set()
        self._history = _History()
        if step_metric is not None:
            self.run.define_metric(step_metric)

    def log_scalars(self, metric: str, values: Mapping[str, float], step: int) -> None:
        """``run.log({"<metric>/<series>": value, ...})`` at ``step``."""
        self._history.add(metric, values, step)
        data = {f"{metric}/{series}": float(v) for series, v in values.items()}
        if self.step_metric is None:
            self.run.log(data, step=int(step))
            return
        if metric not in self._defined:
            self.run.define_metric(f"{metric}/*", step_metric=self.step_metric)
            self._defined.add(metric)
        self.run.log({self.step_metric: int(step), **data})

    def log_table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """A ``wandb.Table``."""
        self.run.log({name: self._wandb.Table(columns=list(columns), data=[[_plain(c) for c in r] for r in rows],
                                                 allow_mixed_types=True)})

    def log_html(self, name: str, path: str | Path) -> None:
        """A ``wandb.Html`` panel."""
        self.run.log({name: self._wandb.Html(Path(path).read_text(encoding="utf-8"))})

    def close(self) -> None:
        """Log one chart per metric with all its series, then finish the run (when this sink started it)."""
        if self.run is None:
            return
        for metric, per in self._history.data.items():
            keys = sorted(per)
            self.run.log({f"{metric}/chart": self._wandb.plot.line_series(
                xs=[[s for s, _ in per[k]] for k in keys], ys=[[v for _, v in per[k]] for k in keys], keys=keys,
                title=metric, xname=self.step_metric or "step")})
        self._history = _History()
        if self._own:
            self.run.finish()
        self.run = None


class MlflowSink:
    """An MLflow run: keys ``<metric>/<series>``, plus one figure per metric (``charts/<metric>.png``) on close.

    Args:
        experiment: the experiment name (created when missing; ignored when ``run_id`` is given).
        tracking_uri: e.g. ``file:///path/mlruns`` (offline) or a server URL; None = MLflow's default.
        run_name: the name of the new run.
        run_id: an existing run to log into (left open by :meth:`close`); None starts one.
        params: logged as run parameters.
    """

    def __init__(self, experiment: str = "vitdepth", tracking_uri: str | None = None, run_name: str | None = None,
                 run_id: str | None = None, params: Mapping[str, Any] | None = None):
        try:
            from mlflow.entities import Metric, Param
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise _missing("mlflow", "mlflow") from None
        if tracking_uri is not None and (tracking_uri.startswith("file:") or "://" not in tracking_uri):
            # A file:// URI (or a path) asks for the file store, which MLflow 3 keeps, in maintenance mode, behind
            # this opt-in; it is the store that needs no database packages. An explicit "false" is respected.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        try:
            self.client = MlflowClient(tracking_uri)
        except ImportError as e:  # MLflow's default sqlite store needs SQLAlchemy and Alembic
            raise VitdepthError(f"the MLflow tracking store {tracking_uri or 'default'} needs {e.name}; install it "
                                "with pip install 'vitdepth[mlflow]', or pass a file:///path/mlruns tracking URI"
                                ) from None
        self._metric_cls = Metric
        self._own = run_id is None
        if run_id is None:
            exp = self.client.get_experiment_by_name(experiment)
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(experiment)
            run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
        self.run_id = run_id
        self._history = _History()
        if params:
            self.client.log_batch(run_id, params=[Param(str(k), str(v)[:6000]) for k, v in params.items()])

    def log_scalars(self, metric: str, values: Mapping[str, float], step: int) -> None:
        """One ``log_batch`` of ``<metric>/<series>`` at ``step``."""
        self._history.add(metric, values, step)
        ts = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[self._metric_cls(f"{metric}/{s}", float(v), ts, int(step))
                                                    for s, v in values.items()])

    def log_table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """An MLflow table artifact ``<name>.json`` (shown in the run's artifact and evaluation views)."""
        data = {c: [_plain(r[i]) for r in rows] for i, c in enumerate(columns)}
        try:
            self.client.log_table(self.run_id, data, f"{name}.json")
        except ImportError:  # MLflow's table format needs pandas; the same columns / data, written directly
            self.client.log_dict(self.run_id, {"columns": list(columns), "data": [[_plain(c) for c in r]
                                                                                  for r in rows]}, f"{name}.json")

    def log_html(self, name: str, path: str | Path) -> None:
        """The file as an artifact (MLflow's artifact view renders HTML)."""
        self.client.log_artifact(self.run_id, str(path))

    def close(self) -> None:
        """Log one figure per metric with all its series, then end the run (when this sink started it)."""
        if self.run_id is None:
            return
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        for metric, per in self._history.data.items():
            fig, ax = plt.subplots(figsize=(6, 3.5))
            for key in sorted(per):
                ax.plot([s for s, _ in per[key]], [v for _, v in per[key]], marker=".", label=key)
            ax.set_title(metric)
            ax.set_xlabel("step")
            if len(per) <= 16:
                ax.legend(fontsize="small")
            self.client.log_figure(self.run_id, fig, f"charts/{metric.replace('/', '_')}.png")
            plt.close(fig)
        self._history = _History()
        if self._own:
            self.client.set_terminated(self.run_id)
        self.run_id = None


SINKS = {"tensorboard": TensorBoardSink, "wandb": WandbSink, "mlflow": MlflowSink}


def create_sink(backend: str, /, **options: Any) -> Sink:
    """Build a sink by backend name (``tensorboard``, ``wandb``, ``mlflow``)."""
    if backend not in SINKS:
        raise VitdepthError(f"unknown tracker {backend!r}; choose one of {', '.join(SINKS)}")
    return SINKS[backend](**options)


def _plain(v: Any) -> Any:
    """Table cells as str / int / float / None (trackers reject lists and numpy scalars)."""
    if v is None or isinstance(v, (str, bool, int, float)):
        return v
    if hasattr(v, "item"):
        return v.item()
    return str(v)


def _cell(v: Any) -> str:
    v = _plain(v)
    return "" if v is None else _html.escape(f"{v:.4g}" if isinstance(v, float) else str(v)).replace("|", "\\|")
