"""Eval-time image preprocessing: resize, center crop, normalise.

This is the timm eval pipeline (``timm/data/transforms_factory.py``, ``transforms_imagenet_eval``) rebuilt
on PIL and numpy so that the data layer needs no torchvision. A model adapter reports the
:class:`PreprocessConfig` its weights were trained with; :func:`build_transform` turns it into a callable
that maps an RGB PIL image to a normalised ``float32`` tensor of shape ``(3, H, W)``.

Example:
    >>> from PIL import Image
    >>> t = build_transform(PreprocessConfig(input_size=(32, 32)))
    >>> t(Image.new("RGB", (8, 8))).shape
    torch.Size([3, 32, 32])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from .._errors import VitdepthError

__all__ = ["PreprocessConfig", "ImageTransform", "build_transform"]

# Pillow >= 9.1 moved the filters to Image.Resampling; the plain constants remain for older versions.
_Resampling = getattr(Image, "Resampling", Image)
_INTERPOLATIONS = {
    "bicubic": _Resampling.BICUBIC,
    "bilinear": _Resampling.BILINEAR,
    "nearest": _Resampling.NEAREST,
}


def _bad_param(name: str, owner: str, requirement: str, value: Any) -> VitdepthError:
    return VitdepthError(f"The '{name}' parameter of {owner} must be {requirement}. Got {value!r} instead.")


@dataclass(frozen=True)
class PreprocessConfig:
    """How a model expects its input images.

    Attributes:
        input_size: ``(H, W)`` of the tensor the model consumes.
        mean: Per-channel RGB mean subtracted after scaling pixels to ``[0, 1]``.
        std: Per-channel RGB standard deviation divided out after subtracting ``mean``.
        interpolation: Resampling filter for the resize: ``"bicubic"``, ``"bilinear"`` or ``"nearest"``.
        crop_pct: timm's convention: the image is resized so that it covers ``round(size / crop_pct)`` and
            then center-cropped to ``input_size``; ``1.0`` resizes straight to the crop size.
    """

    input_size: tuple[int, int]
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"
    crop_pct: float = 1.0

    def __post_init__(self) -> None:
        owner = "PreprocessConfig"
        size = tuple(self.input_size) if isinstance(self.input_size, (tuple, list)) else None
        if size is None or len(size) != 2 or not all(isinstance(s, (int, np.integer)) and s >= 1 for s in size):
            raise _bad_param("input_size", owner, "a pair of positive ints (H, W)", self.input_size)
        # Frozen dataclass: normalise containers (lists from JSON) to tuples of builtins so equality, hashing and
        # to_dict round-trips behave.
        object.__setattr__(self, "input_size", (int(size[0]), int(size[1])))
        for name in ("mean", "std"):
            value = getattr(self, name)
            if not isinstance(value, (tuple, list)) or len(value) != 3:
                raise _bad_param(name, owner, "a sequence of 3 floats (R, G, B)", value)
            object.__setattr__(self, name, tuple(float(v) for v in value))
        if not all(s > 0 for s in self.std):
            raise _bad_param("std", owner, "3 positive floats", self.std)
        if self.interpolation not in _INTERPOLATIONS:
            raise _bad_param("interpolation", owner, f"one of {sorted(_INTERPOLATIONS)}", self.interpolation)
        if not (isinstance(self.crop_pct, (int, float)) and math.isfinite(self.crop_pct) and self.crop_pct > 0):
            raise _bad_param("crop_pct", owner, "a float in the range (0, inf)", self.crop_pct)
        object.__setattr__(self, "crop_pct", float(self.crop_pct))

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict; ``PreprocessConfig(**cfg.to_dict())`` rebuilds an equal config."""
        return {
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
        }


class ImageTransform:
    """Callable built by :func:`build_transform`.

    A class rather than a closure so that it pickles, which DataLoader workers started with ``spawn``
    (macOS, Windows) require.

    Args:
        cfg: The preprocessing to apply.
    """

    def __init__(self, cfg: PreprocessConfig) -> None:
        self.cfg = cfg
        self._resample = _INTERPOLATIONS[cfg.interpolation]
        h, w = cfg.input_size
        self._scale_size = (max(h, round(h / cfg.crop_pct)), max(w, round(w / cfg.crop_pct)))
        self._mean = np.asarray(cfg.mean, dtype=np.float32) * 255.0
        self._inv_std = 1.0 / (np.asarray(cfg.std, dtype=np.float32) * 255.0)

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """``(3, H, W)`` of every tensor this transform returns."""
        return (3, *self.cfg.input_size)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """Preprocess one image.

        Args:
            img: A PIL image; non-RGB modes are converted to RGB first.

        Returns:
            A ``float32`` tensor of shape ``(3, H, W)``.
        """
        if img.mode != "RGB":
            img = img.convert("RGB")
        out_h, out_w = self.cfg.input_size
        scale_h, scale_w = self._scale_size
        # One scale factor for both axes keeps the aspect ratio. For a square input_size this is timm's "resize the
        # shorter side to size / crop_pct"; for a non-square one it is the smallest scale whose result still covers
        # the crop, where timm would stretch the image to (H, W) / crop_pct instead.
        scale = max(scale_h / img.height, scale_w / img.width)
        new_w = max(out_w, round(img.width * scale))
        new_h = max(out_h, round(img.height * scale))
        if (new_w, new_h) != img.size:
            img = img.resize((new_w, new_h), resample=self._resample)
        # Same rounding as torchvision's center_crop, so crops match timm's eval pipeline pixel for pixel.
        top = int(round((new_h - out_h) / 2.0))
        left = int(round((new_w - out_w) / 2.0))
        arr = np.asarray(img.crop((left, top, left + out_w, top + out_h)), dtype=np.float32)
        arr = (arr - self._mean) * self._inv_std
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))

    def __repr__(self) -> str:
        return f"ImageTransform({self.cfg!r})"


def build_transform(cfg: PreprocessConfig) -> ImageTransform:
    """Build the eval transform for a preprocessing config.

    Resizes with ``cfg.interpolation`` so the image covers ``round(size / crop_pct)`` (aspect ratio kept),
    center-crops to ``cfg.input_size``, scales to ``[0, 1]`` and normalises by ``cfg.mean`` / ``cfg.std``.
    Images smaller than the target (digits are 8x8) are upsampled the same way.

    Args:
        cfg: The model's preprocessing config.

    Returns:
        A picklable callable mapping an RGB PIL image to a ``float32`` tensor of shape ``(3, H, W)``.
    """
    if not isinstance(cfg, PreprocessConfig):
        raise _bad_param("cfg", "build_transform", "a PreprocessConfig", cfg)
    return ImageTransform(cfg)
