"""Hugging Face vision transformers from a local directory: ViT, DeiT, DINOv2 (with and
without registers), DINOv3, BEiT, Data2Vec-vision, ViT-MSN, ViT-MAE (unmasked), I-JEPA, SigLIP,
AIMv2 and the CLIP vision tower. Loaded offline (``local_files_only=True``).

The model keeps its default attention implementation (SDPA where available); the taps
recompute the probabilities from what it feeds the kernel, which equals ``output_attentions``
of the eager implementation (tested per family). The prefix (CLS, distillation, register
tokens) is read from the embeddings module, so models without [CLS] (SigLIP, I-JEPA, AIMv2)
get no ``cls`` rows. ViT-MAE encoders mask and shuffle patches on every forward; they are run
with ``mask_ratio = 0`` and the identity order (the model's own ``noise`` argument).
"""

from __future__ import annotations

import copy
import inspect
import os
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from ..._errors import VitdepthError
from ...data.transforms import HFImageProcessorTransform, PreprocessConfig
from ..checkpoint import file_sha256, read_json_object
from ..registry import register_adapter
from ..structure import find_sites
from ..tapped import Reference, TappedModel

_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL resample codes used in HF preprocessor configs


def hf_prefix_names(model: nn.Module, config) -> tuple[tuple[str, ...], bool]:
    """Prefix tokens of a HF vision model, from its embeddings: CLS, then distillation or register tokens.

    The count is checked against the tokens that reach block 0 when the model is wrapped.
    """
    emb = getattr(model, "embeddings", None)
    names = []
    has_cls = emb is not None and any(getattr(emb, a, None) is not None for a in ("cls_token", "class_embedding"))
    if has_cls:
        names.append("cls")
    if emb is not None and getattr(emb, "distillation_token", None) is not None:
        names.append("dist")
    registers = getattr(emb, "register_tokens", None) if emb is not None else None
    count = int(registers.shape[1]) if isinstance(registers, torch.Tensor) else int(
        getattr(config, "num_register_tokens", 0) or 0)
    names += [f"reg{i}" for i in range(count)]
    return tuple(names), has_cls


def hf_preprocess(path: Path, config) -> PreprocessConfig:
    """Preprocessing from ``preprocessor_config.json``, else the config's image size and ImageNet stats."""
    size = getattr(config, "image_size", 224)
    size = (size, size) if isinstance(size, int) else tuple(size)
    cfg_file = path / "preprocessor_config.json"
    if not cfg_file.is_file():
        return PreprocessConfig(input_size=size)
    fix = "fix or remove it (or re-save the image processor with save_pretrained)"
    pp = read_json_object(cfg_file, fix)
    try:
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
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
        raise VitdepthError(f"{cfg_file} does not describe fixed-size preprocessing ({type(e).__name__}: {e}); "
                            f"{fix}") from None
    return PreprocessConfig(input_size=size, mean=mean, std=std, interpolation=interp)


_RESAVE = "re-save the model with save_pretrained"


def _one_line(e: BaseException, limit: int = 200) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:limit]}" if text else type(e).__name__


def _check_config_json(path: Path) -> None:
    """Refuse a config.json that is not JSON, not an object or without model_type, before transformers reads it."""
    cfg_file = path / "config.json"
    raw = read_json_object(cfg_file, _RESAVE)
    model_type = raw.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise VitdepthError(f"{cfg_file} has no model_type (not a Hugging Face model config); {_RESAVE}")


def _check_hf_weights(path: Path) -> None:
    """Refuse truncated safetensors and pickled weights that are not plain tensors, before transformers reads them.

    transformers prefers ``model*.safetensors``; their headers are checked (a cut-off file fails there). Without
    them it reads ``pytorch_model*.bin``, which are opened here with ``torch.load(weights_only=True)``: a pickle
    that would import or run anything is refused without running it, whatever transformers version is installed.
    """
    from ..checkpoint import check_safetensors, load_state_dict

    fix = f"{_RESAVE} (safetensors)"
    shards = sorted(path.glob("model*.safetensors"))
    if shards:
        for f in shards:
            check_safetensors(f, fix=fix)
        return
    for f in sorted(path.glob("pytorch_model*.bin")):
        load_state_dict(f, fix=fix)


_HF_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


def hf_image_transform(path_or_id: str | os.PathLike[str]) -> HFImageProcessorTransform | None:
    """Load the image processor saved with a Hugging Face model, as a transform.

    Uses ``transformers.AutoImageProcessor.from_pretrained(path_or_id, local_files_only=True)``: nothing is
    downloaded, a hub id is looked up in the local cache only.

    Args:
        path_or_id: A model directory, or a hub id already in the local cache.

    Returns:
        The transform, or ``None`` when there is no processor config (a directory without
        ``preprocessor_config.json``, or an id not in the cache).

    Raises:
        VitdepthError: transformers is not installed, a local processor config exists but cannot be loaded, or
            the processor does not give fixed-size images.
    """
    try:
        from transformers import AutoImageProcessor
    except ImportError as exc:
        raise VitdepthError(
            "Hugging Face preprocessing needs transformers, which is not installed; pip install 'vitdepth[hf]'"
        ) from exc
    where = os.fspath(path_or_id)
    local = Path(os.path.expanduser(where))
    is_dir = local.is_dir()
    if is_dir and not any((local / name).is_file() for name in _HF_PROCESSOR_FILES):
        return None
    try:
        processor = AutoImageProcessor.from_pretrained(str(local) if is_dir else where, local_files_only=True)
    except (OSError, ValueError) as exc:
        if not is_dir:
            return None
        reason = " ".join(str(exc).split())[:300]
        # A config that is there but broken must not fall back to other preprocessing silently.
        raise VitdepthError(
            f"cannot load the image processor in '{local}' ({type(exc).__name__}: {reason}); "
            "fix or remove its preprocessor_config.json"
        ) from exc
    return HFImageProcessorTransform(processor, source=str(local) if is_dir else where)


def _is_mae(model: nn.Module) -> bool:
    return getattr(model.config, "model_type", "") == "vit_mae"


def _hf_call(model: nn.Module, x: torch.Tensor, **kwargs):
    size = getattr(model.config, "image_size", None)
    size = (size, size) if isinstance(size, int) else tuple(size or ())
    if size and tuple(x.shape[-2:]) != size and "interpolate_pos_encoding" in inspect.signature(
            model.forward).parameters:
        kwargs["interpolate_pos_encoding"] = True  # --image-size: the model's own position-embedding resampling
    if _is_mae(model):
        if float(getattr(model.config, "mask_ratio", 0.0)) != 0.0:
            raise VitdepthError(f"this ViT-MAE masks {model.config.mask_ratio:.0%} of the patches on every forward; "
                                "set model.config.mask_ratio = 0 to analyze it unmasked")
        patches = int((x.shape[-2] // model.config.patch_size) * (x.shape[-1] // model.config.patch_size))
        # increasing noise keeps every patch in its own place: the identity order
        kwargs["noise"] = torch.arange(patches, device=x.device, dtype=torch.float32).expand(x.shape[0], -1)
    return model(pixel_values=x, **kwargs)


def hf_reference(model: nn.Module, x: torch.Tensor) -> Reference:
    """The library's own hidden states and eager ``output_attentions`` (attention switched to eager for one forward)."""
    # the config setter reaches every attention module (they read it at call time), also for a bare vision tower
    # (a CLIP / SigLIP vision transformer is a plain nn.Module without set_attn_implementation)
    from transformers.utils import logging as hf_logging

    config = model.config
    previous, verbosity = config._attn_implementation, hf_logging.get_verbosity()
    config._attn_implementation = "eager"
    hf_logging.set_verbosity_error()  # "does not support output_attentions" notices: handled below
    try:
        with torch.inference_mode():
            out = _hf_call(model, x, output_hidden_states=True, output_attentions=True)
    finally:
        config._attn_implementation = previous
        hf_logging.set_verbosity(verbosity)
    hidden = getattr(out, "hidden_states", None)
    attns = getattr(out, "attentions", None)
    if (not attns or any(a is None for a in attns)) and hasattr(model, "_from_config"):
        # families that pick their attention class when built (BEiT-style Data2Vec) ignore the switch above:
        # a twin built eager with the same weights gives the library's own eager attention
        twin = type(model)._from_config(copy.deepcopy(model.config), attn_implementation="eager")
        twin.load_state_dict(model.state_dict())
        twin.to(device=x.device, dtype=x.dtype).eval()
        with torch.inference_mode():
            attns = getattr(_hf_call(twin, x, output_attentions=True), "attentions", None)
        del twin
    return Reference({str(i): h for i, h in enumerate(hidden)} if hidden else None,
                     list(attns) if attns and all(a is not None for a in attns) else None,
                     "Hugging Face output_hidden_states and eager output_attentions")


def _hf_output(model: nn.Module, x):
    out = _hf_call(model, x)
    return _main_output(model, out)


def _main_output(model: nn.Module, out):
    for name in ("logits", "pooler_output", "last_hidden_state"):
        value = getattr(out, name, None)
        if value is not None:
            return value
    raise VitdepthError(f"{type(model).__name__} returned no logits, pooler_output or last_hidden_state")


@register_adapter("hf", example="hf:/path/to/vit-model-dir",
                  description="a local Hugging Face ViT-like directory (ViT, DeiT, DINOv2/v3, BEiT, Data2Vec, MSN, "
                              "MAE, I-JEPA, SigLIP, AIMv2, CLIP vision; see docs/models.md), loaded offline")
def load_hf(target: str, *, checkpoint: str | None, random_init: bool, seed: int,
            image_size: int | None = None) -> TappedModel:
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
    _check_config_json(path)
    try:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers raises many types for a config it cannot use
        raise VitdepthError(f"{path / 'config.json'} is not a usable Hugging Face config ({_one_line(e)}); "
                            f"{_RESAVE}") from None
    if getattr(config, "model_type", "") in ("clip", "siglip", "siglip2", "aimv2"):  # a full model: its vision tower
        config = config.vision_config
    torch.manual_seed(seed)
    if random_init:
        try:
            model = transformers.AutoModel.from_config(config)
        except Exception as e:  # noqa: BLE001 - a config transformers accepts but cannot build a model from
            raise VitdepthError(f"cannot build a Hugging Face model from {path / 'config.json'} ({_one_line(e)}); "
                                f"{_RESAVE}") from None
        weights = {"source": "random-init", "seed": seed}
    else:
        _check_hf_weights(path)
        architectures = getattr(config, "architectures", None)
        architectures = architectures if isinstance(architectures, (list, tuple)) else []
        auto = (transformers.AutoModelForImageClassification
                if any(isinstance(a, str) and a.endswith("ForImageClassification") for a in architectures)
                else transformers.AutoModel)
        try:
            model = auto.from_pretrained(path, local_files_only=True)
        except VitdepthError:
            raise
        except Exception as e:  # noqa: BLE001 - missing / corrupt weights or config surface as many types
            raise VitdepthError(f"could not load the Hugging Face model in {path} ({_one_line(e)}); "
                                f"{_RESAVE}") from None
        wfile = next((path / f for f in ("model.safetensors", "pytorch_model.bin") if (path / f).is_file()), None)
        weights = {"source": "hf-directory", "path": str(path),
                   "sha256": file_sha256(wfile) if wfile else None}
    if _is_mae(model):
        model.config.mask_ratio = 0.0  # analyzed unmasked, in the identity patch order (see _hf_call)
    preprocess = hf_preprocess(path, config)
    transform = None
    if image_size is not None:
        preprocess = replace(preprocess, input_size=(image_size, image_size), crop_pct=1.0)
    else:
        transform = hf_image_transform(path)  # the model's own image processor, where the directory has one
    tm = hf_tapped(model, f"hf:{target}", preprocess, interpolate=image_size is not None)
    tm.transform = transform
    tm.identity["weights"] = weights
    if image_size is not None:
        tm.identity["image_size"] = image_size
    return tm


def hf_tapped(model: nn.Module, spec: str, preprocess: PreprocessConfig | None = None,
              interpolate: bool = False) -> TappedModel:
    """Wrap a built Hugging Face vision model (a full CLIP / SigLIP is reduced to its vision tower).

    Args:
        model: the model.
        spec: recorded spec.
        preprocess: its preprocessing (default: the config's image size, ImageNet statistics).
        interpolate: run with ``interpolate_pos_encoding=True`` (another input size than the config's).
    """
    vision = getattr(model, "vision_model", None)
    model = vision if isinstance(vision, nn.Module) else model
    if interpolate and "interpolate_pos_encoding" not in inspect.signature(model.forward).parameters:
        raise VitdepthError(f"{type(model).__name__} cannot interpolate its position embeddings "
                            "(no interpolate_pos_encoding); run it at its own image size without --image-size")
    config = model.config
    names, has_cls = hf_prefix_names(_base(model), config)
    size = getattr(config, "image_size", 224)
    identity = {"class": f"transformers.{type(model).__name__}", "weights": {"source": "in-memory"},
                "transformers_model_type": getattr(config, "model_type", None)}
    size = (size, size) if isinstance(size, int) else tuple(size)
    return TappedModel(spec=spec, adapter="hf", model=model, sites=find_sites(model),
                       preprocess=preprocess or PreprocessConfig(input_size=size), prefix_names=names,
                       has_cls=has_cls, forward_fn=_hf_output, identity=identity, reference_fn=hf_reference)


def _base(model: nn.Module) -> nn.Module:
    """The backbone of a *ForImageClassification model (the module holding ``embeddings``)."""
    if hasattr(model, "embeddings"):
        return model
    for child in model.children():
        if hasattr(child, "embeddings"):
            return child
    return model
