"""Causal edits of a forward: replace tokens of the residual stream at a layer, or block attention to a key.

Both are context managers around the model's own forward (hooks only, removed on exit), so everything the model
does besides the edit is unchanged. Layer ``ℓ`` (0..L) is the residual stream that block ℓ reads (design §3:
layer 0 is block 0's input, layer ℓ ≥ 1 the output of block ℓ−1); editing it changes blocks ℓ..L−1 and the head.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import torch
import torch.nn.functional as F

from .._errors import VitdepthError
from .tapped import TappedModel


def _replace_first(value, new: torch.Tensor):
    """``value`` with its first tensor replaced (blocks return a tensor, or a tuple with the tokens first)."""
    if isinstance(value, tuple):
        return (new, *value[1:])
    if isinstance(value, list):
        return [new, *value[1:]]
    return new


Edit = Callable[[torch.Tensor], torch.Tensor]


def _apply(x: torch.Tensor, edits: list[tuple[slice, Edit]]) -> torch.Tensor:
    x = x.clone()
    for rows, edit in edits:
        x[rows] = edit(x[rows])
    return x


@contextmanager
def edit_streams(tm: TappedModel, edits: list[tuple[int, slice, Edit]]) -> Iterator[None]:
    """Edit the residual stream of several layers, each on its own rows of the batch, in every forward inside.

    ``edits`` holds ``(layer, rows, edit)``: at layer ``layer`` (0..L) the tokens of the images ``rows`` (B', T, d)
    are replaced by ``edit(tokens)``. Different layers on disjoint rows let one forward of a stacked batch carry the
    edits of many layers (the interventions pack them this way: one forward per group instead of one per layer).
    """
    by_layer: dict[int, list[tuple[slice, Edit]]] = {}
    for layer, rows, edit in edits:
        if not 0 <= layer <= tm.depth:
            raise ValueError(f"layer must be in 0..{tm.depth}, got {layer}")
        by_layer.setdefault(layer, []).append((rows, edit))
    with ExitStack() as stack:
        for layer, todo in by_layer.items():
            if layer < tm.depth:
                def before(_mod, args, kwargs, todo=todo):
                    if args:
                        return (_apply(args[0], todo), *args[1:]), kwargs
                    return args, {**kwargs, "hidden_states": _apply(kwargs["hidden_states"], todo)}

                handle = tm.sites.blocks[layer].register_forward_pre_hook(before, with_kwargs=True)
            else:
                def after(_mod, _args, out, todo=todo):
                    first = out[0] if isinstance(out, (tuple, list)) else out
                    return _replace_first(out, _apply(first, todo))

                handle = tm.sites.blocks[-1].register_forward_hook(after)
            stack.callback(handle.remove)
        yield


def edit_stream(tm: TappedModel, layer: int, edit: Edit):
    """Replace the residual stream at ``layer`` (0..L) by ``edit(tokens)`` in every forward inside the block.

    ``edit`` receives the tokens (B, T, d) the model computed there and returns the tokens to continue with.
    """
    return edit_streams(tm, [(layer, slice(None), edit)])


def _additive(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """An SDPA ``attn_mask`` as an additive float mask in the query's dtype (True in a bool mask = may attend)."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=like.dtype, device=like.device).masked_fill(~mask, -torch.inf)
    return mask.to(like.dtype)


@contextmanager
def block_key(tm: TappedModel, key: int, from_block: int | torch.Tensor, queries: slice) -> Iterator[None]:
    """Forbid the ``queries`` (a slice of token positions) to attend to token ``key`` in blocks ``from_block``..L−1.

    ``from_block`` is one block index for the whole batch, or a (B,) tensor of one per image (a stacked batch
    carrying the knock-outs of several start blocks in one forward).

    The model's own ``scaled_dot_product_attention`` call of each such block gets ``−inf`` added to those scores
    (combined with any mask or bias it passes), so the softmax renormalises over the other keys: the
    attention knock-out of causal-tracing work (Meng et al. 2022, "Locating and Editing Factual Associations in
    GPT", attention knock-out as in Geva et al. 2023). Blocks that do not call SDPA cannot be edited this way;
    a forward that reaches one raises :class:`VitdepthError` instead of reporting an unedited number.
    """
    per_image = torch.is_tensor(from_block)
    first = int(from_block.min()) if per_image else from_block
    if not 0 <= first <= tm.depth or (per_image and int(from_block.max()) > tm.depth):
        raise ValueError(f"from_block must be in 0..{tm.depth}, got {from_block}")
    state = {"block": None, "calls": 0}
    original = F.scaled_dot_product_attention

    def sdpa(query, key_, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
        block = state["block"]
        if block is not None and block >= first:
            t, s = query.shape[-2], key_.shape[-2]
            if per_image:  # (B, 1, T, S): only the images whose knock-out has started by this block
                # under reuse_clean_prefix the block sees a prefix of the stacked rows
                masked = (from_block[:query.shape[0]] <= block).to(query.device)
                extra = torch.zeros(query.shape[0], 1, t, s, dtype=query.dtype, device=query.device)
                extra[masked, :, queries, key] = -torch.inf
            else:
                extra = torch.zeros(t, s, dtype=query.dtype, device=query.device)
                extra[queries, key] = -torch.inf
            base = _additive(attn_mask, query)
            if is_causal:  # fold the causal mask in: SDPA takes a mask or is_causal, not both
                causal = torch.ones(t, s, dtype=torch.bool, device=query.device).triu(1)
                extra = extra.masked_fill(causal, -torch.inf)
                is_causal = False
            attn_mask = extra if base is None else base + extra
            state["calls"] += 1
        return original(query, key_, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                        scale=scale, **kwargs)

    def enter(i):
        def hook(_mod, _args):
            state["block"], state["calls"] = i, 0
        return hook

    def leave(i):
        def hook(_mod, _args, _out):
            state["block"] = None
            if i >= first and state["calls"] == 0:
                raise VitdepthError(f"block {i} of {tm.spec} does not attend through scaled_dot_product_attention, "
                                    "so vitdepth cannot mask its attention; the [CLS] knock-out is not available "
                                    "for this model")
        return hook

    with ExitStack() as stack:
        for i, block in enumerate(tm.sites.blocks):
            stack.callback(block.register_forward_pre_hook(enter(i)).remove)
            stack.callback(block.register_forward_hook(leave(i)).remove)
        F.scaled_dot_product_attention = sdpa
        stack.callback(setattr, F, "scaled_dot_product_attention", original)
        yield


@contextmanager
def reuse_clean_prefix(tm: TappedModel, clean: list[torch.Tensor], starts: list[int]) -> Iterator[None]:
    """Skip, per row group of a stacked batch, the blocks an edit cannot have changed yet.

    An edit that starts at layer ``s`` (a stream replaced at block ``s``'s input, or attention masked from block
    ``s`` on) leaves blocks ``0..s−1`` computing exactly the clean forward. The stacked batch holds
    ``len(starts)`` groups of the same ``n`` images, group ``k`` edited from ``starts[k]`` (ascending), so block
    ``j`` only needs the groups with ``starts[k] <= j`` — a prefix of the rows. Each block gets that prefix (every
    other batch-sized tensor argument sliced alike) and the rows it skipped are filled from ``clean[j + 1]``, the
    clean forward's stream after block ``j`` for the ``n`` images. On average this halves the compute of the
    layer-by-layer interventions. Enter it before the edits (its hooks must run first).

    Args:
        tm: the model.
        clean: ``L + 1`` tensors (n, T, d), the clean residual stream at layers 0..L of the ``n`` images.
        starts: per group, the first block whose input differs from the clean forward (``L``: none does).
    """
    if list(starts) != sorted(starts):
        raise ValueError(f"starts must be ascending, got {starts}")
    n, groups = clean[0].shape[0], len(starts)
    total = n * groups
    state: dict[int, tuple[int, int]] = {}  # block -> (rows it computes, rows that are edited)

    def active_rows(j: int) -> int:
        return n * sum(1 for s in starts if s <= j)

    def cut(value, rows: int):
        return value[:rows] if torch.is_tensor(value) and value.dim() and value.shape[0] == total else value

    def before(j):
        def hook(_mod, args, kwargs):
            active = active_rows(j)
            first = args[0] if args else kwargs.get("hidden_states")
            if active == total or first is None or first.shape[0] != total:
                state[j] = (-1, -1)
                return None
            # a block never gets an empty batch (some reshape with -1 and fail on 0 rows): before the first
            # edit it computes one group, whose result is then dropped
            rows = max(active, n)
            state[j] = (rows, active)
            return tuple(cut(a, rows) for a in args), {k: cut(v, rows) for k, v in kwargs.items()}
        return hook

    def after(j):
        def hook(_mod, _args, out):
            _rows, active = state.pop(j, (-1, -1))
            if active < 0:
                return None
            first = out[0] if isinstance(out, (tuple, list)) else out
            filler = clean[j + 1].to(device=first.device, dtype=first.dtype)
            skipped = filler.repeat(groups - active // n, *([1] * (filler.dim() - 1)))
            return _replace_first(out, torch.cat([first[:active], skipped]))
        return hook

    with ExitStack() as stack:
        for j, block in enumerate(tm.sites.blocks):
            stack.callback(block.register_forward_pre_hook(before(j), with_kwargs=True).remove)
            stack.callback(block.register_forward_hook(after(j)).remove)
        yield
