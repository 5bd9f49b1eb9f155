"""Hugging Face vision transformers from a local directory: ViT, DeiT, DINOv2 (with and
without registers), the CLIP vision tower. Loaded offline (``local_files_only=True``).

The model keeps its default attention implementation (SDPA where available); the taps
recompute the probabilities from its own queries and keys, which equals
``output_attentions`` of the eager implementation (tested).
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from ..._errors import VitdepthError
from ...data.transforms import PreprocessConfig
from ..checkpoint import file_sha256
from ..registry import register_adapter
from ..structure import find_sites
from ..tapped import TappedModel

_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL resample codes used in HF preprocessor configs


def hf_prefix_names(model: nn.Module, config) -> tuple[tuple[str, ...], bool]:
    """Prefix tokens of a HF vision model: CLS, then distillation or register tokens."""
    names = ["cls"]
    emb = getattr(model, "embeddings", None)
    if emb is not None and getattr(emb, "distillation_token", None) is not None:
        names.append("dist")
    names += [f"reg{i}" for i in range(int(getattr(config, "num_register_tokens", 0) or 0))]
    return tuple(names), True


def hf_preprocess(path: Path, config) -> PreprocessConfig:
    """Preprocessing from ``preprocessor_config.json``, else the config's image size and ImageNet stats."""
    size = getattr(config, "image_size", 224)
    size = (size, size) if isinstance(size, int) else tuple(size)
    cfg_file = path / "preprocessor_config.json"
    if not cfg_file.is_file():
        return PreprocessConfig(input_size=size)
    pp = json.loads(cfg_file.read_text())
    mean = tuple(pp.get("image_mean", (0.485, 0.456, 0.406)))
    std = tuple(pp.get("image_std", (0.229, 0.224, 0.225)))
    interp = _RESAMPLE.get(pp.get("resample", 3), "bicubic")
    crop = pp.get("crop_size") if pp.get("do_center_crop") else None
    rs = pp.get("size", {})
    if crop:
        crop_hw = (crop["height"], crop["width"]) if isinstance(crop, dict) else (crop, crop)
        short = rs.get("shortest_edge") if isinstance(rs, dict) else rs
        crop_pct = crop_hw[0] / short if short else 1.0
        return PreprocessConfig(input_size=crop_hw, mean=mean, std=std, interpolation=interp, crop_pct=crop_pct)
    if isinstance(rs, dict) and "height" in rs:
        size = (rs["height"], rs["width"])
    elif isinstance(rs, dict) and "shortest_edge" in rs:
        size = (rs["shortest_edge"], rs["shortest_edge"])
    return PreprocessConfig(input_size=size, mean=mean, std=std, interpolation=interp)


def _hf_output(model: nn.Module, x):
    out = model(pixel_values=x)
    for name in ("logits", "pooler_output", "last_hidden_state"):
        value = getattr(out, name, None)
        if value is not None:
            return value
    raise VitdepthError(f"{type(model).__name__} returned no logits, pooler_output or last_hidden_state")


@register_adapter("hf", example="hf:/path/to/vit-model-dir",
                  description="a local Hugging Face ViT / DeiT / DINOv2 (+registers) / CLIP-vision directory, "
                              "loaded offline")
def load_hf(target: str, *, checkpoint: str | None, random_init: bool, seed: int) -> TappedModel:
    try:
        import transformers
    except ImportError:
        raise VitdepthError("hf: models need Hugging Face transformers; pip install 'vitdepth[hf]'") from None
    path = Path(target)
    if not path.is_dir() or not (path / "config.json").is_file():
        raise VitdepthError(f"hf model directory {path} does not exist or has no config.json; pass a local "
                            "directory saved with save_pretrained (nothing is downloaded)")
    if checkpoint:
        raise VitdepthError("--checkpoint is not used with hf: models; the weights come from the directory")
    transformers.utils.logging.disable_progress_bar()  # keep the CLI's output to its own lines
    config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    if getattr(config, "model_type", "") == "clip":  # a full CLIP: analyze its vision tower
        config = config.vision_config
    import torch

    torch.manual_seed(seed)
    if random_init:
        model = transformers.AutoModel.from_config(config)
        weights = {"source": "random-init", "seed": seed}
    else:
        auto = (transformers.AutoModelForImageClassification
                if any(a.endswith("ForImageClassification") for a in (config.architectures or []))
                else transformers.AutoModel)
        try:
            model = auto.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0][:200]
            raise VitdepthError(f"could not load the Hugging Face model in {path}: {first}") from None
        wfile = next((path / f for f in ("model.safetensors", "pytorch_model.bin") if (path / f).is_file()), None)
        weights = {"source": "hf-directory", "path": str(path),
                   "sha256": file_sha256(wfile) if wfile else None}
    tm = hf_tapped(model, f"hf:{target}", hf_preprocess(path, config))
    tm.identity["weights"] = weights
    return tm


def hf_tapped(model: nn.Module, spec: str, preprocess: PreprocessConfig | None = None) -> TappedModel:
    """Wrap a built Hugging Face vision model (a full CLIP is reduced to its vision tower)."""
    vision = getattr(model, "vision_model", None)
    model = vision if isinstance(vision, nn.Module) else model
    config = model.config
    names, has_cls = hf_prefix_names(_base(model), config)
    size = getattr(config, "image_size", 224)
    identity = {"class": f"transformers.{type(model).__name__}", "weights": {"source": "in-memory"},
                "transformers_model_type": getattr(config, "model_type", None)}
    return TappedModel(spec=spec, adapter="hf", model=model, sites=find_sites(model),
                       preprocess=preprocess or PreprocessConfig(input_size=(size, size)), prefix_names=names,
                       has_cls=has_cls, forward_fn=_hf_output, identity=identity)


def _base(model: nn.Module) -> nn.Module:
    """The backbone of a *ForImageClassification model (the module holding ``embeddings``)."""
    if hasattr(model, "embeddings"):
        return model
    for child in model.children():
        if hasattr(child, "embeddings"):
            return child
    return model
