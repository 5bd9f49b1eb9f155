"""timm VisionTransformer family: ViT, DeiT (including distilled), ViT with register tokens.

Weights come from ``--checkpoint`` (safetensors or a plain state dict), from timm's offline
Hugging Face cache when the pretrained weights are already there, or ``--random-init``;
nothing is downloaded.
"""

from __future__ import annotations

import difflib

import torch
from torch import nn

from ..._errors import VitdepthError
from ...data.transforms import PreprocessConfig
from ..checkpoint import apply_state_dict, file_sha256, load_state_dict
from ..registry import register_adapter
from ..structure import find_sites
from ..tapped import TappedModel


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
                            interpolation=cfg.get("interpolation", "bicubic"), crop_pct=float(cfg.get("crop_pct", 1.0)))


def wrap_timm(model: nn.Module, spec: str, identity: dict) -> TappedModel:
    """Wrap a built timm VisionTransformer (used by ``timm:`` and ``file:``)."""
    names, has_cls = timm_prefix_names(model)
    return TappedModel(spec=spec, adapter="timm", model=model, sites=find_sites(model),
                       preprocess=timm_preprocess(model), prefix_names=names, has_cls=has_cls,
                       forward_fn=lambda m, x: m(x), identity=identity)


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


@register_adapter("timm", example="timm:vit_small_patch16_224",
                  description="timm VisionTransformer family (ViT, DeiT, distilled DeiT, registers); "
                              "weights from --checkpoint, the offline cache, or --random-init")
def load_timm(name: str, *, checkpoint: str | None, random_init: bool, seed: int) -> TappedModel:
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
    model = timm.create_model(name, pretrained=False, **kwargs)
    if sd is not None:
        apply_state_dict(model, sd, checkpoint or "offline cache")
    identity["class"] = f"timm.{type(model).__name__}"
    return wrap_timm(model, f"timm:{name}", identity)
