"""TappedModel: a wrapped model plus the sites to tap it, with one API for every adapter."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .._errors import VitdepthError
from ..data.transforms import PreprocessConfig
from .taps import LayerTaps, SiteMap, tap


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
        return self.sites.qk[0].num_heads

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the model's parameters."""
        return next(self.model.parameters()).dtype

    def to(self, device: str | torch.device) -> TappedModel:
        """Move the model (in place) and return self."""
        self.model.to(device)
        return self

    def output(self, images: torch.Tensor) -> torch.Tensor:
        """The model's own output, no taps attached."""
        return self.forward_fn(self.model, images)

    def run(self, images: torch.Tensor, sink: Callable[[LayerTaps], None], attention: bool = True,
            timings: dict | None = None) -> torch.Tensor:
        """One forward with taps; ``sink`` gets each layer as soon as it has run.

        Args:
            images: input batch.
            sink: called with each layer's :class:`LayerTaps`, in order.
            attention: capture queries and keys (``LayerTaps.qk``).
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
        with tap(self.sites, run_sink, attention=attention) as state:
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

    def capture(self, images: torch.Tensor, attention: bool = True) -> tuple[torch.Tensor, list[LayerTaps]]:
        """Run once and keep every layer's taps (for tests and small batches; the pass streams instead)."""
        layers: list[LayerTaps] = []
        out = self.run(images, layers.append, attention=attention)
        return out, layers
