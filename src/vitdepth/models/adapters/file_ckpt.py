"""vitdepth's own checkpoints (``file:DIR``): config.json + model.safetensors, as written by
``vitdepth train`` and :func:`vitdepth.models.checkpoint.save_checkpoint`."""

from __future__ import annotations

from pathlib import Path

import torch

from ..._errors import VitdepthError
from ...data.transforms import PreprocessConfig
from ..checkpoint import apply_state_dict, file_sha256, load_state_dict, read_checkpoint_config
from ..registry import register_adapter
from ..tapped import TappedModel
from .timm_vit import wrap_timm

ARCHES = ("timm.VisionTransformer",)


def build_architecture(cfg: dict) -> torch.nn.Module:
    """Instantiate the architecture a checkpoint config names (weights not loaded)."""
    if cfg["arch"] != "timm.VisionTransformer":
        raise VitdepthError(f"checkpoint arch {cfg['arch']!r} is not supported; known: {', '.join(ARCHES)}")
    from timm.models.vision_transformer import VisionTransformer

    try:
        return VisionTransformer(**cfg["model_args"])
    except TypeError as e:
        raise VitdepthError(f"checkpoint model_args do not fit timm's VisionTransformer ({e})") from None


@register_adapter("file")
def load_file(target: str, *, checkpoint: str | None, random_init: bool, seed: int) -> TappedModel:
    path = Path(target)
    cfg = read_checkpoint_config(path)
    if checkpoint:
        raise VitdepthError("--checkpoint is not used with file: models; the weights come from the directory")
    torch.manual_seed(seed)
    model = build_architecture(cfg)
    weights_file = path / "model.safetensors"
    if random_init:
        weights = {"source": "random-init", "seed": seed}
    else:
        apply_state_dict(model, load_state_dict(weights_file), str(weights_file))
        weights = {"source": "file", "path": str(path), "sha256": file_sha256(weights_file)}
    tm = wrap_timm(model, f"file:{target}", {"class": "timm.VisionTransformer", "weights": weights,
                                             "checkpoint_config": {k: cfg[k] for k in cfg if k != "model_args"}})
    if "preprocess" in cfg:
        pp = cfg["preprocess"]
        try:
            tm.preprocess = PreprocessConfig(input_size=tuple(pp["input_size"]), mean=tuple(pp["mean"]),
                                             std=tuple(pp["std"]), interpolation=pp.get("interpolation", "bicubic"),
                                             crop_pct=float(pp.get("crop_pct", 1.0)),
                                             crop_mode=pp.get("crop_mode", "center"))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise VitdepthError(f"{path / 'config.json'}: its preprocess block is not usable ({type(e).__name__}: "
                                f"{e}); re-write the checkpoint with vitdepth") from None
    return tm
