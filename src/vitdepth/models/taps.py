"""The uniform tap record every adapter yields, and the hook machinery that fills it.

Layer indexing follows design §3: ``pre`` is the patch projection's output before
positional encoding (patch tokens only), ``0`` is the input of block 0 (prefix tokens and
patches, with position embedding), ``1..L`` are the outputs of the transformer blocks.
For each block the taps also hold ``x_in`` (block input), ``x_mid`` (residual stream after
the attention sub-layer) and ``attn`` (softmax attention probabilities, B×H×T×T).

Attention probabilities are *recomputed* from what the model itself fed its attention kernel,
so the model keeps its fused fast path and its outputs are untouched (hooks never return a
value). Where the model calls ``torch.nn.functional.scaled_dot_product_attention`` (timm and
Hugging Face ViTs alike), the call is intercepted for the duration of :func:`tap`: its queries
and keys come *after* any rotary embedding (EVA-02, DINOv3, RoPE ViTs), its ``attn_mask`` carries
any relative-position bias (BEiT, Data2Vec, timm relpos), grouped key heads are expanded as SDPA
does, and the scale is the one the kernel used. So every term the model adds is in the scores by
construction. Blocks whose attention does not go through SDPA (an eager timm module, torch's
``nn.MultiheadAttention`` fast path) are read from their query / key projections instead; that is
exact only where nothing is added between the projection and the softmax, which
:mod:`vitdepth.models.selfcheck` verifies against the model's own eager attention at run time.

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
import torch.nn.functional as F
from torch import nn

from .._errors import VitdepthError

#: Elements of one chunk of attention scores (c x H x T x T float32, 2 MiB): small enough to stay in
#: the CPU cache while the softmax and the metrics read it, large enough that per-chunk overhead is noise.
CHUNK_ELEMENTS = 1 << 19


@dataclass(frozen=True)
class QueryKey:
    """A block's queries and keys, (B, H, T, hd) each, its softmax scale and any additive bias.

    Attention probabilities are ``softmax(q kᵀ · scale + bias)`` over keys; this record materialises them
    only when asked, whole or for a slice of the batch.

    Attributes:
        q: queries (B, H, T, hd), as the attention kernel received them (after rotary embeddings).
        k: keys (B, H, T, hd), grouped heads already expanded to H.
        scale: the softmax scale.
        bias: additive score term broadcastable to (B, H, T, T) (relative-position bias, masks with
            ``-inf``), batch dimension 1 or B; None when the model adds nothing.
    """

    q: torch.Tensor
    k: torch.Tensor
    scale: float
    bias: torch.Tensor | None = None

    def scores(self, rows: slice = slice(None)) -> torch.Tensor:
        """Scaled attention logits ``q kᵀ · scale + bias`` of the images ``rows``, (b, H, T, T), at least float32."""
        dtype = torch.promote_types(self.q.dtype, torch.float32)
        q, k = self.q[rows].to(dtype), self.k[rows].to(dtype)
        s = torch.matmul(q * self.scale, k.transpose(-2, -1))
        if self.bias is not None:
            bias = self.bias if self.bias.shape[0] == 1 else self.bias[rows]
            s = s + bias.to(dtype)
        return s

    def probs(self, rows: slice = slice(None)) -> torch.Tensor:
        """Attention probabilities of the images ``rows``, (b, H, T, T)."""
        return self.scores(rows).softmax(dim=-1)

    def row_chunks(self, max_elements: int = CHUNK_ELEMENTS) -> Iterator[slice]:
        """Slices of the batch whose score blocks hold at most ``max_elements`` (at least one image each)."""
        b, h, t, _ = self.q.shape
        step = max(1, max_elements // max(1, h * t * t))
        for start in range(0, b, step):
            yield slice(start, min(start + step, b))


@dataclass(frozen=True)
class AttentionCall:
    """One call of ``scaled_dot_product_attention`` as the model made it (inputs and output)."""

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    attn_mask: torch.Tensor | None
    is_causal: bool
    scale: float | None
    enable_gqa: bool
    output: torch.Tensor

    def query_key(self) -> QueryKey:
        """The :class:`QueryKey` whose softmax is exactly the probabilities this call used."""
        q, k = self.query, self.key
        if q.dim() != 4:
            raise VitdepthError(f"an attention call has queries of shape {tuple(q.shape)}, not (batch, heads, tokens, "
                                "head dim): windowed or head-less attention is not supported")
        if k.shape[1] != q.shape[1]:  # grouped-query attention: SDPA repeats each key head for its group
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        scale = self.scale if self.scale is not None else q.shape[-1] ** -0.5
        bias = self.attn_mask
        if bias is not None:
            if bias.dtype == torch.bool:  # True = may attend
                bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device).masked_fill(~bias, -torch.inf)
            while bias.dim() < 4:
                bias = bias.unsqueeze(0)
        if self.is_causal:
            t = q.shape[-2]
            causal = torch.ones(t, k.shape[-2], dtype=torch.bool, device=q.device).triu(1)
            extra = torch.zeros(causal.shape, device=q.device).masked_fill(causal, -torch.inf)[None, None]
            bias = extra if bias is None else bias + extra
        return QueryKey(q, k, float(scale), bias)


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
        call: the block's attention kernel call (inputs and output), only when :func:`tap` was asked to keep it.
    """

    layer: str
    position: int
    tokens: torch.Tensor
    num_prefix: int
    x_in: torch.Tensor | None = None
    x_mid: torch.Tensor | None = None
    qk: QueryKey | None = None
    grid: tuple[int, int] | None = None
    call: AttentionCall | None = None

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
    """Where a block's queries and keys can be read when its attention does not go through SDPA.

    ``layout="heads"``: the modules output (B, H, T, hd) (timm: ``q_norm`` / ``k_norm``, called on
    every forward even when they are identities). ``layout="flat"``: the modules output
    (B, T, H·hd) (Hugging Face ``q_proj`` / ``k_proj``). ``layout="in_proj"``: ``q`` is an
    ``nn.MultiheadAttention`` whose packed input projection gives q and k from its query input
    (torchvision), ``k`` is the same module.
    """

    q: nn.Module
    k: nn.Module
    layout: str
    num_heads: int
    scale: float


@dataclass
class SiteMap:
    """The canonical sites of a ViT-like model, found once by the adapter.

    Attributes:
        patch_proj: the patch projection (its output is layer ``pre``).
        blocks: the transformer blocks, in order.
        mid_sites: per block, the module whose input is the residual stream after attention
            (the second norm of a pre-norm block, the MLP of a post-norm block).
        qk: per block, the query / key site used when the block makes no SDPA call (or None).
        layouts: per block, ``"pre-norm"`` or ``"post-norm"``.
        num_heads: attention heads of block 0.
        num_prefix: prefix tokens (T − h·w) at the model's input size.
        grid: patch grid (h, w) at the model's input size.
        attention_source: per block, ``"sdpa"`` or ``"qk"`` as seen at load time.
        warnings: things a user should know about the sites (recorded in run.json).
    """

    patch_proj: nn.Module
    blocks: list[nn.Module]
    mid_sites: list[nn.Module]
    qk: list[QKSite | None]
    layouts: list[str] = field(default_factory=list)
    num_heads: int = 0
    num_prefix: int = 0
    grid: tuple[int, int] = (0, 0)
    attention_source: list[str] = field(default_factory=list)
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
    if site.layout in ("heads", "in_proj"):
        return t
    b, n, c = t.shape
    return t.reshape(b, n, site.num_heads, c // site.num_heads).transpose(1, 2)


def in_proj_query_key(mha: nn.MultiheadAttention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries and keys (B, H, T, hd) of a batch-first self-attention ``nn.MultiheadAttention`` on input ``x``.

    The same packed projection ``F.multi_head_attention_forward`` applies (rows 0..E of ``in_proj_weight`` for
    queries, E..2E for keys); the module's own fast path never exposes them.
    """
    e = mha.embed_dim
    w, b = mha.in_proj_weight, mha.in_proj_bias
    q = F.linear(x, w[:e], None if b is None else b[:e])
    k = F.linear(x, w[e:2 * e], None if b is None else b[e:2 * e])
    bsz, t, _ = x.shape
    h = mha.num_heads
    return (q.reshape(bsz, t, h, e // h).transpose(1, 2), k.reshape(bsz, t, h, e // h).transpose(1, 2))


@contextmanager
def intercept_sdpa(record: Callable[[AttentionCall], None]) -> Iterator[None]:
    """Route ``torch.nn.functional.scaled_dot_product_attention`` through ``record`` for the duration.

    The wrapper calls the original kernel with the caller's arguments and returns its output unchanged, so the
    model computes exactly what it would without it. Callers (timm, Hugging Face, torch's own
    ``multi_head_attention_forward``) look the function up on the module at call time, which is what makes the
    interception see them. Not thread-safe: do not run other models in other threads of the process meanwhile.
    """
    original = F.scaled_dot_product_attention

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
        out = original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                       **kwargs)
        record(AttentionCall(query.detach(), key.detach(), value.detach(),
                             None if attn_mask is None else attn_mask.detach(), bool(is_causal), scale,
                             bool(kwargs.get("enable_gqa", False)), out.detach()))
        return out

    F.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


@contextmanager
def tap(sites: SiteMap, sink: Callable[[LayerTaps], None], attention: bool = True,
        keep_calls: bool = False) -> Iterator[dict]:
    """Attach the hooks for one or more forwards; every handle is removed on exit.

    The sink receives each layer's :class:`LayerTaps` as soon as the layer has run, so only one
    layer's activations are alive at a time (bounded memory, design §7).

    Args:
        sites: where to tap.
        sink: receives each layer's taps, in order.
        attention: capture what the attention probabilities are computed from (``LayerTaps.qk``).
        keep_calls: also keep each block's SDPA call with its values and output (``LayerTaps.call``; self-check).

    Yields:
        a dict with ``grid`` ((h, w) of the last forward) and ``blocks_seen`` (count of the last
        forward), which callers use to check every site fired.
    """
    state: dict = {"grid": None, "blocks_seen": 0, "num_prefix": None, "current": None}
    scratch: dict[int, dict] = {}
    handles = []

    def on_patches(_mod, _args, out):
        out = _first_tensor(out).detach()
        if out.dim() != 4:
            raise VitdepthError(f"the patch projection returned shape {tuple(out.shape)}, not (batch, dim, h, w); "
                                "this model layout is not supported")
        state["grid"] = (int(out.shape[-2]), int(out.shape[-1]))
        state["blocks_seen"] = 0
        sink(LayerTaps("pre", 0, out.flatten(2).transpose(1, 2), 0, grid=state["grid"]))

    def on_block_in(i):
        def hook(_mod, args, kwargs):
            x = (args[0] if args else kwargs["hidden_states"]).detach()
            scratch[i] = {"x_in": x, "calls": []}
            state["current"] = i
            if i == 0:
                grid = state["grid"]
                if grid is None:
                    raise VitdepthError("the patch projection did not run before block 0; this model layout is not "
                                        "supported by the structural adapter")
                if x.dim() != 3:
                    raise VitdepthError(f"block 0 receives tokens of shape {tuple(x.shape)}, not (batch, tokens, "
                                        "dim); this model layout is not supported")
                state["num_prefix"] = x.shape[1] - grid[0] * grid[1]
                if state["num_prefix"] < 0:
                    raise VitdepthError(f"block 0 receives {x.shape[1]} tokens, fewer than the {grid[0]}x{grid[1]} "
                                        "patch grid: tokens are dropped or masked before the blocks (MAE masking?) "
                                        "or the patch projection was mis-detected; not supported")
                sink(LayerTaps("0", 1, x, state["num_prefix"], grid=grid))

        return hook

    def on_call(call: AttentionCall) -> None:
        i = state["current"]
        if i is not None:  # calls outside the blocks (an attention-pool head) are not layers
            scratch[i]["calls"].append(call)

    def on_qk(i, key):
        def hook(_mod, _args, out):
            scratch.setdefault(i, {})[key] = _first_tensor(out).detach()

        return hook

    def on_in_proj(i):
        def hook(mod, args, kwargs):
            x = (args[0] if args else kwargs["query"]).detach()
            scratch[i]["q"], scratch[i]["k"] = in_proj_query_key(mod, x)

        return hook

    def on_mid(i):
        def hook(_mod, args):
            scratch[i]["x_mid"] = args[0].detach()

        return hook

    def on_block_out(i):
        def hook(_mod, _args, out):
            s = scratch.pop(i)
            state["current"] = None
            qk = call = None
            if attention:
                calls = s["calls"]
                site = sites.qk[i]
                if len(calls) == 1:
                    call = calls[0]
                    qk = call.query_key()
                elif not calls and site is not None and "q" in s:
                    qk = QueryKey(_heads(s["q"], site), _heads(s["k"], site), site.scale)
                else:
                    raise VitdepthError(f"block {i} made {len(calls)} attention calls and has no query/key site "
                                        "vitdepth can read; its attention cannot be recomputed (not a plain ViT block)")
            state["blocks_seen"] += 1
            sink(LayerTaps(str(i + 1), i + 2, _first_tensor(out).detach(), state["num_prefix"],
                           x_in=s["x_in"], x_mid=s.get("x_mid"), qk=qk, grid=state["grid"],
                           call=call if keep_calls else None))

        return hook

    try:
        handles.append(sites.patch_proj.register_forward_hook(on_patches))
        for i, block in enumerate(sites.blocks):
            handles.append(block.register_forward_pre_hook(on_block_in(i), with_kwargs=True))
            handles.append(sites.mid_sites[i].register_forward_pre_hook(on_mid(i)))
            site = sites.qk[i]
            if attention and site is not None:
                if site.layout == "in_proj":
                    handles.append(site.q.register_forward_pre_hook(on_in_proj(i), with_kwargs=True))
                else:
                    handles.append(site.q.register_forward_hook(on_qk(i, "q")))
                    handles.append(site.k.register_forward_hook(on_qk(i, "k")))
            handles.append(block.register_forward_hook(on_block_out(i)))
        if attention:
            with intercept_sdpa(on_call):
                yield state
        else:
            yield state
    finally:
        for h in handles:
            h.remove()
