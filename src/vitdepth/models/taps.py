"""The uniform tap record every adapter yields, and the hook machinery that fills it.

Layer indexing follows design §3: ``pre`` is the patch projection's output before
positional encoding (patch tokens only), ``0`` is the input of block 0 (prefix tokens and
patches, with position embedding), ``1..L`` are the outputs of the transformer blocks.
For each block the taps also hold ``x_in`` (block input), ``x_mid`` (residual stream after
the attention sub-layer) and ``attn`` (softmax attention probabilities, B×H×T×T).

Attention probabilities are *recomputed* from the queries and keys the model itself
produced (captured by forward hooks), so the model keeps its fused / SDPA fast path and its
outputs are untouched; hooks never return a value, so they cannot change the computation.
The hooks only keep references: the probabilities are materialised by whoever reads them,
either whole (:attr:`LayerTaps.attn`) or a few images at a time (:meth:`QueryKey.row_chunks`
with :meth:`QueryKey.scores`). The chunked form is what the streaming pass uses: a
(c, H, T, T) block of a few images stays in the CPU cache between the softmax and the metrics
that read it (ViT-S/16 at 224 px, batch 32: the softmax alone takes 13 ms per block in chunks of
4 images, 34 ms as one B x H x T x T tensor).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from .._errors import VitdepthError

#: Elements of one chunk of attention scores (c x H x T x T float32, 2 MiB): small enough to stay in
#: the CPU cache while the softmax and the metrics read it, large enough that per-chunk overhead is noise.
CHUNK_ELEMENTS = 1 << 19


@dataclass(frozen=True)
class QueryKey:
    """A block's queries and keys, (B, H, T, hd) each, and its softmax scale.

    Attention probabilities are ``softmax(q kᵀ · scale)`` over keys; this record materialises them
    only when asked, whole or for a slice of the batch.
    """

    q: torch.Tensor
    k: torch.Tensor
    scale: float

    def scores(self, rows: slice = slice(None)) -> torch.Tensor:
        """Scaled attention logits ``q kᵀ · scale`` of the images ``rows``, (b, H, T, T), at least float32."""
        dtype = torch.promote_types(self.q.dtype, torch.float32)
        q, k = self.q[rows].to(dtype), self.k[rows].to(dtype)
        return torch.matmul(q * self.scale, k.transpose(-2, -1))

    def probs(self, rows: slice = slice(None)) -> torch.Tensor:
        """Attention probabilities of the images ``rows``, (b, H, T, T)."""
        return self.scores(rows).softmax(dim=-1)

    def row_chunks(self, max_elements: int = CHUNK_ELEMENTS) -> Iterator[slice]:
        """Slices of the batch whose score blocks hold at most ``max_elements`` (at least one image each)."""
        b, h, t, _ = self.q.shape
        step = max(1, max_elements // max(1, h * t * t))
        for start in range(0, b, step):
            yield slice(start, min(start + step, b))


@dataclass
class LayerTaps:
    """What one layer exposes for one batch.

    Attributes:
        layer: layer id, ``"pre"``, ``"0"``, ``"1"`` … ``str(L)``.
        position: index into the layer list (``pre`` → 0, layer ℓ → ℓ + 1).
        tokens: residual stream (B, T, d); for ``pre`` the patch tokens only.
        num_prefix: number of prefix (non-patch) tokens at the front of ``tokens``.
        x_in: block input (B, T, d), blocks only.
        x_mid: residual stream after the attention sub-layer (B, T, d), blocks only.
        qk: the block's queries and keys, blocks only and when attention was requested; see :attr:`attn`.
        grid: patch grid (h, w) of this forward.
    """

    layer: str
    position: int
    tokens: torch.Tensor
    num_prefix: int
    x_in: torch.Tensor | None = None
    x_mid: torch.Tensor | None = None
    qk: QueryKey | None = None
    grid: tuple[int, int] | None = None

    @functools.cached_property
    def attn(self) -> torch.Tensor | None:
        """Attention probabilities (B, H, T, T), computed on first access; None where there is no attention."""
        return None if self.qk is None else self.qk.probs()

    @property
    def patches(self) -> torch.Tensor:
        """Patch tokens (B, P, d)."""
        return self.tokens[:, self.num_prefix :]

    @property
    def prefix(self) -> torch.Tensor:
        """Prefix tokens (B, num_prefix, d): CLS first when the model has one."""
        return self.tokens[:, : self.num_prefix]

    @property
    def is_block(self) -> bool:
        """True for the outputs of transformer blocks (layers 1..L)."""
        return self.x_in is not None


@dataclass
class QKSite:
    """Where a block's queries and keys can be read.

    ``layout="heads"``: the modules output (B, H, T, hd) (timm: ``q_norm`` / ``k_norm``, called on
    every forward even when they are identities). ``layout="flat"``: the modules output
    (B, T, H·hd) (Hugging Face ``q_proj`` / ``k_proj``).
    """

    q: nn.Module
    k: nn.Module
    layout: str
    num_heads: int
    scale: float


@dataclass
class SiteMap:
    """The canonical sites of a ViT-like model, found once by the adapter."""

    patch_proj: nn.Module
    blocks: list[nn.Module]
    mid_norms: list[nn.Module]
    qk: list[QKSite]
    warnings: list[str] = field(default_factory=list)


def attention_probs(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q kᵀ · scale) over keys, computed in at least float32.

    Args:
        q: queries (B, H, T, hd).
        k: keys (B, H, T, hd).
        scale: the model's softmax scale (usually hd^-0.5).
    """
    return QueryKey(q, k, scale).probs()


def _first_tensor(x):
    return x[0] if isinstance(x, (tuple, list)) else x


def _heads(t: torch.Tensor, site: QKSite) -> torch.Tensor:
    if site.layout == "heads":
        return t
    b, n, c = t.shape
    return t.reshape(b, n, site.num_heads, c // site.num_heads).transpose(1, 2)


@contextmanager
def tap(sites: SiteMap, sink: Callable[[LayerTaps], None], attention: bool = True) -> Iterator[dict]:
    """Attach the hooks for one or more forwards; every handle is removed on exit.

    The sink receives each layer's :class:`LayerTaps` as soon as the layer has run, so only one
    layer's activations are alive at a time (bounded memory, design §7).

    Yields:
        a dict with ``grid`` ((h, w) of the last forward) and ``blocks_seen`` (count of the last
        forward), which callers use to check every site fired.
    """
    state: dict = {"grid": None, "blocks_seen": 0, "num_prefix": None}
    scratch: dict[int, dict[str, torch.Tensor]] = {}
    handles = []

    def on_patches(_mod, _args, out):
        out = _first_tensor(out).detach()
        state["grid"] = (int(out.shape[-2]), int(out.shape[-1]))
        state["blocks_seen"] = 0
        sink(LayerTaps("pre", 0, out.flatten(2).transpose(1, 2), 0, grid=state["grid"]))

    def on_block_in(i):
        def hook(_mod, args, kwargs):
            x = (args[0] if args else kwargs["hidden_states"]).detach()
            scratch[i] = {"x_in": x}
            if i == 0:
                grid = state["grid"]
                if grid is None:
                    raise VitdepthError("the patch projection did not run before block 0; this model layout is not "
                                        "supported by the structural adapter")
                state["num_prefix"] = x.shape[1] - grid[0] * grid[1]
                sink(LayerTaps("0", 1, x, state["num_prefix"], grid=grid))

        return hook

    def on_qk(i, key):
        def hook(_mod, _args, out):
            scratch.setdefault(i, {})[key] = _first_tensor(out).detach()

        return hook

    def on_mid(i):
        def hook(_mod, args):
            scratch[i]["x_mid"] = args[0].detach()

        return hook

    def on_block_out(i):
        def hook(_mod, _args, out):
            s = scratch.pop(i)
            qk = None
            if attention:
                site = sites.qk[i]
                qk = QueryKey(_heads(s["q"], site), _heads(s["k"], site), site.scale)
            state["blocks_seen"] += 1
            sink(LayerTaps(str(i + 1), i + 2, _first_tensor(out).detach(), state["num_prefix"],
                           x_in=s["x_in"], x_mid=s["x_mid"], qk=qk, grid=state["grid"]))

        return hook

    try:
        handles.append(sites.patch_proj.register_forward_hook(on_patches))
        for i, block in enumerate(sites.blocks):
            handles.append(block.register_forward_pre_hook(on_block_in(i), with_kwargs=True))
            handles.append(sites.mid_norms[i].register_forward_pre_hook(on_mid(i)))
            if attention:
                handles.append(sites.qk[i].q.register_forward_hook(on_qk(i, "q")))
                handles.append(sites.qk[i].k.register_forward_hook(on_qk(i, "k")))
            handles.append(block.register_forward_hook(on_block_out(i)))
        yield state
    finally:
        for h in handles:
            h.remove()
