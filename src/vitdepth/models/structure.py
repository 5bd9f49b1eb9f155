"""Find a ViT's canonical sites by structure, not by one library version's attribute names.

transformers 5 renamed ViT's modules (``encoder.layer`` → ``layers``, ``query`` → ``q_proj``),
and timm, Hugging Face and our own checkpoints all spell them differently. What they share is
the shape of a pre-norm transformer: a Conv2d patch projection with stride = kernel, and a
ModuleList (or Sequential) of blocks, each with an attention module (fused ``qkv`` or separate q / k
projections) and two LayerNorms whose second one reads the residual stream after attention.
"""

from __future__ import annotations

from torch import nn

from .._errors import VitdepthError
from .taps import QKSite, SiteMap

# Blocks known to be pre-norm (x_mid = input of the second norm). Others still work, with a
# warning recorded in run.json, because the rule is an assumption there.
KNOWN_PRENORM_BLOCKS = {
    "Block",  # timm VisionTransformer / DeiT
    "ViTLayer",
    "DeiTLayer",
    "Dinov2Layer",
    "Dinov2WithRegistersLayer",
    "CLIPEncoderLayer",
}

_QK_NAME_PAIRS = (("q_proj", "k_proj"), ("query", "key"), ("q", "k"))


def _is_norm(m: nn.Module) -> bool:
    return isinstance(m, (nn.LayerNorm, nn.GroupNorm)) or type(m).__name__.endswith(("LayerNorm", "RMSNorm"))


def _num_heads(attn: nn.Module) -> int | None:
    for name in ("num_heads", "num_attention_heads"):
        value = getattr(attn, name, None)
        if isinstance(value, int):
            return value
    config = getattr(attn, "config", None)
    return getattr(config, "num_attention_heads", None)


def find_qk(block: nn.Module) -> QKSite | None:
    """Locate the query / key outputs of a block's self-attention, or None."""
    for _, mod in block.named_modules():
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


def find_patch_projection(model: nn.Module) -> nn.Module:
    """The first Conv2d whose stride equals its kernel: the patch projection."""
    for _, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d) and tuple(mod.stride) == tuple(mod.kernel_size):
            return mod
    raise VitdepthError(f"{type(model).__name__} has no patch projection (a Conv2d with stride = kernel); "
                        "vitdepth analyzes patch-based vision transformers")


def _block_norms(block: nn.Module) -> list[nn.Module]:
    return [m for m in block.children() if _is_norm(m)]


def find_sites(model: nn.Module) -> SiteMap:
    """Discover patch projection, blocks, mid norms and q/k sites of a ViT-like model.

    Raises:
        VitdepthError: when the model has no stack of attention blocks.
    """
    best: list[nn.Module] = []
    for _, mod in model.named_modules():
        if not isinstance(mod, (nn.ModuleList, nn.Sequential)) or len(mod) <= len(best):
            continue
        blocks = list(mod)
        if all(len(_block_norms(b)) >= 2 and find_qk(b) is not None for b in blocks):
            best = blocks
    if not best:
        raise VitdepthError(f"{type(model).__name__} has no attention blocks vitdepth can tap (a ModuleList of blocks "
                            "with self-attention and two norms); use a ViT / DeiT / DINOv2 / CLIP-ViT model")
    warnings = []
    kinds = {type(b).__name__ for b in best}
    unknown = sorted(kinds - KNOWN_PRENORM_BLOCKS)
    if unknown:
        warnings.append(f"block class {', '.join(unknown)} is not a known pre-norm block: x_mid is read as the input "
                        "of its second norm, which is the post-attention residual only for pre-norm blocks")
    return SiteMap(
        patch_proj=find_patch_projection(model),
        blocks=best,
        mid_norms=[_block_norms(b)[1] for b in best],
        qk=[find_qk(b) for b in best],
        warnings=warnings,
    )
