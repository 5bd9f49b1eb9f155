"""Adapter registry keyed by spec prefix (``timm:``, ``hf:``, ``file:``), in the style of timm's
``register_model`` / ``create_model``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .._errors import VitdepthError
from ..specs import model_spec_error
from .tapped import TappedModel


@dataclass(frozen=True)
class AdapterInfo:
    """One registered adapter."""

    prefix: str
    example: str
    description: str
    loader: Callable[..., TappedModel]


_ADAPTERS: dict[str, AdapterInfo] = {}


def register_adapter(prefix: str, example: str | None = None, description: str | None = None):
    """Register ``loader(target, *, checkpoint, random_init, seed) -> TappedModel`` under ``prefix``.

    The built-in adapters take their example spec and description from :data:`vitdepth.specs.MODEL_SPECS` (read
    by ``vitdepth models`` without importing them); another adapter passes its own.
    """
    from ..specs import MODEL_SPECS

    builtin = {f.kind: f for f in MODEL_SPECS}.get(prefix)
    example = example if example is not None else builtin.example if builtin else None
    description = description if description is not None else builtin.description if builtin else None
    if example is None or description is None:
        raise ValueError(f"adapter {prefix!r} needs an example spec and a description")

    def deco(fn):
        if prefix in _ADAPTERS:
            raise ValueError(f"adapter prefix {prefix!r} is registered twice")
        _ADAPTERS[prefix] = AdapterInfo(prefix, example, description, fn)
        return fn

    return deco


def _ensure_loaded() -> None:
    from . import adapters  # noqa: F401  (registers the built-in adapters)


def list_adapters() -> list[AdapterInfo]:
    """Registered adapters, sorted by prefix."""
    _ensure_loaded()
    return [_ADAPTERS[k] for k in sorted(_ADAPTERS)]


def parse_spec(spec: str) -> tuple[AdapterInfo, str]:
    """Split ``prefix:target`` and find its adapter, with close matches on failure.

    The message is :func:`vitdepth.specs.model_spec_error`'s, the one the CLI gives before anything loads.
    """
    _ensure_loaded()
    error = model_spec_error(spec, [(a.prefix, a.example) for a in list_adapters()])
    if error is not None:
        raise VitdepthError(error)
    prefix, _, target = spec.partition(":")
    return _ADAPTERS[prefix], target


def create_model(spec: str, *, checkpoint: str | None = None, random_init: bool = False, seed: int = 0,
                 device: str | torch.device = "cpu", image_size: int | None = None) -> TappedModel:
    """Build a :class:`TappedModel` from a spec such as ``timm:vit_small_patch16_224`` or ``hf:/path``.

    Args:
        spec: ``prefix:target``; see :func:`list_adapters`.
        checkpoint: weights file for adapters that take one (``timm:``).
        random_init: build the architecture untrained (seeded by ``seed``).
        seed: seed for random initialisation.
        device: where to put the model.
        image_size: run the model at this square input size (adapters that support it: ``timm:``, ``hf:``).
    """
    info, target = parse_spec(spec)
    if image_size is None:
        tm = info.loader(target, checkpoint=checkpoint, random_init=random_init, seed=seed)
    else:
        if image_size < 1:
            raise VitdepthError(f"--image-size must be a positive number of pixels, got {image_size}")
        if "image_size" not in inspect.signature(info.loader).parameters:
            raise VitdepthError(f"--image-size is not supported for {info.prefix}: models; run them at their own size")
        tm = info.loader(target, checkpoint=checkpoint, random_init=random_init, seed=seed, image_size=image_size)
    tm.model.eval()
    tm.identity.setdefault("adapter", info.prefix)
    return _describe(tm, spec).to(device)


def _describe(tm: TappedModel, spec: str) -> TappedModel:
    """Fill the JSON-ready identity every run records (same for specs and in-memory modules)."""
    tm.identity.setdefault("spec", spec)
    tm.identity.setdefault("adapter", tm.adapter)
    tm.identity["parameters"] = int(sum(p.numel() for p in tm.model.parameters()))
    tm.identity["depth"] = tm.depth
    tm.identity["num_heads"] = tm.num_heads
    tm.identity["prefix_tokens"] = list(tm.prefix_names)
    tm.identity["has_cls"] = tm.has_cls
    tm.identity["site_warnings"] = list(tm.sites.warnings)
    return tm


def tap_module(model: torch.nn.Module, spec: str = "module") -> TappedModel:
    """Wrap an already-built model (timm, Hugging Face or torchvision vision transformer) for taps.

    For plain PyTorch training loops and callbacks that hold the module, not a spec.
    """
    _ensure_loaded()
    from .adapters.hf import hf_tapped
    from .adapters.timm_vit import wrap_timm

    if hasattr(model, "config") and not hasattr(model, "pretrained_cfg"):
        tm = hf_tapped(model, spec)
    elif type(model).__module__.startswith("torchvision."):
        from .adapters.torchvision_vit import wrap_torchvision

        tm = wrap_torchvision(model, spec, {"class": f"torchvision.{type(model).__name__}",
                                            "weights": {"source": "in-memory"}})
    else:
        tm = wrap_timm(model, spec, {"class": type(model).__name__, "weights": {"source": "in-memory"}})
    return _describe(tm, spec)
