"""``analyze``: one streaming pass over the data, then probes, CIs and the run directory.

Data flow (design §2): data source → tapped model → per-layer metrics updated from each
layer's taps while the forward runs (only one layer's activations alive at a time) → pooled
features to an fp16 cache → probes from the cache → tidy table, per-image curves, figures.
The run directory is written to a sibling temporary directory and renamed at the end, so a
failure never leaves a half-written run behind.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import shlex
import shutil
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from .._errors import Interrupted, Terminated, VitdepthError
from ..data import (
    SPLITS,
    apply_preprocess_overrides,
    build_transform,
    check_labels,
    create_source,
    iterate_batches,
    source_from_object,
    split_coverage,
    stratified_splits,
    stratified_subset,
)
from ..data.transforms import draft_size_for
from ..distributed import (
    DistContext,
    broadcast_object,
    destroy,
    gather_objects,
    init_distributed,
    recv_array,
    reduce_sum_to_main,
    send_array,
)
from ..metrics import METRICS, PerImageCurves
from ..metrics.catalog import resolve_metrics
from ..metrics.collapse import CollapseStats, collapse_compute, collapse_merge, collapse_update, nc4_disagreement
from ..metrics.functional import reduction_dtype
from ..metrics.isi_rec import ReconstructionISI, default_k_in
from ..metrics.probes import select_ridge_probe
from ..metrics.stats import bootstrap_mean_ci, wilson_interval
from ..models import TappedModel, create_model, tap_module
from ..outputs import FAULT_ENV, OutputDir, disk_full_error, has_checkpoint
from ..phases import saturation_layer
from ..results import layer_depth, layer_order, write_layers
from ..specs import device_form_error, image_size_error
from ..summaries import build_phases
from .cache import FeatureCache
from .causal import (
    CAUSAL_PER_IMAGE_IDS,
    INTERVENTION_IDS,
    KNOCKOUT_CACHE,
    KNOCKOUT_IDS,
    KNOCKOUT_PROBE_ID,
    LENS_IDS,
    CausalLayers,
)
from .checkpoint import checkpoint_file, fingerprint_difference, load_checkpoint, save_checkpoint, shard_cache_dir
from .layer_metrics import ATTENTION_IDS, PER_IMAGE_IDS, attention_chunk_elements, per_image_values, pooled_features
from .progress import Progress, Stages

ISI_REC_IDS = frozenset({"isi_rec", "r2_self", "r2_all"})
COLLAPSE_IDS = frozenset(m for m, info in METRICS.items() if info.family == "collapse")


@dataclass
class AnalyzeConfig:
    """Everything that determines a run (recorded in run.json).

    ``model`` is a spec string (``timm:NAME``, ``hf:ID_OR_DIR``, ``torchvision:NAME``, ``file:DIR``), a built
    ``torch.nn.Module`` (timm, Hugging Face or torchvision vision transformer) or a
    :class:`~vitdepth.models.TappedModel`. ``data`` is a data spec string (``digits``, ``folder:PATH``,
    ``hf-dataset:...``, ``wds:...``, ``csv:...``), a ``torch.utils.data.Dataset`` yielding ``(image, label)``
    (PIL images go through the model's preprocessing, tensors are used as they are), a ``DataLoader`` over one,
    or a Hugging Face ``datasets.Dataset``. ``transform`` (PIL image → (3, H, W) tensor) replaces the model's own
    preprocessing; it is needed for a passed module whose preprocessing cannot be found (torchvision modules,
    Hugging Face modules without an image processor) when the data yields PIL images.
    """

    model: Any
    data: Any = "digits"
    out: str = "runs/analyze"
    samples: int | None = None
    batch_size: int = 32
    device: str = "cpu"
    seed: int = 0
    checkpoint: str | None = None
    random_init: bool = False
    quiet: bool = False
    overwrite: bool = False
    strict: bool = False
    name: str | None = None
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    n_boot: int = 1000
    n_boot_phases: int = 200
    report: bool = True
    num_workers: int | None = None  # DataLoader workers; None: from the CPU count for file-backed data, else 0
    draft_decode: bool = True  # JPEGs at least twice the transform's resize decode reduced (data.transforms)
    figures: bool = True
    metrics: str | None = None  # --metrics: groups core / paper / all and single ids; None = all
    probe: str | None = None  # --probe logistic adds the softmax-regression probe to the selection
    isi_k: int = 8
    isi_k_in: int | None = None
    self_check: bool = True  # compare taps with the model's own attention / hidden states on the first images
    image_size: int | None = None  # --image-size: run the model at this input size
    preprocess: tuple[str, ...] = ()  # --preprocess KEY=VALUE overrides of the model's preprocessing
    transform: Callable | None = None  # replaces the model's own preprocessing (objects passed in Python)
    dtype: str = "fp32"  # --dtype: autocast of the model's forward (fp32, bf16, fp16); taps are read as float32
    resume: bool = False  # --resume: continue an interrupted run from its checkpoint
    checkpoint_every: float = 300.0  # --checkpoint-every: seconds of work between checkpoints of the pass
    command_line: tuple[str, ...] = ()  # the CLI command that started the run (to print the resume command)
    interventions: tuple[str, ...] = ()  # --interventions cls: the causal [CLS] tests (extra forwards per layer)
    intervention_samples: int | None = None  # --intervention-samples: run them on a seeded subset of N images
    cka_samples: int = 512  # --cka-samples: images of the layer x layer CKA within the model (0: none)
    figure_formats: tuple[str, ...] = ("png",)  # --figure-format: png always (the report embeds it), pdf / svg
    extra: dict = field(default_factory=dict)


def _display_name(cfg: AnalyzeConfig, tm: TappedModel) -> str:
    if cfg.name:
        return cfg.name
    if not isinstance(cfg.model, str):
        return type(tm.model).__name__
    target = cfg.model.partition(":")[2] or cfg.model
    return Path(target.rstrip("/")).name or target


def _describe(value) -> Any:
    """A JSON-ready stand-in for a config value (objects passed in Python are recorded by class)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (tuple, list)) and all(isinstance(v, (str, int, float, bool)) for v in value):
        return list(value)
    if isinstance(value, dict):
        return {k: _describe(v) for k, v in value.items()}
    return f"<{type(value).__module__}.{type(value).__qualname__} object>"


def _config_record(cfg: AnalyzeConfig) -> dict:
    # not dataclasses.asdict: it deep-copies every value, a whole model or dataset included
    return {f.name: _describe(getattr(cfg, f.name)) for f in fields(cfg) if f.name != "extra"} | cfg.extra


def _validate(cfg: AnalyzeConfig) -> None:
    """Numeric options, checked before anything is loaded (each error names the flag)."""
    from ..report.figures import parse_formats

    cfg.figure_formats = parse_formats(cfg.figure_formats)
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or not 0 <= cfg.seed < 2**32:
        raise VitdepthError(f"--seed must be an integer from 0 to {2**32 - 1}, got {cfg.seed}")
    if cfg.samples is not None and (not isinstance(cfg.samples, int) or cfg.samples < 1):
        raise VitdepthError(f"--samples must be a positive number of images, got {cfg.samples}; leave it out to "
                            "analyze every image")
    if not isinstance(cfg.batch_size, int) or cfg.batch_size < 1:
        raise VitdepthError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    if cfg.dtype not in AUTOCAST_DTYPES:
        raise VitdepthError(f"--dtype {cfg.dtype!r} is not known; use one of {', '.join(AUTOCAST_DTYPES)}")
    if not isinstance(cfg.checkpoint_every, (int, float)) or not cfg.checkpoint_every >= 0:
        raise VitdepthError(f"--checkpoint-every must be a number of seconds >= 0, got {cfg.checkpoint_every}")
    if image_size_error(cfg.image_size) is not None:
        raise VitdepthError(image_size_error(cfg.image_size))


def _model_inputs(cfg: AnalyzeConfig) -> list[str]:
    """Paths the model spec reads (never to be replaced by --out)."""
    target = cfg.model.partition(":")[2] if isinstance(cfg.model, str) else None
    return [p for p in (cfg.checkpoint, target) if p and os.path.exists(p)]


def _resolve_model(cfg: AnalyzeConfig, device: torch.device) -> TappedModel:
    """A spec, a built module or an already tapped model → a :class:`TappedModel` on ``device``."""
    if isinstance(cfg.model, str):
        return create_model(cfg.model, checkpoint=cfg.checkpoint, random_init=cfg.random_init, seed=cfg.seed,
                            device=device, image_size=cfg.image_size)
    if cfg.checkpoint or cfg.random_init or cfg.image_size:
        raise VitdepthError("checkpoint, random_init and image_size apply to model specs; a model object is "
                            "analyzed as it is")
    if isinstance(cfg.model, TappedModel):
        tm = cfg.model
    elif isinstance(cfg.model, torch.nn.Module):
        tm = tap_module(cfg.model, f"object:{type(cfg.model).__name__}")
        tm.identity["parameters_sha256"] = _parameter_hash(tm.model)
    else:
        raise VitdepthError(f"model must be a spec string, a torch.nn.Module or a TappedModel, got "
                            f"{type(cfg.model).__name__}; e.g. analyze(model='timm:vit_small_patch16_224', ...)")
    tm.model.eval()
    return tm.to(device)


def _parameter_hash(model: torch.nn.Module) -> str:
    """sha256 over the module's state dict (names, shapes, dtypes, bytes): the identity of in-memory weights."""
    import hashlib

    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        t = v.detach().cpu().contiguous()
        h.update(f"{k}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class _NeedsTransform:
    """Stands in for the preprocessing of a passed module that has none: fine for tensor data, an error for PIL."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __call__(self, img):
        raise VitdepthError(f"no preprocessing is known for {self.what} and the data yields PIL images; pass "
                            "transform= (PIL image -> (3, H, W) tensor), or a dataset of preprocessed tensors")

    def to_dict(self) -> dict:
        return {"kind": "none (tensor data used as given)"}


def _resolve_transform(cfg: AnalyzeConfig, tm: TappedModel):
    """The model's own preprocessing, an override, or the user's ``transform``; see :class:`AnalyzeConfig`."""
    if cfg.transform is not None:
        return cfg.transform
    if cfg.preprocess:  # explicit overrides replace the library's own transform with timm's, as configured
        tm.preprocess = apply_preprocess_overrides(tm.preprocess, list(cfg.preprocess))
        tm.transform = None
    if tm.transform is not None:
        return tm.transform
    if isinstance(cfg.model, str) or tm.adapter == "timm":  # timm modules carry their pretrained config
        return build_transform(tm.preprocess)
    source = getattr(getattr(tm.model, "config", None), "_name_or_path", "") if tm.adapter == "hf" else ""
    if source:  # a Hugging Face module loaded with from_pretrained knows where its image processor lives
        from ..models.adapters.hf import hf_image_transform

        try:
            found = hf_image_transform(source)
        except VitdepthError:
            found = None
        if found is not None:
            return found
    return _NeedsTransform(f"the {type(tm.model).__name__} object")


def _auto_workers(cfg: AnalyzeConfig) -> int:
    """DataLoader workers: decoding files benefits from them; in-memory and user objects stay in-process."""
    if cfg.num_workers is not None:
        if cfg.num_workers < 0:
            raise VitdepthError(f"--num-workers must be >= 0, got {cfg.num_workers}")
        return cfg.num_workers
    file_backed = isinstance(cfg.data, str) and cfg.data.split(":", 1)[0] in ("folder", "csv", "wds", "hf-dataset")
    return min(8, max(0, (os.cpu_count() or 1) - 1)) if file_backed else 0


def _versions() -> dict:
    v = {"vitdepth": __version__, "python": platform.python_version(), "torch": torch.__version__,
         "numpy": np.__version__}
    for mod in ("timm", "transformers", "sklearn"):
        m = sys.modules.get(mod)
        if m is not None:
            v[mod] = getattr(m, "__version__", None)
    return v


def _resolve_device(device: str, ctx: DistContext | None = None) -> torch.device:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise VitdepthError(f"--device {device} was asked for but CUDA is not available here; use --device cpu")
    if device_form_error(device) is not None:
        raise VitdepthError(device_form_error(device))
    if device == "cuda" and ctx is not None and ctx.enabled:
        return torch.device("cuda", ctx.local_rank)  # torchrun: one GPU per process
    return torch.device(device)


#: ``--dtype``: the autocast dtype of the model's forward (None: the model's own float32 arithmetic).
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def _fault_int(name: str) -> int | None:
    """Test hook: ``VITDEPTH_FAULT_INJECT=NAME:N`` (e.g. ``oom-above:8``) gives N, else None."""
    spec = os.environ.get(FAULT_ENV, "")
    key, _, value = spec.partition(":")
    return int(value) if key == name and value.isdigit() else None


class _Pass:
    """State of the streaming pass over one shard of the images (all of them in a single process).

    Per-image curves, ISI sufficient statistics, the feature cache, NaN/Inf flags, which images loaded, the
    skipped ones, and the cursor (``done``: positions of the shard processed). A batch is computed in full
    before any of this state changes (:meth:`batch`), so a batch that runs out of memory can be retried in
    halves, and a checkpoint taken between batches is always consistent.

    Per-layer results stay on the model's device until the batch has run and then cross to the host in one
    copy per kind (flags, per-image values, pooled features), so a GPU pass does not wait on the host after
    every layer.
    """

    def __init__(self, tm: TappedModel, n_items: int, cache: FeatureCache, metrics: frozenset[str],
                 splits: np.ndarray, isi_rec: dict | None, device: torch.device, autocast_dtype=None,
                 causal: CausalLayers | None = None, labels: np.ndarray | None = None):
        self.tm = tm
        self.metrics = metrics
        self.curves = PerImageCurves([m for m in PER_IMAGE_IDS + CAUSAL_PER_IMAGE_IDS if m in metrics], n_items,
                                     len(tm.layer_names))
        self.causal = causal  # head lens and [CLS] interventions, or None
        self.labels = labels  # label per shard position (−1: unknown), for the causal metrics
        self.intervene: np.ndarray | None = None  # shard positions the interventions run on (None: all)
        self.cache = cache
        self.splits = splits  # split code per shard position
        self.isi_rec = isi_rec  # layer -> ReconstructionISI, or None
        # per image and layer: activations and cached (fp16) pooled features are all finite
        self.finite = np.ones((n_items, len(tm.layer_names)), dtype=bool)
        self.loaded = np.zeros(n_items, dtype=bool)
        self.skipped: list[dict] = []
        self.warnings: list[str] = []  # what the pass had to change (out-of-memory retries), for run.json
        self.pass_complete = False  # restored from a checkpoint written after the last batch
        self.done = 0  # shard positions processed (the data cursor)
        self.micro_batch: int | None = None  # set when a batch ran out of memory: process batches in pieces
        self.pass_s = 0.0  # wall time of the pass, over every session of a resumed run
        self.attention = bool(metrics & ATTENTION_IDS)
        self.device = device
        # GPU: attention chunks as large as a memory budget allows, per-image reductions in float32 (float64
        # only for the running sums); CPU: cache-sized chunks and float64 reductions (design §7)
        self.chunk_elements = attention_chunk_elements(device)
        self.reduce_dtype = torch.float32 if device.type == "cuda" else None
        self.autocast_dtype = autocast_dtype
        # the model's own forward time with the sink taken out (host clock; see TappedModel.run)
        self.forward_s = 0.0
        self.block_end_s = np.zeros(tm.depth)
        self._oom_above = _fault_int("oom-above")
        self._rows: np.ndarray | None = None
        self._targets: torch.Tensor | None = None
        self._bad: list[torch.Tensor] = []
        self._values: list[tuple[str, int, torch.Tensor]] = []
        self._feats: dict[str, list[torch.Tensor]] = {}
        self._isi_inputs: list[tuple[str, torch.Tensor]] = []

    def precision(self) -> ExitStack:
        """The forward's autocast (``--dtype``) and the per-image reduction dtype of this device."""
        stack = ExitStack()
        if self.autocast_dtype is not None:
            stack.enter_context(torch.autocast(self.device.type, dtype=self.autocast_dtype))
        if self.reduce_dtype is not None:
            stack.enter_context(reduction_dtype(self.reduce_dtype))
        return stack

    def sink(self, t):
        if self._oom_above is not None and t.layer == "1" and t.tokens.shape[0] > self._oom_above:
            raise _OOM(f"injected: batch of {t.tokens.shape[0]} > {self._oom_above} ({FAULT_ENV})")
        # One reduction per image instead of an elementwise mask: a NaN or Inf anywhere makes the image's
        # float32 sum non-finite (a finite float32 sum of finite activations cannot overflow in practice).
        # A pooled feature beyond the fp16 range of the cache counts too: the probes could not use it.
        checks = [t.tokens.sum(dim=(1, 2), dtype=torch.float32)]
        for ts, feats in pooled_features(t, self.tm.has_cls).items():
            f16 = feats.to(torch.float16)
            self._feats.setdefault(ts, []).append(f16)
            checks.append(f16.sum(dim=1, dtype=torch.float32))
        self._bad.append(~torch.isfinite(torch.stack(checks).sum(dim=0)))
        for metric, values in per_image_values(t, self.tm.has_cls, self.metrics, self.chunk_elements).items():
            self._values.append((metric, t.position, values))
        if self.isi_rec is not None:
            if t.layer == "pre":
                # every layer regresses onto the same projected pre-PE embeddings: project them once per batch
                self._targets = next(iter(self.isi_rec.values())).targets(t.tokens)
            else:  # projected now, added to the sums once the whole batch has run
                self._isi_inputs.append((t.layer, self.isi_rec[t.layer].inputs(t.tokens)))
        if self.causal is not None:
            self.causal.sink(t)

    def batch(self, images: torch.Tensor, rows: np.ndarray, first_row: int, span: int) -> None:
        """Run one batch (shard positions ``rows``; cache rows ``first_row .. first_row + span - 1``)."""
        self._rows, self._bad, self._values, self._feats, self._isi_inputs = rows, [], [], {}, []
        timings: dict = {}
        knocked = None
        try:
            with self.precision():
                if self.causal is not None:
                    self.causal.begin(self.labels[rows], first_row,
                                      None if self.intervene is None else self.intervene[rows])
                output = self.tm.run(images, self.sink, attention=self.attention, timings=timings)
                if self.causal is not None:  # the edited forwards, after the clean one has filled the donors
                    values, knocked = self.causal.finish(images, output, self.labels[rows])
                    self._values += values
            # -- the batch has run: from here on the state changes --
            self.forward_s += timings["forward_s"]
            self.block_end_s += np.asarray(timings["block_end_s"])
            self.finite[rows] = ~torch.stack(self._bad, dim=1).cpu().numpy()
            if self._values:
                values = torch.stack([v.to(torch.float64) for _, _, v in self._values]).cpu().numpy()
                for (metric, position, _), v in zip(self._values, values, strict=True):
                    self.curves.update(metric, position, rows, v)
            for layer, x in self._isi_inputs:
                self.isi_rec[layer].update_projected(x, self._targets, self.splits[rows])
            features = {ts: torch.stack(per_layer) for ts, per_layer in self._feats.items()}  # (n_layers, B, d)
            if knocked is not None:
                features[KNOCKOUT_CACHE] = knocked.to(torch.float16)
            for ts, feats in features.items():
                feats = feats.cpu().numpy()
                if len(rows) == span:
                    block = feats
                else:  # unreadable images (or the gaps between pieces of a batch) leave zero rows in the cache
                    block = np.zeros((feats.shape[0], span, feats.shape[2]), dtype=np.float16)
                    block[:, rows - first_row] = feats
                self.cache.write(ts, first_row, block)
        finally:
            self._targets, self._bad, self._values, self._feats, self._isi_inputs = None, [], [], {}, []

    # -- checkpoints ------------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, np.ndarray]:
        """Every array of the state, for a checkpoint (exact: stored ISI rows stay stored)."""
        out = {"loaded": self.loaded, "finite": self.finite, "block_end_s": self.block_end_s}
        out |= {f"curve/{m}": v for m, v in self.curves.state_dict().items()}
        for layer, isi in (self.isi_rec or {}).items():
            out |= {f"isi/{layer}/{k}": v for k, v in isi.snapshot().items()}
        return out

    def scalars(self) -> dict:
        return {"done": self.done, "pass_s": self.pass_s, "forward_s": self.forward_s, "skipped": self.skipped,
                "micro_batch": self.micro_batch, "warnings": self.warnings}

    def restore(self, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        """Continue from a checkpoint made by :meth:`snapshot` and :meth:`scalars`."""
        self.loaded, self.finite = arrays["loaded"].copy(), arrays["finite"].copy()
        self.block_end_s = arrays["block_end_s"].copy()
        self.curves.load_state_dict({m: arrays[f"curve/{m}"] for m in self.curves.values})
        for layer, isi in (self.isi_rec or {}).items():
            prefix = f"isi/{layer}/"
            isi.restore({k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}, self.device)
        self.done, self.pass_s, self.forward_s = meta["done"], meta["pass_s"], meta["forward_s"]
        self.skipped, self.micro_batch = list(meta["skipped"]), meta["micro_batch"]
        self.warnings, self.pass_complete = list(meta["warnings"]), bool(meta["pass_complete"])


class _StopOnSignal:
    """SIGINT / SIGTERM during the pass ask it to stop at the next batch boundary (after a checkpoint).

    A second signal stops at once, as the signal would without this handler (the last checkpoint stays).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.getsignal(s) for s in self.SIGNALS}
            for s in self.SIGNALS:
                signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
            return
        previous = self._previous.get(signum)
        self._restore()
        if callable(previous):
            previous(signum, frame)
        raise KeyboardInterrupt

    def _restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def __exit__(self, *exc) -> None:
        self._restore()


class _Checkpointer:
    """Writes the pass's checkpoint every ``every_s`` seconds of work, at the end of the pass and on request."""

    def __init__(self, path: Path, every_s: float, fingerprint: dict, shard: dict, flush: list[Path],
                 resume_command: str) -> None:
        self.path, self.every_s, self.fingerprint, self.shard = path, every_s, fingerprint, shard
        self.flush, self.resume_command = flush, resume_command
        self.last = time.monotonic()
        self.written = 0

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.every_s

    def save(self, state: _Pass, pass_complete: bool = False) -> None:
        self.written += 1
        meta = {"vitdepth_version": __version__, "fingerprint": self.fingerprint, **self.shard, **state.scalars(),
                "total": self.shard["hi"] - self.shard["lo"], "pass_complete": pass_complete,
                "resume_command": self.resume_command, "written_by_process": self.written}
        save_checkpoint(self.path, meta, state.snapshot(), flush=self.flush)
        self.last = time.monotonic()


def _fault_point(step: str) -> None:
    """Test hook: ``VITDEPTH_FAULT_INJECT=kill-after-pass`` kills the process (SIGKILL) once the pass is saved."""
    if os.environ.get(FAULT_ENV) == f"kill-{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def _shard_bounds(n: int, batch_size: int, world: int) -> list[tuple[int, int]]:
    """Contiguous runs of whole batches per rank: the same batches a single process would run, so every rank's
    per-image values equal the single-process ones, and shards concatenate in image order."""
    n_batches = -(-n // batch_size)
    return [(min(n, r * n_batches // world * batch_size), min(n, (r + 1) * n_batches // world * batch_size))
            for r in range(world)]


def _main_first(ctx: DistContext, fn: Callable[[], Any]) -> None:
    """Run ``fn`` on rank 0 only; if it raises a :class:`VitdepthError`, every rank raises the same one-liner."""
    error = None
    if ctx.is_main:
        try:
            fn()
        except VitdepthError as e:
            error = str(e)
            if not ctx.enabled:
                raise
    error = broadcast_object(ctx, error)
    if error is not None:
        raise VitdepthError(error)


def _resume_command(cfg: AnalyzeConfig, ctx: DistContext) -> str:
    if not cfg.command_line:
        return "analyze(..., resume=True) with the same arguments"
    args = list(cfg.command_line)
    if "--resume" not in args:
        args.append("--resume")
    if ctx.enabled:
        nproc = os.environ.get("LOCAL_WORLD_SIZE", str(ctx.world_size))
        return shlex.join(["torchrun", f"--nproc-per-node={nproc}", "-m", "vitdepth", *args[1:]])
    return shlex.join(args)


def _fingerprint(cfg: AnalyzeConfig, tm: TappedModel, source, indices, splits, metrics, ctx) -> dict:
    """What a resumed run must share with the interrupted one (compared key by key, named in the refusal)."""
    import hashlib

    def sha(a) -> str:
        return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()

    return json.loads(json.dumps({
        "model": {k: v for k, v in tm.identity.items()}, "data": source.identity(),
        "selection": sha(np.asarray(indices, dtype=np.int64)), "splits": sha(np.asarray(splits, dtype=np.int64)),
        "metrics": sorted(metrics), "seed": cfg.seed, "dtype": cfg.dtype, "image_size": cfg.image_size,
        "preprocess": list(cfg.preprocess), "isi": [cfg.isi_k, cfg.isi_k_in], "batch_size": cfg.batch_size,
        "intervention_samples": cfg.intervention_samples, "draft_decode": cfg.draft_decode,
        "world_size": ctx.world_size}, default=_json_default))


def analyze(cfg: AnalyzeConfig | None = None, /, **kwargs) -> Path:
    """Run the analysis and return the run directory.

    Call it with a config, ``analyze(AnalyzeConfig(model=..., data=..., out=...))``, or with the same fields as
    keywords, ``analyze(model=my_vit, data=my_dataset, out="runs/x")`` (see :class:`AnalyzeConfig` for the
    objects ``model`` and ``data`` accept).

    Under ``torchrun`` every process runs this; the images are split across them, and rank 0 writes the run.

    Raises:
        VitdepthError: bad input (spec, paths, data, existing run directory); nothing is left behind.
        Interrupted: SIGINT / SIGTERM during the run; the checkpoint is kept and the message says how to resume.
    """
    if cfg is None:
        try:
            cfg = AnalyzeConfig(**kwargs)
        except TypeError as e:
            raise VitdepthError(f"analyze(): {e}; the keywords are the fields of AnalyzeConfig") from None
    elif kwargs:
        raise VitdepthError("analyze() takes an AnalyzeConfig or keywords, not both")
    t_start = time.perf_counter()
    _validate(cfg)
    ctx = init_distributed(cfg.device)
    try:
        return _analyze(cfg, ctx, t_start)
    finally:
        destroy(ctx)


def _analyze(cfg: AnalyzeConfig, ctx: DistContext, t_start: float) -> Path:
    od = OutputDir(cfg.out, "run", overwrite=cfg.overwrite, inputs=_model_inputs(cfg), resumable=True,
                   resume=cfg.resume)
    _main_first(ctx, od.check)  # before anything is loaded: a bad --out costs nothing
    device = _resolve_device(cfg.device, ctx)
    quiet = cfg.quiet or not ctx.is_main
    if isinstance(cfg.data, str):
        source = create_source(cfg.data, seed=cfg.seed, exclude=[od.out])  # never read our own output as data
    else:
        source = source_from_object(cfg.data)
    root = getattr(source, "root", None)
    od.inputs += [Path(root)] if root is not None else []
    labelled = bool(getattr(source, "labelled", True))
    labels_all = np.asarray(source.labels)
    if labelled:
        check_labels(labels_all, source.class_names)
    indices = stratified_subset(labels_all, cfg.samples, cfg.seed) if cfg.samples else np.arange(len(source))
    labels = labels_all[indices]
    fixed = source.assign_splits(tuple(cfg.split_fractions)) if hasattr(source, "assign_splits") else None
    if labelled:
        check_labels(labels, source.class_names)
    splits = (np.asarray(fixed)[indices] if fixed is not None
              else stratified_splits(labels, cfg.split_fractions, seed=cfg.seed))
    coverage = split_coverage(labels, splits, source.class_names) if labelled else []
    if coverage and cfg.strict:
        raise VitdepthError(f"{coverage[0]} (--strict)")
    source.warnings = list(getattr(source, "warnings", [])) + coverage
    if not quiet:
        for w in source.warnings:
            print(f"vitdepth: warning: {w}", file=sys.stderr)

    metrics = resolve_metrics(cfg.metrics)
    if cfg.probe not in (None, "ridge", "logistic"):
        raise VitdepthError(f"--probe {cfg.probe!r} is not known; use ridge (always on) or logistic")
    if cfg.probe == "logistic":
        metrics |= {"probe_acc_logistic"}
    for kind in cfg.interventions:
        if kind != "cls":
            raise VitdepthError(f"--interventions {kind!r} is not known; the causal tests available are: cls")
        metrics |= INTERVENTION_IDS
    unlabelled = frozenset()
    if not labelled:  # probes and neural collapse need classes: not applicable, never zeros
        unlabelled = frozenset(m for m in metrics if METRICS[m].kind == "probe" or m in COLLAPSE_IDS)
        metrics -= unlabelled
    _main_first(ctx, od.check)  # the data source may have added inputs
    tm = _resolve_model(cfg, device)
    transform = _resolve_transform(cfg, tm)
    name = _display_name(cfg, tm)
    check = None
    if cfg.self_check:
        check, metrics = _run_self_check(tm, source, indices, transform, device, metrics, cfg, quiet)
    causal, metrics = _resolve_causal(tm, source, indices, transform, device, metrics, cfg, quiet)

    # the fp16 feature cache dominates what a run writes: (layers + cls layers) x images x width x 2 bytes
    dim = tm.sites.patch_proj.out_channels
    od.need_bytes = int(1.25 * 2 * dim * len(indices) * (2 * len(tm.layer_names))) + (16 << 20)
    if metrics & ISI_REC_IDS:  # the checkpoint holds the isi_rec sums, twice while it is being replaced
        tokens = tm.sites.num_prefix + _num_patches(tm)
        width = tokens * (cfg.isi_k_in or default_k_in(tokens, dim))
        od.need_bytes += 2 * tm.depth * 3 * (width * width + width * _num_patches(tm) * cfg.isi_k) * 8
    run = _RunInputs(cfg, name, source, tm, transform, indices, labels, splits, device, t_start, metrics, check,
                     unlabelled, ctx, _fingerprint(cfg, tm, source, indices, splits, metrics, ctx),
                     _resume_command(cfg, ctx), quiet, causal,
                     labels.astype(np.int64) if labelled else np.full(len(indices), -1, dtype=np.int64))
    _main_first(ctx, od.__enter__)
    try:
        _analyze_into(od.tmp, run)
        return od.commit() if ctx.is_main else od.given
    except Interrupted:
        od.keep_checkpoint = True
        raise
    except (KeyboardInterrupt, Terminated) as e:  # after the pass (fits, figures): its checkpoint is complete
        od.keep_checkpoint = True
        if not has_checkpoint(od.tmp):
            raise
        signum = signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT
        raise Interrupted(_interrupted_message(od.tmp, run, signum, "after the pass"), signum) from None
    except VitdepthError:
        # bad input: a checkpoint this command started is not worth keeping; one it was asked to resume is kept
        od.keep_checkpoint = cfg.resume
        raise
    except OSError as e:
        od.keep_checkpoint = True
        if e.errno == errno.ENOSPC:
            err = disk_full_error(e, od.out, od.need_bytes)
            if has_checkpoint(od.tmp):
                err = VitdepthError(f"{err}; the checkpoint is kept: after freeing space, resume with: "
                                    f"{run.resume_command}")
            raise err from None
        raise
    except BaseException:
        od.keep_checkpoint = True  # a crash (or an out-of-memory error) keeps what the pass has saved
        raise
    finally:
        if ctx.is_main:
            od.__exit__(None, None, None)


@dataclass
class _RunInputs:
    """Everything :func:`_analyze_into` needs, settled before the run directory is opened."""

    cfg: AnalyzeConfig
    name: str
    source: Any
    tm: TappedModel
    transform: Any
    indices: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    device: torch.device
    t_start: float
    metrics: frozenset
    check: Any
    unlabelled: frozenset
    ctx: DistContext
    fingerprint: dict
    resume_command: str
    quiet: bool
    causal: CausalLayers | None = None
    causal_labels: np.ndarray | None = None  # labels for the causal metrics (−1 where the data has none)

    @property
    def draft_size(self) -> tuple[int, int] | None:
        """JPEG draft-decoding size for the pass (None: full decode); see :func:`draft_size_for`."""
        return draft_size_for(self.transform) if self.cfg.draft_decode else None


def _interrupted_message(tmp: Path, run: _RunInputs, signum: int, where: str) -> str:
    what = "interrupted (SIGINT)" if signum == signal.SIGINT else "terminated (SIGTERM)"
    return (f"{what} {where}; the checkpoint in {tmp} keeps the work so far (the run directory "
            f"{run.cfg.out} is not written yet); resume with: {run.resume_command}")


#: Images the self-check compares (the first readable ones of the selection): enough for every code path,
#: cheap next to the pass (two extra forwards of this many images).
SELF_CHECK_IMAGES = 4


def _run_self_check(tm, source, indices, transform, device, metrics, cfg, quiet=False):
    """Compare the taps with the model's own computation on the first images, before the pass.

    Tokens that differ stop the run; attention that differs or cannot be verified removes the attention metrics
    (the reason goes to run.json, the console and the report). The check runs in float32 whatever ``--dtype``:
    it verifies the taps, not the autocast arithmetic.
    """
    from ..models.selfcheck import self_check

    batch = next(iter(iterate_batches(source, indices[:4 * SELF_CHECK_IMAGES], transform, SELF_CHECK_IMAGES,
                                      strict=False, num_workers=0)), None)
    if batch is None or len(batch.indices) == 0:
        return None, metrics
    check = self_check(tm, batch.images.to(device, tm.dtype))
    if check.tokens == "failed":
        raise VitdepthError(f"self-check failed for {_describe(cfg.model)}: {check.reason}; vitdepth cannot tap "
                            "this model correctly (please report it; --no-self-check skips the check at your own risk)")
    if not quiet:
        print(check.summary(), file=sys.stderr)
    if check.attention != "verified" and metrics & ATTENTION_IDS:
        dropped = sorted(metrics & ATTENTION_IDS)
        metrics = metrics - ATTENTION_IDS
        check.reason = f"{', '.join(dropped)} not reported: {check.reason}"
        if not quiet:
            print(f"vitdepth: warning: {check.reason}", file=sys.stderr)
    return check, metrics


def _resolve_causal(tm, source, indices, transform, device, metrics, cfg, quiet=False):
    """The head lens and [CLS] interventions of this run (None when none is selected), and the metrics left.

    The model's readout is found and verified on the first images (:func:`vitdepth.models.readout.find_readout`);
    without one the lens and the prediction-based interventions are dropped with the reason (run.json, console).
    An explicit ``--interventions cls`` on a model without [CLS] is refused before the pass.
    """
    from ..models.interventions import block_key
    from ..models.readout import find_readout

    wanted = metrics & (set(LENS_IDS) | INTERVENTION_IDS)
    if not wanted:
        return None, metrics
    if wanted & INTERVENTION_IDS and not tm.has_cls:
        if cfg.interventions:
            raise VitdepthError(f"--interventions cls: {_describe(cfg.model)} has no [CLS] token to intervene on; "
                                "drop --interventions (the head lens still runs)")
        metrics = metrics - INTERVENTION_IDS
    batch = next(iter(iterate_batches(source, indices[:4 * SELF_CHECK_IMAGES], transform, SELF_CHECK_IMAGES,
                                      strict=False, num_workers=0)), None)
    readout = "no image could be read to verify the model's head" if batch is None or not len(batch.indices) \
        else find_readout(tm, batch.images.to(device, tm.dtype))
    causal_notes = []
    if isinstance(readout, str):
        dropped = sorted(metrics & (set(LENS_IDS) | (INTERVENTION_IDS - {KNOCKOUT_PROBE_ID})))
        metrics = metrics - set(dropped)
        causal_notes.append(f"{', '.join(dropped)} not measured: {readout}")
        if not quiet and dropped:
            print(f"vitdepth: warning: {causal_notes[-1]}", file=sys.stderr)
        readout = None
    knockout = metrics & (set(KNOCKOUT_IDS) | {KNOCKOUT_PROBE_ID})
    if knockout and batch is not None and len(batch.indices):
        try:  # a block that does not attend through SDPA cannot be masked: found now, not mid-pass
            with torch.inference_mode(), block_key(tm, key=0, from_block=0, queries=slice(tm.sites.num_prefix, None)):
                tm.output(batch.images.to(device, tm.dtype))
        except VitdepthError as e:
            metrics = metrics - knockout
            causal_notes.append(f"{', '.join(sorted(knockout))} not measured: {e}")
            if not quiet:
                print(f"vitdepth: warning: {causal_notes[-1]}", file=sys.stderr)
    if not metrics & (set(LENS_IDS) | INTERVENTION_IDS):
        return None, metrics
    causal = CausalLayers(tm, metrics, cfg.seed, readout, max_images=cfg.batch_size)
    causal.notes += causal_notes
    return causal, metrics


def _causal_record(causal: CausalLayers | None, loaded: np.ndarray) -> dict | None:
    """run.json's account of the lens and the interventions: the readout, the donors, what was not applicable."""
    if causal is None:
        return None
    chosen = loaded if causal.subset is None else loaded & causal.subset
    return {"intervention_images": int(chosen.sum()) if causal.intervenes else 0,
            "readout": None if causal.readout is None else causal.readout.modules,
            "head_classes": None if causal.readout is None else causal.readout.num_classes,
            "head_reads_cls": causal.head_reads_cls,
            "donors": "per image, the next image of another class in a random cyclic order of its batch (seed, "
                      "batch's first row); the control swaps one random patch position with the same donor",
            "knockout": "patch queries barred from the [CLS] key (−inf score) in blocks ℓ..L−1",
            "notes": list(causal.notes)}


def _stream(state: _Pass, run: _RunInputs, shard_indices: np.ndarray, checkpointer: _Checkpointer,
            stop: _StopOnSignal, progress: Progress) -> None:
    """The pass over a shard from its cursor on: batches, out-of-memory retries, checkpoints, stop requests."""
    cfg, device = run.cfg, run.device
    t0 = time.perf_counter()
    batches = iter(iterate_batches(run.source, shard_indices[state.done:], run.transform, cfg.batch_size,
                                   strict=cfg.strict, num_workers=_auto_workers(cfg),
                                   pin_memory=device.type == "cuda", draft_size=run.draft_size))
    try:
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except Exception:
                if stop.signum is None:  # a DataLoader worker killed by the same Ctrl-C is no error of its own
                    raise
                break
            span = len(batch.indices) + len(batch.skipped)
            rows = np.searchsorted(shard_indices, batch.indices)
            if len(rows):
                images = batch.images.to(device, run.tm.dtype, non_blocking=True)
                _batch_with_retries(state, images, rows, state.done, span, run.quiet)
                state.loaded[rows] = True
            state.skipped += [{"index": int(i), "item": nm, "reason": why} for i, nm, why in batch.skipped]
            state.done += span
            progress.update(span)
            if stop.signum is not None or checkpointer.due():
                state.pass_s += time.perf_counter() - t0
                t0 = time.perf_counter()
                checkpointer.save(state)
            if stop.signum is not None:
                break
    finally:
        state.pass_s += time.perf_counter() - t0
    if stop.signum is not None:
        checkpointer.save(state)
        where = f"at {state.done}/{len(shard_indices)} images" + (
            f" of rank {run.ctx.rank}'s share" if run.ctx.enabled else "")
        raise Interrupted(_interrupted_message(checkpointer.path.parent.parent, run, stop.signum, where), stop.signum)


def _batch_with_retries(state: _Pass, images, rows, first_row, span, quiet) -> None:
    """Run a batch; out of memory, halve the batch and run it in pieces (per-image results do not depend on it)."""
    start = 0
    while start < len(rows):
        size = min(state.micro_batch or len(rows), len(rows))
        piece = slice(start, start + size)
        whole = size == len(rows)
        sub = rows[piece]
        try:
            state.batch(images if whole else images[piece], sub, first_row if whole else int(sub[0]),
                        span if whole else int(sub[-1] - sub[0] + 1))
        except _OOM:
            if size <= 1:
                raise VitdepthError(f"out of memory on {state.device} with a single image; use a smaller "
                                    "--image-size, --dtype bf16, or a device with more memory") from None
            state.micro_batch = size // 2
            if state.device.type == "cuda":
                torch.cuda.empty_cache()
            message = (f"out of memory on {state.device} at batch size {size}; continuing with batches of "
                       f"{state.micro_batch}")
            if message not in state.warnings:
                state.warnings.append(message)
                if not quiet:
                    print(f"vitdepth: warning: {message}", file=sys.stderr)
            continue
        start += size


def _open_pass(tmp: Path, run: _RunInputs, bounds: list[tuple[int, int]]) -> tuple[_Pass, _Checkpointer]:
    """This rank's pass state: fresh, or restored from its checkpoint under ``--resume``."""
    cfg, tm, ctx = run.cfg, run.tm, run.ctx
    lo, hi = bounds[ctx.rank]
    layers = tm.layer_names
    dim = tm.sites.patch_proj.out_channels
    cache_layers = {"mean": layers}
    if tm.has_cls:
        cache_layers["cls"] = layers[1:]
    if run.causal is not None and run.causal.knockout_features:  # final [CLS] per knock-out start layer 0..L
        cache_layers[KNOCKOUT_CACHE] = layers[1:]
    ckpt = checkpoint_file(tmp, ctx.rank)
    cache_dir = tmp / "cache" if ctx.is_main else shard_cache_dir(tmp, ctx.rank)
    # rank 0's cache is the run's (its shard starts at row 0; the other shards are copied in after the pass)
    n_cache = len(run.indices) if ctx.is_main else hi - lo
    resuming = cfg.resume and ckpt.is_file()
    if not ctx.is_main and not resuming:  # a rank's leftovers from an earlier run on this node (no shared disk)
        ckpt.unlink(missing_ok=True)
        shutil.rmtree(cache_dir, ignore_errors=True)
    cache = (FeatureCache.open(cache_dir) if resuming and (cache_dir / "meta.json").is_file()
             else FeatureCache.create(cache_dir, cache_layers, n_cache, dim))
    isi_rec = None
    if run.metrics & ISI_REC_IDS:
        num_tokens = tm.sites.num_prefix + _num_patches(tm)
        isi_rec = {layer: ReconstructionISI(dim, num_tokens, _num_patches(tm), k=cfg.isi_k, k_in=cfg.isi_k_in,
                                            seed=cfg.seed) for layer in layers[1:]}
    state = _Pass(tm, hi - lo, cache, run.metrics, run.splits[lo:hi], isi_rec, run.device,
                  AUTOCAST_DTYPES[cfg.dtype], causal=run.causal, labels=run.causal_labels[lo:hi])
    if cfg.intervention_samples is not None and cfg.intervention_samples < len(run.indices):
        # a seeded subset of the analysis positions (the same on every rank), stratified like --samples
        chosen = np.zeros(len(run.indices), dtype=bool)
        chosen[stratified_subset(run.causal_labels.clip(min=0), cfg.intervention_samples, cfg.seed + 1)] = True
        run.causal.subset, state.intervene = chosen, chosen[lo:hi]
    shard = {"rank": ctx.rank, "lo": lo, "hi": hi}
    checkpointer = _Checkpointer(ckpt, cfg.checkpoint_every, run.fingerprint, shard,
                                 [cache.path(ts) for ts in cache.layers], run.resume_command)
    if resuming:
        meta, arrays = load_checkpoint(ckpt)
        diff = fingerprint_difference(meta.get("fingerprint", {}), run.fingerprint)
        if diff is not None:
            raise VitdepthError(f"--resume refused: {diff}; rerun with the interrupted run's options, or pass "
                                "--overwrite instead of --resume to start over")
        if (meta.get("lo"), meta.get("hi")) != (lo, hi):
            raise VitdepthError(f"--resume refused: the checkpoint of rank {ctx.rank} covers images {meta.get('lo')}"
                                f"..{meta.get('hi')}, this run gives it {lo}..{hi}; use the same options")
        state.restore(meta, arrays)
    return state, checkpointer


def _combine(state: _Pass, run: _RunInputs, bounds: list[tuple[int, int]]) -> None:
    """Bring every rank's shard into rank 0's state (torchrun): sums reduced, per-image arrays and the feature
    cache copied in image order. A no-op in a single process."""
    ctx = run.ctx
    if not ctx.enabled:
        return
    n, n_layers = len(run.indices), len(run.tm.layer_names)
    for layer in sorted(state.isi_rec or {}, key=layer_order):
        isi = state.isi_rec[layer]
        sums = isi.state_dict()  # stored rows become sums: shards add up
        for key in sorted(sums):
            reduce_sum_to_main(ctx, sums[key])
        if ctx.is_main:
            isi.load_state_dict(sums)
    scalars = gather_objects(ctx, {"skipped": state.skipped, "forward_s": state.forward_s, "pass_s": state.pass_s,
                                   "block_end_s": state.block_end_s.tolist(), "warnings": state.warnings})
    if ctx.is_main:
        full = PerImageCurves(list(state.curves.values), n, n_layers)
        finite, loaded = np.ones((n, n_layers), dtype=bool), np.zeros(n, dtype=bool)
        lo0, hi0 = bounds[0]
        for m, v in state.curves.values.items():
            full.values[m][lo0:hi0] = v
        finite[lo0:hi0], loaded[lo0:hi0] = state.finite, state.loaded
        for r in range(1, ctx.world_size):
            lo, hi = bounds[r]
            for m in full.values:
                full.values[m][lo:hi] = recv_array(ctx, (hi - lo, n_layers), np.float64, src=r)
            finite[lo:hi] = recv_array(ctx, (hi - lo, n_layers), np.bool_, src=r)
            loaded[lo:hi] = recv_array(ctx, (hi - lo,), np.bool_, src=r)
            for ts, names in state.cache.layers.items():
                for li in range(len(names)):
                    for start in range(0, hi - lo, CACHE_COPY_ROWS):
                        stop = min(hi - lo, start + CACHE_COPY_ROWS)
                        rows = recv_array(ctx, (stop - start, state.cache.dim), np.float16, src=r)
                        state.cache.write_rows(ts, li, lo + start, rows)
        state.curves, state.finite, state.loaded = full, finite, loaded
        state.skipped = [s for part in scalars for s in part["skipped"]]
        state.forward_s = sum(p["forward_s"] for p in scalars)
        state.block_end_s = np.sum([p["block_end_s"] for p in scalars], axis=0)
        state.pass_s = max(p["pass_s"] for p in scalars)  # the ranks ran side by side
        state.warnings = list(dict.fromkeys(w for p in scalars for w in p["warnings"]))
    else:
        for v in state.curves.values.values():
            send_array(ctx, v)
        send_array(ctx, state.finite)
        send_array(ctx, state.loaded)
        for ts, names in state.cache.layers.items():
            for li in range(len(names)):
                for start in range(0, state.cache.n_items, CACHE_COPY_ROWS):
                    stop = min(state.cache.n_items, start + CACHE_COPY_ROWS)
                    send_array(ctx, state.cache.read_rows(ts, li, start, stop))


#: Rows of the feature cache sent from a rank to rank 0 in one message (16 MiB at width 1024).
CACHE_COPY_ROWS = 8192


def _analyze_into(tmp: Path, inputs: _RunInputs) -> None:
    cfg, tm, ctx, metrics = inputs.cfg, inputs.tm, inputs.ctx, inputs.metrics
    name, source, indices, labels, splits = inputs.name, inputs.source, inputs.indices, inputs.labels, inputs.splits
    device = inputs.device
    n = len(indices)
    layers = tm.layer_names
    dim = tm.sites.patch_proj.out_channels
    bounds = _shard_bounds(n, cfg.batch_size, ctx.world_size)
    lo, hi = bounds[ctx.rank]
    # from here on a stop request ends in a checkpoint and the resume line (after at most one batch)
    with _StopOnSignal() as stop:
        state, checkpointer = _open_pass(tmp, inputs, bounds)
        if not state.pass_complete:
            label = "analyze" if not ctx.enabled else f"analyze (rank 0 of {ctx.world_size})"
            with torch.inference_mode(), Progress(hi - lo, label, quiet=inputs.quiet, initial=state.done) as progress:
                _stream(state, inputs, indices[lo:hi], checkpointer, stop, progress)
            if checkpointer.written or state.pass_s >= cfg.checkpoint_every:  # a long pass: safe for the fits
                checkpointer.save(state, pass_complete=True)
        elif stop.signum is not None:  # a resumed run stopped again before its fits began
            raise Interrupted(_interrupted_message(tmp, inputs, stop.signum, "after the pass"), stop.signum)
    _fault_point("after-pass")
    with torch.inference_mode():
        _combine(state, inputs, bounds)
    if not ctx.is_main:
        return
    loaded, skipped, cache, isi_rec = state.loaded, state.skipped, state.cache, state.isi_rec
    t_pass = max(state.pass_s, 1e-9)
    if not loaded.any():
        raise VitdepthError(f"no image of {_describe(cfg.data)} could be read ({len(skipped)} skipped); check the "
                            "files")
    unlabelled, check = inputs.unlabelled, inputs.check
    if not unlabelled and getattr(source, "labelled", True):
        check_labels(labels[loaded], source.class_names)

    stages = Stages(quiet=inputs.quiet)
    rows_out, post_warnings, isi_info = [], list(state.warnings), None
    _split_rows(splits, loaded)  # every split has images (else a one-line error, before any fit)
    if isi_rec is not None:
        # first, so its statistics (the largest state of the pass) are freed before the probes load features
        isi_info = next(iter(isi_rec.values())).projection_info()
        with stages("isi_rec_s", "isi_rec ridge fits"):
            rows_out += _isi_rec_rows(name, tm, isi_rec, metrics, int(((splits == 2) & loaded).sum()), post_warnings)
        isi_rec = state.isi_rec = None
    correct_store = {ts: np.full((n, len(layers)), np.nan) for ts in _probe_sets(cache)}
    usable = loaded[:, None] & state.finite  # (images, layers): what the probes of each layer may use
    if getattr(source, "labelled", True):
        with stages("probes_s", "ridge probes" + (" and neural collapse" if metrics & COLLAPSE_IDS else "")):
            final_probes: dict = {}
            probe_rows, probe_info = _probe_rows(name, tm, cache, labels, splits, usable, len(source.class_names),
                                                 metrics, correct_store, final_probes)
            rows_out += probe_rows
            if KNOCKOUT_PROBE_ID in metrics and "cls" in final_probes:
                rows_out += _knockout_probe_rows(name, tm, cache, labels, final_probes["cls"])
    else:
        probe_info = {"kind": "not applicable: the data has no labels"}
    if "probe_acc_logistic" in metrics:
        with stages("logistic_s", "logistic probes"):
            rows_out += _logistic_rows(name, tm, cache, labels, splits, usable, probe_info, cfg.seed)
    with stages("bootstrap_s", "bootstrap CIs"):
        rows_out = _per_image_rows(name, tm, state.curves, loaded, cfg) + rows_out
    rows_out.sort(key=lambda r: (r["metric"], r["token_set"], -1 if r["layer"] == "pre" else int(r["layer"])))
    write_layers(rows_out, tmp)
    np.savez_compressed(tmp / "per_image.npz", dataset_index=indices[loaded], label=labels[loaded],
                        split=splits[loaded], layers=np.array(layers),
                        **{m: v[loaded] for m, v in state.curves.state_dict().items()},
                        **{f"probe_correct_{ts}": v[loaded] for ts, v in correct_store.items()})
    with stages("truncation_s", "truncation estimate"):
        try:
            with state.precision():  # latency under the same autocast as the pass
                truncation = _truncation(tm, rows_out, device, cfg, state)
        except Exception as e:  # noqa: BLE001 - an optional estimate must never lose a finished pass
            first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
            truncation = {"error": f"{type(e).__name__}: {first}"}

    warn = list(tm.sites.warnings) + list(getattr(source, "warnings", []))
    if check is not None and check.reason:
        warn.append(f"self-check: {check.reason}")
    if truncation is not None and "error" in truncation:
        warn.append(f"truncation estimate not available: {truncation['error']}")
        truncation = None
    nonfinite = (~state.finite[loaded]).sum(axis=0)
    for layer, count in zip(layers, nonfinite, strict=True):
        if count:
            warn.append(f"layer {layer}: {count} images have NaN/Inf activations (or pooled features beyond the "
                        "fp16 range of the cache); the probes of that layer leave them out")
    warn += post_warnings + probe_info.pop("warnings", [])
    if inputs.causal is not None:
        warn += inputs.causal.notes
    if skipped:
        warn.append(f"{len(skipped)} unreadable images were skipped (listed under data.skipped)")
    not_applicable = sorted(unlabelled)
    if unlabelled:
        warn.append(f"the data has no labels: {', '.join(sorted(unlabelled))} are not applicable (no rows)")
    if not tm.has_cls:
        no_cls = sorted(m for m in metrics if METRICS[m].requires_cls)
        not_applicable += no_cls
        warn.append(f"the model has no [CLS] token: {', '.join(no_cls) or 'no selected metric'} and the "
                    "cls token set are not applicable (no rows)")
    counts = {s: int(((splits == i) & loaded).sum()) for i, s in enumerate(SPLITS)}
    run = {
        "vitdepth_version": __version__,
        "command": "analyze",
        "config": _config_record(cfg),
        "model": {"name": name, **tm.identity, "layers": layers, "embed_dim": dim,
                  "preprocess": tm.preprocess.to_dict(), "dtype": str(tm.dtype), "device": str(device),
                  "block_layout": sorted(set(tm.sites.layouts)),
                  "attention_source": sorted(set(tm.sites.attention_source)),
                  "transform": _transform_record(inputs.transform, cfg)},
        "data": {**source.identity(), "analyzed": int(loaded.sum()), "selected": n, "splits": counts,
                 "split_fractions": list(cfg.split_fractions), "skipped": skipped,
                 "draft_decode": list(inputs.draft_size) if inputs.draft_size else None},
        "metrics": {"selected": sorted(metrics), "spec": cfg.metrics or "default", "not_applicable": not_applicable,
                    "formulas": {m: METRICS[m].formula for m in sorted(metrics)},
                    "isi_rec": isi_info},
        "probe": probe_info,
        "seed": cfg.seed,
        "versions": _versions(),
        "timings": {"pass_s": t_pass, "images_per_s": float(loaded.sum()) / t_pass, **stages.seconds},
        "truncation": truncation,
        "self_check": None if check is None else check.to_dict(),
        "causal": _causal_record(inputs.causal, loaded),
        "warnings": warn,
    }
    (tmp / "run.json").write_text(json.dumps(run, indent=2, default=_json_default))
    with stages("phases_s", "phase fits"):
        phases = build_phases(tmp, n_boot=cfg.n_boot_phases)
    if cfg.cka_samples:
        from ..align import write_self_alignment

        with stages("cka_self_s", "layer x layer CKA"):  # the block structure of the Plateau (reads the cache)
            write_self_alignment(tmp, token_set="mean", samples=cfg.cka_samples, n_boot=cfg.n_boot_phases,
                                 seed=cfg.seed, figures=cfg.figures, formats=cfg.figure_formats)
    if cfg.figures:
        from ..report.figures import write_run_figures

        with stages("figures_s", "figures"):
            write_run_figures(tmp, rows=rows_out, model=name, phases=phases, formats=cfg.figure_formats)
    if cfg.figures and cfg.report:
        from ..report.html import write_run_report

        with stages("report_s", "report"):
            write_run_report(tmp)  # reads run.json as written above; timings are completed below
    run["timings"].update(stages.seconds)
    run["timings"]["total_s"] = time.perf_counter() - inputs.t_start
    (tmp / "run.json").write_text(json.dumps(run, indent=2, default=_json_default))


def _transform_record(transform, cfg) -> dict:
    """What preprocessing ran: the library's own transform, or timm's eval transform of the model's config."""
    own = transform.to_dict() if hasattr(transform, "to_dict") else {"kind": type(transform).__name__}
    return {**own, "overrides": list(cfg.preprocess), "image_size": cfg.image_size}


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (tuple, set, np.ndarray)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _row(model, layer, depth, metric, token_set, value, lo, hi, n) -> dict:
    return {"model": model, "layer": layer, "depth": layer_depth(layer, depth), "metric": metric,
            "token_set": token_set, "value": float(value), "ci_low": float(lo), "ci_high": float(hi), "n": int(n)}


def _per_image_rows(name, tm, curves, loaded, cfg) -> list[dict]:
    # every applicable (metric, layer) column in one bootstrap call: one multinomial draw serves them all
    # (a column's CI depends only on its values and the seed, so this equals one call per metric)
    cols, keys = [], []
    for metric, values in curves.state_dict().items():
        v = values[loaded]
        for pos in np.flatnonzero(~np.all(np.isnan(v), axis=0)):
            cols.append(v[:, pos])
            keys.append((metric, pos))
    if not cols:
        return []
    matrix = np.stack(cols, axis=1)
    mean, lo, hi = bootstrap_mean_ci(matrix, n_boot=cfg.n_boot, seed=cfg.seed)
    counts = (~np.isnan(matrix)).sum(axis=0)
    return [_row(name, tm.layer_names[pos], tm.depth, metric, "", mean[j], lo[j], hi[j], counts[j])
            for j, (metric, pos) in enumerate(keys)]


def _truncation(tm, rows, device, cfg, state: _Pass) -> dict | None:
    """FLOPs and measured latency of the model cut after the saturation block of the mean probe, vs the full model.

    FLOPs: one image through the full and the cut model under ``FlopCounterMode``. Latency on the CPU: the
    pass itself, whose forward times with the sink taken out give the time to the end of every block and of
    the whole forward over all analyzed images (no extra forwards). On an asynchronous device (CUDA) host
    timestamps inside hooks mean nothing, so a few extra synchronised forwards of a small batch are timed.
    """
    from torch.utils.flop_counter import FlopCounterMode

    curve = sorted((r for r in rows if r["metric"] == "probe_acc" and r["token_set"] == "mean"),
                   key=lambda r: layer_order(r["layer"]))
    if not curve:
        return None
    x = np.array([layer_order(r["layer"]) for r in curve], dtype=float)
    sat = saturation_layer(x, np.array([r["value"] for r in curve]), 0.99)
    blocks = int(min(max(1, round(sat["layer_x"])), tm.depth))
    h, w = tm.preprocess.input_size
    one = torch.zeros(1, 3, h, w, device=device, dtype=tm.dtype)
    with torch.inference_mode():
        with FlopCounterMode(display=False) as full:
            tm.output(one)
        with FlopCounterMode(display=False) as cut:
            tm.output_until(one, blocks)
        if device.type == "cpu" and state.forward_s > 0:
            t_full, t_cut = state.forward_s, float(state.block_end_s[blocks - 1])
            latency = {"latency_source": "the analysis pass (model forward with the taps' sink time taken out)"}
        else:
            batch = one.expand(min(cfg.batch_size, 8), -1, -1, -1).contiguous()

            def sync():
                if device.type == "cuda":
                    torch.cuda.synchronize(device)

            def median_time(fn, repeats=3):
                times = []
                for _ in range(repeats):
                    sync()
                    t0 = time.perf_counter()
                    fn()
                    sync()
                    times.append(time.perf_counter() - t0)
                return float(np.median(times))

            tm.output(batch)  # warm-up
            t_full = median_time(lambda: tm.output(batch))
            t_cut = median_time(lambda: tm.output_until(batch, blocks))
            latency = {"latency_source": f"median of 3 synchronised forwards of a batch of {batch.shape[0]}"}
    return {"layer": str(blocks), "blocks_kept": blocks, "depth": tm.depth,
            "flops_full": int(full.get_total_flops()), "flops_cut": int(cut.get_total_flops()),
            "flops_fraction_saved": 1 - cut.get_total_flops() / max(1, full.get_total_flops()),
            "latency_full_s": t_full, "latency_cut_s": t_cut, **latency,
            "latency_fraction_saved": 1 - t_cut / t_full if t_full > 0 else float("nan")}


def _split_rows(splits, loaded) -> dict[str, np.ndarray]:
    rows = {s: np.flatnonzero((splits == i) & loaded) for i, s in enumerate(SPLITS)}
    if len(rows["val"]) == 0 or len(rows["test"]) == 0:
        raise VitdepthError("the validation or test split is empty; use more images (--samples) so every split "
                            "has at least one image")
    return rows


def _usable_split_rows(splits, usable, what, info) -> dict[str, np.ndarray] | None:
    """Rows of each split where ``usable`` (one flag per image); None (and a warning) when a split has none."""
    rows = {s: np.flatnonzero((splits == i) & usable) for i, s in enumerate(SPLITS)}
    if all(len(r) for r in rows.values()):
        return rows
    info.setdefault("warnings", []).append(f"{what}: no finite features left in some split "
                                           f"({', '.join(f'{s} {len(r)}' for s, r in rows.items())}); not computed")
    return None


def _probe_sets(cache: FeatureCache) -> dict[str, list[str]]:
    """The token sets of the cache that get probes (the knock-out features are evaluated, not probed)."""
    return {ts: names for ts, names in cache.layers.items() if ts != KNOCKOUT_CACHE}


def _probe_rows(name, tm, cache, labels, splits, usable, n_classes, metrics, correct_store,
                final_probes: dict | None = None) -> tuple[list[dict], dict]:
    """Ridge probes for every layer and token set, and neural collapse on the test split (uses the probe).

    ``final_probes`` (when given) receives, per token set, the last layer's probe and its test rows.
    """
    rows, info = [], {"kind": "ridge", "standardize": True, "alpha": {}, "val_accuracy": {},
                      "nc_convention": "test split; centred by the mean of the class means; Σ_W pooled over samples "
                                       "(1/N); NC3 and NC4 use the ridge probe"}
    classes = np.arange(n_classes)
    want_nc = sorted(m for m in metrics if METRICS[m].family == "collapse")
    for ts, layer_names in _probe_sets(cache).items():
        for li, layer in enumerate(layer_names):
            position = tm.layer_names.index(layer)
            split_rows = _usable_split_rows(splits, usable[:, position], f"probes of {ts}/{layer}", info)
            if split_rows is None:
                continue

            def chunks(split, li=li, ts=ts, split_rows=split_rows):
                r = split_rows[split]
                return ((x, labels[r[i:i + len(x)]]) for i, x in _enumerate_chunks(cache.read(ts, li, r)))

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                probe = select_ridge_probe(chunks("train"), chunks("val"), classes)
            correct = total = 0
            stats = CollapseStats.empty(n_classes, cache.dim)
            for x, y in chunks("test"):
                hit = probe.predict(x) == y
                # per-image correctness: what the phase fit resamples for probe-curve breakpoint CIs
                correct_store[ts][split_rows["test"][total:total + len(y)], position] = hit
                correct += int(hit.sum())
                total += len(y)
                if want_nc:
                    stats = collapse_merge(stats, collapse_update(x, y, n_classes))
            if final_probes is not None and layer == layer_names[-1]:
                final_probes[ts] = (probe, split_rows["test"])
            info["alpha"][f"{ts}/{layer}"] = probe.alpha
            info["val_accuracy"][f"{ts}/{layer}"] = float(max(probe.val_scores.values()))
            if "probe_acc" in metrics:
                lo, hi = wilson_interval(correct, total)
                rows.append(_row(name, layer, tm.depth, "probe_acc", ts, correct / total, lo, hi, total))
            if want_nc:
                nc = collapse_compute(stats, probe.coef)
                means = stats.class_means()
                disagree = n_nc4 = 0
                for x, _ in chunks("test"):
                    d, m = nc4_disagreement(x, means, probe.predict(x))
                    disagree, n_nc4 = disagree + d, n_nc4 + m
                nc["nc4"] = disagree / n_nc4
                for metric in want_nc:
                    rows.append(_row(name, layer, tm.depth, metric, ts, nc[metric], np.nan, np.nan, total))
    return rows, info


def _knockout_probe_rows(name, tm, cache, labels, final_probe) -> list[dict]:
    """``cls_knockout_probe_acc``: the clean final-layer [CLS] probe on the knocked-out final [CLS] features."""
    probe, test_rows = final_probe
    rows = []
    for li, layer in enumerate(cache.layers[KNOCKOUT_CACHE]):
        correct = total = 0
        for i, x in _enumerate_chunks(cache.read(KNOCKOUT_CACHE, li, test_rows)):
            y = labels[test_rows[i:i + len(x)]]
            ok = np.isfinite(x).all(axis=1)
            correct += int((probe.predict(x[ok]) == y[ok]).sum()) if ok.any() else 0
            total += int(ok.sum())
        if total:
            lo, hi = wilson_interval(correct, total)
            rows.append(_row(name, layer, tm.depth, KNOCKOUT_PROBE_ID, "cls", correct / total, lo, hi, total))
    return rows


#: Bound on the float32 features (train + val + test, and the standardised train copy) the logistic probes hold
#: at once: heads are trained in groups under it (independent problems, so the grouping changes no result).
LOGISTIC_FEATURE_BYTES = 256 * 2**20


def _logistic_rows(name, tm, cache, labels, splits, usable, info, seed) -> list[dict]:
    """Softmax-regression probes for every layer and token set, many heads per optimiser run.

    The features of a group of heads are read from the cache into memory (L-BFGS needs every train
    sample at every step); groups are sized so that at most :data:`LOGISTIC_FEATURE_BYTES` are held.
    """
    from ..metrics.logistic import fit_logistic_probes

    # one stacked problem: every head sees the same images, those usable at every layer
    split_rows = _usable_split_rows(splits, usable.all(axis=1), "logistic probes", info)
    if split_rows is None:
        return []
    heads = [(ts, li, layer) for ts, names in _probe_sets(cache).items() for li, layer in enumerate(names)]
    per_head = 4 * cache.dim * (2 * len(split_rows["train"]) + len(split_rows["val"]) + len(split_rows["test"]))
    group = max(1, LOGISTIC_FEATURE_BYTES // per_head)

    def stacked(part, split):
        r = split_rows[split]
        return torch.from_numpy(np.stack([np.concatenate(list(cache.read(ts, li, r))) for ts, li, _ in part]))

    y_test = labels[split_rows["test"]]
    rows = []
    info["logistic_weight_decay"] = {}
    for start in range(0, len(heads), group):
        part = heads[start:start + group]
        probes = fit_logistic_probes(stacked(part, "train"), torch.from_numpy(labels[split_rows["train"]]),
                                     stacked(part, "val"), torch.from_numpy(labels[split_rows["val"]]), seed=seed)
        pred = np.asarray(probes.predict(stacked(part, "test")))
        for k, (ts, _, layer) in enumerate(part):
            correct = int((pred[k] == y_test).sum())
            lo, hi = wilson_interval(correct, len(y_test))
            rows.append(_row(name, layer, tm.depth, "probe_acc_logistic", ts, correct / len(y_test), lo, hi,
                             len(y_test)))
            info["logistic_weight_decay"][f"{ts}/{layer}"] = float(probes.weight_decay_[k])
    return rows


def _isi_rec_rows(name, tm, isi_rec, metrics, n_test, warn: list[str]) -> list[dict]:
    """The isi_rec rows of every layer, fitted on all cores.

    Each layer's fit is independent and mostly LAPACK (``eigh`` of a float64 Gram), which runs on one core and
    releases the GIL, so a thread per core fits layers side by side (1.8x on 2 cores; the same numbers, since
    every fit is deterministic and reads only its own statistics). A layer's statistics are freed once its fit is
    done.
    """
    from concurrent.futures import ThreadPoolExecutor

    layers = list(isi_rec)
    finite = [layer for layer in layers if isi_rec[layer].all_finite()]
    for layer in layers:
        if layer not in finite:
            isi_rec.pop(layer)
            warn.append(f"isi_rec of layer {layer}: its statistics hold NaN/Inf activations; not computed")

    def fit(layer):
        return isi_rec.pop(layer).compute()

    workers = max(1, min(len(finite), os.cpu_count() or 1, 8))
    with ThreadPoolExecutor(workers, thread_name_prefix="vitdepth-isi-rec") as pool:
        fitted = dict(zip(finite, pool.map(fit, finite), strict=True))
    rows = []
    for layer in finite:
        for metric in ("isi_rec", "r2_self", "r2_all"):
            if metric in metrics:
                rows.append(_row(name, layer, tm.depth, metric, "", fitted[layer][metric], np.nan, np.nan, n_test))
    return rows


def _num_patches(tm) -> int:
    h, w = tm.sites.grid  # as the model itself produced it (a hybrid's grid is its backbone's output)
    return h * w


def _enumerate_chunks(it):
    start = 0
    for x in it:
        yield start, x
        start += len(x)


def summarize(run_dir: str | Path) -> str:
    """A one-screen summary table of a run directory (reads only the saved results)."""
    from ..report.summary import summary_table

    return summary_table(run_dir)


__all__ = ["AnalyzeConfig", "analyze", "summarize"]
