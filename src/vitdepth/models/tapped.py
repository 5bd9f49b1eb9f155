"""TappedModel: a wrapped model plus the sites to tap it, with one API for every adapter."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .._errors import VitdepthError
from ..data.transforms import PreprocessConfig
from .structure import probe_sites
from .taps import LayerTaps, SiteMap, tap


@dataclass
class Reference:
    """What the model itself reports for a batch, to check the taps against (see :mod:`vitdepth.models.selfcheck`).

    Attributes:
        hidden_states: layer id (``"0"``..``str(L)``) → tokens (B, T, d), the layers the library exposes; None
            where it exposes none.
        attentions: per block, the probabilities of the library's own eager attention (B, H, T, T), or None.
        source: how they were obtained, in words.
    """

    hidden_states: dict[str, torch.Tensor] | None
    attentions: list[torch.Tensor] | None
    source: str


class StopForward(Exception):
    """Raised by a hook to end a forward early (never escapes :meth:`TappedModel.output_until`)."""


@dataclass
class TappedModel:
    """A vision transformer ready for layer-by-layer analysis.

    The adapter *wraps* the model and never re-implements it: ``output`` runs the model's own
    forward; taps come from hooks on the sites in ``sites``.

    Attributes:
        spec: the spec it was created from (``timm:vit_small_patch16_224``).
        adapter: registered adapter name.
        model: the underlying ``nn.Module`` (eval mode).
        sites: canonical sites found by structure.
        preprocess: the model's own input preprocessing.
        prefix_names: names of the prefix tokens in order (``("cls", "reg0", …)``).
        has_cls: whether prefix token 0 is a [CLS] token.
        identity: JSON-ready description (class, parameter count, weights source and hash).
        forward_fn: maps an image batch to the model's output tensor (logits or features).
        reference_fn: the model's own hidden states and eager attention for a batch (self-check), where the
            library offers them.
        transform: the library's own image transform (PIL → tensor) where the adapter has one (a Hugging Face
            image processor, torchvision weights' transforms); None means ``build_transform(preprocess)``.

    Creating one runs the model once on a random image (:func:`~vitdepth.models.structure.probe_sites`) to
    settle the block layout and the prefix count; a prefix whose names do not match that count is renamed
    generically and not treated as [CLS].
    """

    spec: str
    adapter: str
    model: nn.Module
    sites: SiteMap
    preprocess: PreprocessConfig
    prefix_names: tuple[str, ...]
    has_cls: bool
    forward_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    identity: dict = field(default_factory=dict)
    reference_fn: Callable[[nn.Module, torch.Tensor], Reference] | None = None
    transform: Callable | None = None

    def __post_init__(self) -> None:
        if not self.sites.layouts:
            # eval for the probe: a training-mode BatchNorm (hybrid stems) would update its statistics
            was_training = self.model.training
            self.model.eval()
            try:
                probe_sites(self.sites, lambda x: self.forward_fn(self.model, x), self.preprocess.input_size,
                            self.device, self.dtype)
            finally:
                self.model.train(was_training)
        n = self.sites.num_prefix
        if len(self.prefix_names) != n:
            self.sites.warnings.append(
                f"the adapter named prefix tokens {list(self.prefix_names)} but block 0 has {n}: they are named "
                "prefix0.. and none is treated as [CLS]")
            self.prefix_names = tuple(f"prefix{i}" for i in range(n))
            self.has_cls = False

    @property
    def depth(self) -> int:
        """Number of transformer blocks L."""
        return len(self.sites.blocks)

    @property
    def layer_names(self) -> list[str]:
        """``["pre", "0", "1", …, str(L)]``."""
        return ["pre"] + [str(i) for i in range(self.depth + 1)]

    @property
    def num_heads(self) -> int:
        """Attention heads per block (of block 0)."""
        return self.sites.num_heads

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the model's parameters."""
        return next(self.model.parameters()).dtype

    def reference(self, images: torch.Tensor) -> Reference | None:
        """The model's own hidden states and eager attention for ``images``; None where the adapter has none."""
        return None if self.reference_fn is None else self.reference_fn(self.model, images)

    def to(self, device: str | torch.device) -> TappedModel:
        """Move the model (in place) and return self."""
        self.model.to(device)
        return self

    def output(self, images: torch.Tensor) -> torch.Tensor:
        """The model's own output, no taps attached."""
        return self.forward_fn(self.model, images)

    def run(self, images: torch.Tensor, sink: Callable[[LayerTaps], None], attention: bool = True,
            timings: dict | None = None, keep_calls: bool = False) -> torch.Tensor:
        """One forward with taps; ``sink`` gets each layer as soon as it has run.

        Args:
            images: input batch.
            sink: called with each layer's :class:`LayerTaps`, in order.
            attention: capture queries and keys (``LayerTaps.qk``).
            keep_calls: keep each block's attention kernel call (``LayerTaps.call``), for the self-check.
            timings: if given, filled with the forward's own wall time, the sink's time taken out:
                ``forward_s`` (whole forward) and ``block_end_s`` (time from the start to the end of
                each block, one per block). Host clock: meaningful where the device runs synchronously (CPU).

        Returns:
            the model's output, identical to :meth:`output` (hooks never modify values).
        """
        if timings is None:
            run_sink = sink
        else:
            # The sink of a block runs in that block's forward hook, right after the block's own compute, so
            # its entry time (less the time spent in earlier sinks) is when the model alone would have got there.
            block_end: list[float] = []
            clock = {"excluded": 0.0}

            def run_sink(t: LayerTaps) -> None:
                entered = time.perf_counter()
                if t.is_block:
                    block_end.append(entered - clock["excluded"] - start)
                try:
                    sink(t)
                finally:
                    clock["excluded"] += time.perf_counter() - entered

            start = time.perf_counter()
        with tap(self.sites, run_sink, attention=attention, keep_calls=keep_calls) as state:
            out = self.forward_fn(self.model, images)
        if timings is not None:
            timings["forward_s"] = time.perf_counter() - start - clock["excluded"]
            timings["block_end_s"] = block_end
        if state["blocks_seen"] != self.depth:
            raise VitdepthError(f"only {state['blocks_seen']} of {self.depth} blocks fired during the forward of "
                                f"{self.spec}; the model skips blocks the adapter found (early exit?)")
        return out

    def output_until(self, images: torch.Tensor, blocks: int) -> None:
        """Run the model only up to the output of block ``blocks`` (1..L), as if truncated there.

        A forward hook on that block raises :class:`StopForward`, so later blocks and the head never run
        (timm's ``stop_early`` idea, for any model). Used to measure what truncation saves.
        """
        if not 1 <= blocks <= self.depth:
            raise ValueError(f"blocks must be in 1..{self.depth}, got {blocks}")

        def stop(_mod, _args, _out):
            raise StopForward

        handle = self.sites.blocks[blocks - 1].register_forward_hook(stop)
        try:
            self.forward_fn(self.model, images)
        except StopForward:
            pass
        finally:
            handle.remove()

    def capture(self, images: torch.Tensor, attention: bool = True,
                keep_calls: bool = False) -> tuple[torch.Tensor, list[LayerTaps]]:
        """Run once and keep every layer's taps (for tests and small batches; the pass streams instead)."""
        layers: list[LayerTaps] = []
        out = self.run(images, layers.append, attention=attention, keep_calls=keep_calls)
        return out, layers
