"""ISI monitor: a cheap per-layer health check while training.

Every ``every`` steps it runs the model (eval mode, no grad) on a fixed held-out batch and
computes, per layer, ``isi_attn``, ``token_sim`` and ``attn_entropy`` with exactly the code
``vitdepth analyze`` uses (:func:`vitdepth.analysis.layer_metrics.per_image_values`). The paper
(arXiv 2511.21635) proposes ISI as such a check: a deep model whose late layers stop mixing
while the loss still falls is spending depth on nothing.

Flatness test: the late layers — the last third of the blocks — have *gone flat* when the
three-segment phase fit of the ``isi_attn`` curve (:func:`vitdepth.phases.fit_three_segments`,
the fit ``analyze`` reports) varies over them by less than ``flat_tol`` (default 10%) of the
curve's range over all blocks, while the mean training loss of the last ``every`` steps is at
least ``loss_drop`` (default 1%) below that of the ``every`` steps before. The fit, not the raw
curve, is tested so that per-layer noise on one held-out batch does not read as mixing; curves
of fewer than 5 blocks (too short for three segments) are tested raw. When both hold at
``patience`` consecutive evaluations (default 3) after ``warmup_steps``, the monitor warns once
(a random-init ViT's late layers are flat too, so a single early evaluation is not evidence).

Usable from any loop::

    monitor = ISIMonitor(model, held_out_images, every=100, out_dir="runs/monitor")
    for step, (x, y) in enumerate(loader):
        loss = ...; loss.backward(); opt.step()
        monitor(step, loss.item())
"""

from __future__ import annotations

import csv
import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._errors import VitdepthError
from ..analysis.layer_metrics import per_image_values
from ..models import TappedModel, tap_module
from ..phases import fit_three_segments
from ..trackers import Sink, TensorBoardSink, layer_series

MONITOR_METRICS = ("isi_attn", "token_sim", "attn_entropy")
CSV_HEADER = ["step", "layer", "metric", "value", "loss"]


class LateLayersFlatWarning(UserWarning):
    """The late layers stopped mixing while the loss still falls."""


class ISIMonitor:
    """Per-layer ISI / token similarity / attention entropy every ``every`` steps.

    Args:
        model: a timm / Hugging Face ViT module or a :class:`TappedModel`.
        images: the fixed held-out batch (B, 3, H, W), already preprocessed.
        every: evaluate every this many steps (and at step 0).
        out_dir: where ``monitor.csv`` (and TensorBoard events under ``tensorboard/``, when installed) go; None
            logs nothing to disk.
        tensorboard: write TensorBoard scalars to ``out_dir/tensorboard`` (None = when tensorboard is installed;
            True raises :class:`~vitdepth.VitdepthError` when it is not).
        sinks: more trackers to log to (:mod:`vitdepth.trackers`: W&B, MLflow, TensorBoard elsewhere); each metric
            is one chart with one series per layer. :meth:`close` closes them (a sink leaves open a tracker run
            it did not start).
        log: called with a one-line summary per evaluation (default: stderr); None for silence.
        flat_tol: late-layer range below this fraction of the full range counts as flat.
        loss_drop: relative fall of the mean loss that counts as "still falling".
        patience: consecutive evaluations the condition must hold before the warning.
        warmup_steps: no warning before this step (e.g. the learning-rate warmup).
        start_step: the step a resumed run continues from: rows of an existing ``monitor.csv`` at or after it
            are dropped (the resumed run writes them again); None appends to an existing file unchanged. Restore
            the loss window and warning state with :meth:`load_state_dict` so the rows equal an uninterrupted run's.
    """

    sinks: Sequence[Sink] = ()  # class defaults: a monitor built with __new__ (tests) logs nowhere
    _tb: TensorBoardSink | None = None

    def __init__(self, model: nn.Module | TappedModel, images: torch.Tensor, every: int = 100,
                 out_dir: str | Path | None = None, tensorboard: bool | None = None,
                 log: Callable[[str], None] | None = lambda s: print(s, file=sys.stderr),
                 flat_tol: float = 0.1, loss_drop: float = 0.01, patience: int = 3, warmup_steps: int = 0,
                 start_step: int | None = None, sinks: Sequence[Sink] | None = None):
        if every < 1:
            raise ValueError(f"The 'every' parameter of ISIMonitor must be an int >= 1. Got {every} instead.")
        self.tapped = model if isinstance(model, TappedModel) else tap_module(model)
        self.images = images
        self.every = every
        self.log = log
        self.flat_tol, self.loss_drop = flat_tol, loss_drop
        self.patience, self.warmup_steps = patience, warmup_steps
        self._streak = 0
        self.losses: list[float] = []
        self.warned = False
        self.history: list[dict] = []
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self._csv = None
        self._tb = None
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if start_step is not None:
                _drop_rows_from(self.out_dir / "monitor.csv", start_step)
            new = not (self.out_dir / "monitor.csv").exists()
            self._csv = open(self.out_dir / "monitor.csv", "a", newline="")  # noqa: SIM115 (closed in close())
            self._writer = csv.writer(self._csv)
            if new:
                self._writer.writerow(CSV_HEADER)
            if tensorboard is not False:
                try:
                    self._tb = TensorBoardSink(self.out_dir / "tensorboard")
                except VitdepthError:
                    if tensorboard:
                        raise
        elif tensorboard:
            raise VitdepthError("ISIMonitor(tensorboard=True) writes to out_dir/tensorboard; pass out_dir")
        self.sinks = [*([self._tb] if self._tb is not None else []), *(sinks or ())]

    @torch.no_grad()
    def compute(self) -> dict[str, dict[str, float]]:
        """``{metric: {layer: mean over the held-out batch}}`` for the monitored metrics."""
        model = self.tapped.model
        was_training = model.training
        model.eval()
        values: dict[str, dict[str, float]] = {m: {} for m in MONITOR_METRICS}

        def sink(t):
            for metric, v in per_image_values(t, self.tapped.has_cls).items():
                if metric in values:
                    values[metric][t.layer] = float(v.mean())

        try:
            images = self.images.to(self.tapped.device, self.tapped.dtype)
            self.tapped.run(images, sink, attention=True)
        finally:
            model.train(was_training)
        return values

    def __call__(self, step: int, loss: float | None = None) -> dict | None:
        """Record the step's loss; every ``every`` steps evaluate, log and check flatness."""
        if loss is not None:
            self.losses.append(float(loss))
        if step % self.every:
            return None
        values = self.compute()
        mean_loss = float(np.mean(self.losses[-self.every:])) if self.losses else float("nan")
        self.history.append({"step": step, "loss": mean_loss, **values})
        if self._csv is not None:
            for metric, per_layer in values.items():
                for layer, v in per_layer.items():
                    self._writer.writerow([step, layer, metric, f"{v:.8g}", f"{mean_loss:.6g}"])
            self._csv.flush()
        for sink in self.sinks:  # one chart per metric, one series per layer (not metrics x layers charts)
            for metric, per_layer in values.items():
                sink.log_scalars(metric, {layer_series(k): v for k, v in per_layer.items()}, step)
        flat = self.late_layers_flat(values["isi_attn"])
        if self.log is not None:
            isi = values["isi_attn"]
            layers = sorted(isi, key=int)
            self.log(f"monitor step {step}: loss {mean_loss:.4f}  isi_attn first/last "
                     f"{isi[layers[0]]:.4f}/{isi[layers[-1]]:.4f}  token_sim last "
                     f"{values['token_sim'][layers[-1]]:.3f}" + ("  late layers flat" if flat else ""))
        self._streak = self._streak + 1 if flat and self.loss_falling() and step >= self.warmup_steps else 0
        if self._streak >= self.patience and not self.warned:
            self.warned = True
            msg = (f"ISI monitor: at step {step} the late layers have gone flat (the phase fit of isi_attn over the "
                   f"last third of the blocks varies by less than {self.flat_tol:.0%} of its range, {self.patience} "
                   "evaluations running) while the training loss still falls: the extra depth is not mixing "
                   "information")
            warnings.warn(msg, LateLayersFlatWarning, stacklevel=2)
        return values

    def late_layers_flat(self, isi: dict[str, float]) -> bool:
        """The documented flatness test on one ``isi_attn`` curve (blocks 1..L)."""
        layers = sorted(isi, key=int)
        curve = np.array([isi[k] for k in layers])
        if len(curve) < 3 or not np.isfinite(curve).all():
            return False
        full = curve.max() - curve.min()
        if len(curve) >= 5:
            x = np.array([int(k) for k in layers], dtype=float)
            curve = fit_three_segments(x, curve, depth=int(layers[-1])).fitted
        late = curve[-max(2, int(np.ceil(len(curve) / 3))):]
        return bool(full > 0 and (late.max() - late.min()) < self.flat_tol * full)

    def loss_falling(self) -> bool:
        """Mean loss of the last ``every`` steps is ``loss_drop`` below the ``every`` before."""
        if len(self.losses) < 2 * self.every:
            return False
        recent = np.mean(self.losses[-self.every:])
        before = np.mean(self.losses[-2 * self.every:-self.every])
        return bool(recent < (1 - self.loss_drop) * before)

    def state_dict(self) -> dict:
        """What a resumed run needs to continue exactly: the loss window, the flatness streak, the warning flag."""
        return {"losses": [float(x) for x in self.losses[-2 * self.every:]], "streak": int(self._streak),
                "warned": bool(self.warned)}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned (at the step the run resumes from)."""
        self.losses = [float(x) for x in state.get("losses", [])]
        self._streak = int(state.get("streak", 0))
        self.warned = bool(state.get("warned", False))

    def close(self) -> None:
        """Flush and close the CSV and every sink."""
        if self._csv is not None:
            self._csv.close()
            self._csv = None
        for sink in self.sinks:
            sink.close()
        self.sinks, self._tb = [], None


def _drop_rows_from(path: Path, start_step: int) -> None:
    """Keep the header and the rows of ``monitor.csv`` before ``start_step`` (rewritten atomically)."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    kept = [r for r in rows if r and r[0].isdigit() and int(r[0]) < start_step]
    if rows and rows[0] == CSV_HEADER and len(kept) == len(rows) - 1:
        return
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        csv.writer(f).writerows([CSV_HEADER, *kept])
    os.replace(tmp, path)


class ISICallbackHooks:
    """The hooks of :class:`ISIMonitorCallback`, free of Lightning (``vitdepth.train.monitor.ISIMonitorCallback``
    adds ``lightning.pytorch.Callback`` as a base when first imported).

    Runs an :class:`ISIMonitor` on rank 0 after every optimizer step (``trainer.global_step`` advanced: with
    gradient accumulation the micro-batches between steps are not evaluated twice); the monitor's step is the
    index of the optimizer step just taken (0, 1, ...), as in the plain-loop example. Its state rides in the
    Lightning checkpoint (``state_dict`` / ``load_state_dict``), and a resumed fit drops the ``monitor.csv`` rows
    the interrupted one wrote past the checkpoint, so a resumed run logs what an uninterrupted one would.

    Args:
        images: the fixed held-out batch (B, 3, H, W), already preprocessed.
        every: evaluate every this many optimizer steps (and at step 0).
        out_dir: ``monitor.csv`` and TensorBoard events go here (None: only the sinks).
        sinks: trackers to log to, e.g. ``[WandbSink(run=wandb_logger.experiment)]``.
        model_attr: the attribute of the LightningModule holding the ViT (``""``: the module itself).
        **monitor_kwargs: passed to :class:`ISIMonitor` (``tensorboard``, ``log``, ``flat_tol``, ``patience``, ...).
    """

    def __init__(self, images: torch.Tensor, every: int = 200, out_dir: str | Path | None = None,
                 sinks: Sequence[Sink] | None = None, model_attr: str = "model", **monitor_kwargs: Any):
        self.images, self.every, self.out_dir = images, every, out_dir
        self.sinks, self.model_attr, self.monitor_kwargs = list(sinks or ()), model_attr, monitor_kwargs
        self.monitor: ISIMonitor | None = None
        self._state: dict | None = None
        self._last_step: int | None = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """Build the monitor on rank 0 (restoring the state a resumed checkpoint carried).

        Not ``on_fit_start``: Lightning restores ``global_step`` from a checkpoint after that hook, and the
        resumed step decides which ``monitor.csv`` rows are dropped.
        """
        if not trainer.is_global_zero:
            return
        model = getattr(pl_module, self.model_attr) if self.model_attr else pl_module
        start = int(trainer.global_step)
        self.monitor = ISIMonitor(model, self.images, every=self.every, out_dir=self.out_dir, sinks=self.sinks,
                                  start_step=start if start else None, **self.monitor_kwargs)
        if self._state is not None:
            self.monitor.load_state_dict(self._state)
        self._last_step = start

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        """After an optimizer step: record the loss and evaluate when the step is due."""
        step = int(trainer.global_step)
        if self.monitor is None or step == self._last_step:
            return
        self._last_step = step
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        self.monitor(step - 1, None if loss is None else float(loss))

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        """Close the CSV and the sinks."""
        self._close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """Close the CSV and the sinks (what was logged stays)."""
        self._close()

    def _close(self) -> None:
        if self.monitor is not None:
            self._state = self.monitor.state_dict()
            self.monitor.close()
            self.monitor = None

    def state_dict(self) -> dict:
        """The monitor's state (:meth:`ISIMonitor.state_dict`), saved in the Lightning checkpoint."""
        return self.monitor.state_dict() if self.monitor is not None else dict(self._state or {})

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore what :meth:`state_dict` returned; applied when the monitor is built in ``on_fit_start``."""
        self._state = dict(state_dict)
        if self.monitor is not None:
            self.monitor.load_state_dict(self._state)


def __getattr__(name: str):
    # ISIMonitorCallback subclasses lightning's Callback (the Trainer checks isinstance), so it is built on first
    # use: importing vitdepth never imports Lightning.
    if name != "ISIMonitorCallback":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        from lightning.pytorch import Callback
    except ImportError:
        try:
            from pytorch_lightning import Callback
        except ImportError:
            raise VitdepthError("ISIMonitorCallback needs PyTorch Lightning; install it with "
                                "pip install 'vitdepth[lightning]'") from None

    cls = type("ISIMonitorCallback", (ISICallbackHooks, Callback), {"__module__": __name__,
                                                                     "__doc__": ISICallbackHooks.__doc__})
    globals()[name] = cls
    return cls
