"""Glue from one layer's taps to the per-image metric functions and pooled features.

This is the only place that knows both the tap record and the metric functions, so the
metrics stay free of model details and the adapters free of metrics (design §2).
"""

from __future__ import annotations

import torch

from ..metrics import functional as F
from ..models.taps import LayerTaps

PER_IMAGE_IDS = ("token_sim", "token_sim_centered", "cls_patch_sim", "isi_attn", "attn_delta", "attn_entropy")


def per_image_values(t: LayerTaps, has_cls: bool) -> dict[str, torch.Tensor]:
    """Per-image (B,) values of every per-image metric that applies to this layer."""
    patches = t.patches
    out = {"token_sim": F.token_similarity(patches), "token_sim_centered": F.token_similarity_centered(patches)}
    if has_cls and t.num_prefix > 0:
        out["cls_patch_sim"] = F.cls_patch_similarity(t.tokens[:, 0], patches)
    if t.attn is not None:
        out.update(F.isi_attention(t.x_in, t.x_mid, t.attn))
    return out


def pooled_features(t: LayerTaps, has_cls: bool) -> dict[str, torch.Tensor]:
    """Pooled (B, d) features per token set: ``mean`` of patches, and ``cls`` where there is one."""
    out = {"mean": t.patches.float().mean(dim=1)}
    if has_cls and t.num_prefix > 0:
        out["cls"] = t.tokens[:, 0].float()
    return out
