"""timm vision transformers: ViT, DeiT (including distilled), register tokens, EVA / EVA-02, RoPE ViTs,
DINOv3, BEiT, relative-position ViTs (pre- and post-norm), SigLIP (attention-pool head), hybrid
(ResNet-stem) ViTs, FlexiViT, DeiT-III. Families that are not one token sequence (Swin, CrossViT,
SAM, PiT, parallel blocks) are refused by :func:`~vitdepth.models.structure.refuse_unsupported`.

Weights come from ``--checkpoint`` (safetensors or a plain state dict), from timm's offline
Hugging Face cache when the pretrained weights are already there, or ``--random-init``;
nothing is downloaded.
"""

from __future__ import annotations

import difflib
import sys

import torch
from torch import nn

from ..._errors import VitdepthError
from ...data.transforms import PreprocessConfig
from ..checkpoint import apply_state_dict, file_sha256, load_state_dict
from ..registry import register_adapter
from ..structure import find_sites
from ..tapped import Reference, TappedModel


def timm_prefix_names(model: nn.Module) -> tuple[tuple[str, ...], bool]:
    """Names of timm's prefix tokens, in the order ``_pos_embed`` concatenates them."""
    names: list[str] = []
    has_cls = getattr(model, "cls_token", None) is not None
    if has_cls:
        names.append("cls")
    if getattr(model, "dist_token", None) is not None:
        names.append("dist")
    reg = getattr(model, "reg_token", None)
    if reg is not None:
        names += [f"reg{i}" for i in range(reg.shape[1])]
    n = int(getattr(model, "num_prefix_tokens", len(names)))
    if n != len(names):  # an unknown prefix layout: keep the count right, name them generically
        names = (["cls"] if has_cls else []) + [f"prefix{i}" for i in range(len(names) if has_cls else 0, n)]
    return tuple(names), has_cls


def timm_preprocess(model: nn.Module) -> PreprocessConfig:
    """The model's own preprocessing from its timm pretrained config."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    _, h, w = cfg["input_size"]
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img_size is not None:  # a bare VisionTransformer(img_size=…) has no pretrained cfg of its own
        h, w = int(img_size[0]), int(img_size[1])
    return PreprocessConfig(input_size=(h, w), mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                            interpolation=cfg.get("interpolation", "bicubic"), crop_pct=float(cfg.get("crop_pct", 1.0)),
                            crop_mode=cfg.get("crop_mode", "center"))


def _timm_forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(x)


def timm_reference(model: nn.Module, x: torch.Tensor) -> Reference:
    """timm's own view of a batch: block outputs from ``forward_intermediates`` and the eager attention.

    The eager probabilities are read where timm's non-fused path hands them to ``attn_drop`` (the attention
    modules of ViT, EVA, relpos and BEiT all do), with ``fused_attn`` switched off for this one forward.
    """
    hidden = None
    if hasattr(model, "forward_intermediates"):
        prefix = int(getattr(model, "num_prefix_tokens", 0) or 0) > 0
        try:
            with torch.inference_mode():
                inter = model.forward_intermediates(x, intermediates_only=True, return_prefix_tokens=prefix,
                                                    output_fmt="NLC", norm=False)
            hidden = {}
            for i, item in enumerate(inter):
                spatial, prefix = item if isinstance(item, (tuple, list)) else (item, None)
                hidden[str(i + 1)] = spatial if prefix is None or prefix.numel() == 0 else torch.cat(
                    [prefix, spatial], dim=1)
        except Exception:  # noqa: BLE001 - a family whose forward_intermediates fails has no token reference
            hidden = None
    blocks = find_sites(model).blocks
    attn_modules = [next((m for m in b.modules() if hasattr(m, "fused_attn") and isinstance(
        getattr(m, "attn_drop", None), nn.Module)), None) for b in blocks]
    attentions = None
    if all(m is not None for m in attn_modules):
        probs: list[torch.Tensor] = []
        saved = [m.fused_attn for m in attn_modules]
        handles = [m.attn_drop.register_forward_hook(lambda _m, a, _o: probs.append(a[0].detach()))
                   for m in attn_modules]
        try:
            for m in attn_modules:
                m.fused_attn = False
            with torch.inference_mode():
                model(x)
        finally:
            for m, f in zip(attn_modules, saved, strict=True):
                m.fused_attn = f
            for h in handles:
                h.remove()
        attentions = probs if len(probs) == len(blocks) else None
    return Reference(hidden, attentions, "timm forward_intermediates (block outputs) and the eager attention "
                                         "(fused_attn off, probabilities at attn_drop)")


def wrap_timm(model: nn.Module, spec: str, identity: dict) -> TappedModel:
    """Wrap a built timm vision transformer (used by ``timm:`` and ``file:``)."""
    names, has_cls = timm_prefix_names(model)
    return TappedModel(spec=spec, adapter="timm", model=model, sites=find_sites(model),
                       preprocess=timm_preprocess(model), prefix_names=names, has_cls=has_cls,
                       forward_fn=_timm_forward, identity=identity, reference_fn=timm_reference)


def _offline_cached_weights(name: str) -> str | None:
    """Path of pretrained weights already in the local Hugging Face cache, if any (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(name)
        repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        if not repo:
            return None
        for fname in ("model.safetensors", "pytorch_model.bin"):
            hit = try_to_load_from_cache(repo, fname)
            if isinstance(hit, str):
                return hit
    except Exception:  # any failure just means "not cached"
        return None
    return None


def _head_classes(sd: dict[str, torch.Tensor]) -> int:
    w = sd.get("head.weight")
    return int(w.shape[0]) if w is not None else 0


def _resample_for(model: nn.Module, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Adapt a state dict to a model built at another image size with timm's own ``checkpoint_filter_fn``
    (the one its pretrained loading applies: position embeddings resampled, relative tables kept)."""
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is None:
        raise VitdepthError(f"timm's {type(model).__name__} has no checkpoint_filter_fn to resample its weights to "
                            "another image size; run it without --image-size")
    return filter_fn(sd, model)


@register_adapter("timm", example="timm:vit_small_patch16_224",
                  description="timm ViTs (ViT, DeiT, registers, EVA-02, RoPE, DINOv3, BEiT, relpos, SigLIP, hybrids; "
                              "see docs/models.md); weights from --checkpoint, the offline cache, or --random-init")
def load_timm(name: str, *, checkpoint: str | None, random_init: bool, seed: int,
              image_size: int | None = None) -> TappedModel:
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join('timm:' + c for c in close)}?" if close else ""
        raise VitdepthError(f"unknown timm model {name!r}{hint} (list them with timm.list_models('vit*'))")
    if checkpoint and random_init:
        raise VitdepthError("--checkpoint and --random-init contradict each other; pass one of them")
    identity: dict = {"class": None, "weights": None}
    sd = None
    if checkpoint:
        sd = load_state_dict(checkpoint)
        identity["weights"] = {"source": "checkpoint", "path": str(checkpoint), "sha256": file_sha256(checkpoint)}
    elif not random_init:
        cached = _offline_cached_weights(name)
        if cached is None:
            raise VitdepthError(f"timm:{name} needs weights and nothing is downloaded: pass --checkpoint PATH "
                                "(safetensors or state dict) or --random-init")
        sd = load_state_dict(cached)
        identity["weights"] = {"source": "offline-cache", "path": cached, "sha256": file_sha256(cached)}
    else:
        identity["weights"] = {"source": "random-init", "seed": seed}
    torch.manual_seed(seed)
    kwargs = {"num_classes": _head_classes(sd)} if sd is not None else {}
    if image_size is not None:
        kwargs["img_size"] = image_size
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as e:
        raise VitdepthError(f"timm:{name} cannot be built with {kwargs} ({e}); drop --image-size") from None
    if sd is not None:
        if image_size is not None:
            sd = _resample_for(model, sd)
            identity["image_size"] = image_size
        apply_state_dict(model, sd, checkpoint or "offline cache")
    identity["class"] = f"timm.{type(model).__name__}"
    return wrap_timm(model, f"timm:{name}", identity)
