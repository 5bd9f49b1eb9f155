"""Find a ViT's canonical sites by structure, not by one library version's attribute names.

transformers 5 renamed ViT's modules (``encoder.layer`` → ``layers``, ``query`` → ``q_proj``),
and timm, Hugging Face, torchvision and our own checkpoints all spell them differently. What they
share is the shape of a transformer over patch tokens: a Conv2d patch projection with stride =
kernel, and a ModuleList (or Sequential) of blocks, each with an attention module and two norms.

Two things cannot be read from the module tree alone, so :func:`probe_sites` runs the model once on
one random image with the taps attached and settles them from what it computes:

- where the residual stream after attention is. In a pre-norm block (``x + attn(norm1(x))``) the first
  norm reads the block input and the residual after attention is the second norm's input; in a post-norm
  block (``norm1(x + attn(x))``, or timm's res-post ``x + norm1(attn(x))``) the first norm reads something
  else and the residual after attention is the MLP's input;
- how many prefix tokens there are (T − h·w at block 0), which must be a non-negative integer.

Families whose tokens are not one sequence over a single patch grid (Swin, CrossViT, SAM's windowed ViT,
PiT, parallel-block ViTs, pyramid ViTs) are refused by name with the reason, before anything runs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .._errors import VitdepthError
from .taps import LayerTaps, QKSite, SiteMap, tap

_QK_NAME_PAIRS = (("q_proj", "k_proj"), ("query", "key"), ("q", "k"))
_MLP_NAMES = ("mlp", "ffn", "feed_forward", "intermediate")

#: Class-name fragments of families that are not one token sequence over one patch grid, and why.
UNSUPPORTED_FAMILIES: tuple[tuple[str, str], ...] = (
    ("Swin", "Swin is not a plain ViT (hierarchical stages with shifted-window attention, no global token "
             "sequence)"),
    ("CrossVit", "CrossViT is not a plain ViT (two token streams of different patch sizes fused by cross-attention)"),
    ("VisionTransformerSAM", "SAM-ViT is not a plain ViT (windowed attention on a 2-D token grid)"),
    ("SamVision", "SAM-ViT is not a plain ViT (windowed attention on a 2-D token grid)"),
    ("PoolingVisionTransformer", "PiT is not a plain ViT (pooling stages change the token count between blocks)"),
    ("ParallelThingsBlock", "parallel-block ViTs are not supported (several attention branches per block, no single "
                            "attention map per layer)"),
    ("ParallelScalingBlock", "parallel-block ViTs are not supported (attention and MLP in parallel from one norm, no "
                             "residual stream between them)"),
    ("Hiera", "Hiera is not a plain ViT (hierarchical stages with mask-unit attention)"),
    ("Pvt", "PVT is not a plain ViT (pyramid stages with spatial-reduction attention)"),
    ("Levit", "LeViT is not a plain ViT (convolutional stages that shrink the token grid)"),
    ("MobileViT", "MobileViT is not a plain ViT (attention inside convolutional stages)"),
    ("VitDet", "ViTDet is not a plain ViT (windowed attention)"),
)


def _is_norm(m: nn.Module) -> bool:
    return isinstance(m, (nn.LayerNorm, nn.GroupNorm)) or type(m).__name__.endswith(("LayerNorm", "RMSNorm"))


def _num_heads(attn: nn.Module) -> int | None:
    for name in ("num_heads", "num_attention_heads"):
        value = getattr(attn, name, None)
        if isinstance(value, int):
            return value
    config = getattr(attn, "config", None)
    return getattr(config, "num_attention_heads", None)


def refuse_unsupported(model: nn.Module) -> None:
    """Raise a one-line error naming the family when ``model`` belongs to one vitdepth cannot analyze."""
    names = {type(m).__name__ for m in model.modules()}
    for fragment, why in UNSUPPORTED_FAMILIES:
        hit = sorted(n for n in names if fragment.lower() in n.lower())
        if hit:
            raise VitdepthError(f"{type(model).__name__}: {why}; vitdepth analyzes ViTs whose blocks share one "
                                f"sequence of patch tokens (found {hit[0]})")


def find_qk(block: nn.Module) -> QKSite | None:
    """Locate the query / key outputs of a block's self-attention, or None."""
    for _, mod in block.named_modules():
        if isinstance(mod, nn.MultiheadAttention):
            if mod._qkv_same_embed_dim and mod.batch_first and mod.in_proj_weight is not None:
                return QKSite(mod, mod, "in_proj", mod.num_heads, float(mod.head_dim) ** -0.5)
            continue
        children = dict(mod.named_children())
        if isinstance(children.get("qkv"), nn.Linear) and "q_norm" in children and "k_norm" in children:
            heads = _num_heads(mod)
            scale = getattr(mod, "scale", None)
            if heads is None or scale is None:
                continue
            return QKSite(children["q_norm"], children["k_norm"], "heads", heads, float(scale))
        for qn, kn in _QK_NAME_PAIRS:
            q, k = children.get(qn), children.get(kn)
            if isinstance(q, nn.Linear) and isinstance(k, nn.Linear):
                heads = _num_heads(mod)
                if heads is None:
                    continue
                head_dim = q.out_features // heads
                scale = getattr(mod, "scaling", None) or getattr(mod, "scale", None) or head_dim**-0.5
                return QKSite(q, k, "flat", heads, float(scale))
    return None


def _has_attention(block: nn.Module) -> bool:
    return any(isinstance(m, nn.MultiheadAttention) or "Attention" in type(m).__name__ for m in block.modules())


def _block_norms(block: nn.Module) -> list[nn.Module]:
    return [m for m in block.children() if _is_norm(m)]


def _width(norm: nn.Module) -> int | None:
    shape = getattr(norm, "normalized_shape", None)
    if shape:
        return int(shape[-1])
    weight = getattr(norm, "weight", None)
    return int(weight.shape[-1]) if isinstance(weight, torch.Tensor) else None


def find_patch_projection(model: nn.Module, width: int | None = None) -> nn.Module:
    """The patch projection: the last Conv2d with stride = kernel that outputs the blocks' width.

    "Last" matters for hybrid ViTs (a ResNet stem in front, whose 1×1 convolutions also have stride = kernel):
    their patch projection comes after the backbone in module order.
    """
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and tuple(m.stride) == tuple(m.kernel_size)]
    fitting = [m for m in convs if width is None or m.out_channels == width]
    if fitting:
        return fitting[-1]
    raise VitdepthError(f"{type(model).__name__} has no patch projection (a Conv2d with stride = kernel"
                        f"{f' and {width} output channels' if width else ''}); vitdepth analyzes patch-based "
                        "vision transformers")


def find_sites(model: nn.Module) -> SiteMap:
    """Discover patch projection, blocks, mid sites (pre-norm assumption) and q/k sites of a ViT-like model.

    :func:`probe_sites` then checks the assumptions on one forward.

    Raises:
        VitdepthError: an unsupported family, or no stack of attention blocks.
    """
    refuse_unsupported(model)
    best: list[nn.Module] = []
    for _, mod in model.named_modules():
        if not isinstance(mod, (nn.ModuleList, nn.Sequential)) or len(mod) <= len(best):
            continue
        blocks = list(mod)
        if all(len(_block_norms(b)) >= 2 and _has_attention(b) for b in blocks):
            best = blocks
    if not best:
        raise VitdepthError(f"{type(model).__name__} has no attention blocks vitdepth can tap (a ModuleList of blocks "
                            "with self-attention and two norms); use a ViT / DeiT / DINOv2 / CLIP-ViT model")
    return SiteMap(
        patch_proj=find_patch_projection(model, _width(_block_norms(best[0])[0])),
        blocks=best,
        mid_sites=[_block_norms(b)[1] for b in best],
        qk=[find_qk(b) for b in best],
    )


def _mlp(block: nn.Module) -> nn.Module | None:
    children = dict(block.named_children())
    return next((children[n] for n in _MLP_NAMES if n in children), None)


def probe_sites(sites: SiteMap, forward: Callable[[torch.Tensor], object], input_size: tuple[int, int],
                device: torch.device, dtype: torch.dtype) -> None:
    """Run one random image through the model with the taps on and settle what structure alone cannot.

    Fills ``layouts``, ``mid_sites`` (post-norm blocks read the MLP's input), ``num_heads``, ``num_prefix`` and
    ``attention_source`` of ``sites`` in place.

    Raises:
        VitdepthError: a block that is neither pre- nor post-norm as described in the module docstring, a negative
            prefix count, attention that cannot be read, or a forward that skips blocks.
    """
    norm_in: dict[int, torch.Tensor] = {}
    handles = []
    for i, block in enumerate(sites.blocks):
        def hook(_mod, args, i=i):
            norm_in[i] = args[0].detach()

        handles.append(_block_norms(block)[0].register_forward_pre_hook(hook))
    layers: list[LayerTaps] = []
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, *input_size, generator=generator).to(device=device, dtype=dtype)
    try:
        with torch.inference_mode(), tap(sites, layers.append, attention=True, keep_calls=True) as state:
            forward(x)
    finally:
        for h in handles:
            h.remove()
    if state["blocks_seen"] != len(sites.blocks):
        raise VitdepthError(f"only {state['blocks_seen']} of {len(sites.blocks)} blocks ran in one forward; blocks "
                            "that are skipped or run in parallel are not supported")
    blocks = [t for t in layers if t.is_block]
    layouts, mids = [], []
    for i, t in enumerate(blocks):
        if norm_in.get(i) is not None and norm_in[i].shape == t.x_in.shape and torch.equal(norm_in[i], t.x_in):
            layouts.append("pre-norm")
            mids.append(sites.mid_sites[i])
            continue
        mlp = _mlp(sites.blocks[i])
        if mlp is None:
            raise VitdepthError(f"block {i} ({type(sites.blocks[i]).__name__}) is not pre-norm and has no MLP module "
                                f"vitdepth can find ({', '.join(_MLP_NAMES)}); its residual stream after attention "
                                "cannot be located")
        layouts.append("post-norm")
        mids.append(mlp)
    sites.layouts = layouts
    sites.mid_sites = mids
    sites.num_heads = int(blocks[0].qk.q.shape[1])
    sites.num_prefix = int(layers[1].num_prefix)
    sites.grid = tuple(layers[1].grid)
    sites.attention_source = ["sdpa" if t.call is not None else "qk" for t in blocks]
    if "post-norm" in layouts:
        sites.warnings.append("post-norm blocks: x_mid (the residual stream after attention) is read as the MLP's "
                              "input")
