"""Eval-time image preprocessing, done by the libraries the weights come from.

The reason is parity: a model's features are only comparable across tools when its images are prepared exactly as
its own library prepares them, and small re-implementations drift (resize rounding, non-square sizes, crop
modes). So nothing here resizes or normalises pixels itself:

- :func:`build_transform` turns a :class:`PreprocessConfig` (what a timm model's pretrained config says) into
  timm's own eval pipeline, ``timm.data.create_transform(..., is_training=False)``.
- :class:`HFImageProcessorTransform` calls a Hugging Face image processor (loaded by the ``hf:`` adapter).
- :class:`CallableTransform` wraps any other callable, e.g. a torchvision weights' ``transforms()``.

All three first convert the PIL image to RGB with :func:`to_rgb` (16-bit greyscale rescaled rather than clipped,
alpha dropped, as timm's dataset loader does), return a ``float32`` tensor of shape ``(3, H, W)``, expose that
shape as ``output_shape``, describe themselves with ``to_dict()`` for ``run.json`` and pickle, which DataLoader
workers started with ``spawn`` (macOS, Windows) require.

Example:
    >>> from PIL import Image
    >>> t = build_transform(PreprocessConfig(input_size=(32, 32)))
    >>> t(Image.new("RGB", (8, 8))).shape
    torch.Size([3, 32, 32])
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from .._errors import VitdepthError

__all__ = [
    "CROP_MODES",
    "INTERPOLATIONS",
    "CallableTransform",
    "HFImageProcessorTransform",
    "ImageTransform",
    "PreprocessConfig",
    "apply_preprocess_overrides",
    "build_transform",
    "draft_size_for",
    "to_rgb",
]

# timm's eval resize filters (timm.data.transforms.str_to_interp_mode) and crop modes (transforms_imagenet_eval).
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "box", "hamming", "lanczos")
CROP_MODES = ("center", "squash", "border")


def _bad_param(name: str, owner: str, requirement: str, value: Any) -> VitdepthError:
    return VitdepthError(f"The '{name}' parameter of {owner} must be {requirement}. Got {value!r} instead.")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a PIL image of any mode to RGB.

    16-bit greyscale (PNG/TIFF opened as ``I`` or ``I;16``) is rescaled to 8 bits first, because
    ``convert("RGB")`` would clip everything above 255 to white. Alpha is dropped, not composited, as
    ``img.convert("RGB")`` in timm's and torchvision's dataset loaders does.

    Args:
        img: The image.

    Returns:
        The image in RGB mode (the same object when it already is).
    """
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16") or img.mode == "I":
        arr = np.asarray(img, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        # Going through RGBA avoids PIL's warning about palette transparency.
        img = img.convert("RGBA")
    return img.convert("RGB")


@dataclass(frozen=True)
class PreprocessConfig:
    """How a timm-style model expects its input images: the arguments of timm's eval ``create_transform``.

    Attributes:
        input_size: ``(H, W)`` of the tensor the model consumes.
        mean: Per-channel RGB mean subtracted after scaling pixels to ``[0, 1]``.
        std: Per-channel RGB standard deviation divided out after subtracting ``mean``.
        interpolation: Resize filter, one of timm's: ``"bicubic"``, ``"bilinear"``, ``"nearest"``, ``"box"``,
            ``"hamming"``, ``"lanczos"``.
        crop_pct: timm's convention: the resize targets ``floor(size / crop_pct)`` and the result is
            center-cropped to ``input_size``; ``1.0`` resizes straight to the crop size.
        crop_mode: timm's eval crop mode: ``"center"`` resizes the short side (aspect kept) and crops,
            ``"squash"`` resizes each side independently (aspect not kept) and crops, ``"border"`` fits the long
            side and pads with the mean colour.
    """

    input_size: tuple[int, int]
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"
    crop_pct: float = 1.0
    crop_mode: str = "center"

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
        if self.interpolation not in INTERPOLATIONS:
            raise _bad_param("interpolation", owner, f"one of {sorted(INTERPOLATIONS)}", self.interpolation)
        if not (isinstance(self.crop_pct, (int, float)) and math.isfinite(self.crop_pct) and self.crop_pct > 0):
            raise _bad_param("crop_pct", owner, "a float in the range (0, inf)", self.crop_pct)
        object.__setattr__(self, "crop_pct", float(self.crop_pct))
        if self.crop_mode not in CROP_MODES:
            raise _bad_param("crop_mode", owner, f"one of {list(CROP_MODES)}", self.crop_mode)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict; ``PreprocessConfig(**cfg.to_dict())`` rebuilds an equal config."""
        return {
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
            "crop_mode": self.crop_mode,
        }


class ImageTransform:
    """timm's eval pipeline for a :class:`PreprocessConfig`; built by :func:`build_transform`.

    Holds ``timm.data.create_transform(input_size=(3, H, W), is_training=False, interpolation, mean, std,
    crop_pct, crop_mode)`` as ``pipeline``. Pickles as its config and rebuilds the pipeline on unpickling.

    Args:
        cfg: The preprocessing to apply.
    """

    def __init__(self, cfg: PreprocessConfig) -> None:
        self.cfg = cfg
        self.pipeline = self._build(cfg)

    @staticmethod
    def _build(cfg: PreprocessConfig) -> Callable[[Image.Image], torch.Tensor]:
        from timm.data import create_transform

        return create_transform(
            input_size=(3, *cfg.input_size),
            is_training=False,
            interpolation=cfg.interpolation,
            mean=cfg.mean,
            std=cfg.std,
            crop_pct=cfg.crop_pct,
            crop_mode=cfg.crop_mode,
        )

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """``(3, H, W)`` of every tensor this transform returns."""
        return (3, *self.cfg.input_size)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """Preprocess one image.

        Args:
            img: A PIL image of any mode; converted with :func:`to_rgb` first.

        Returns:
            A ``float32`` tensor of shape ``(3, H, W)``.
        """
        return self.pipeline(to_rgb(img)).to(torch.float32)

    def to_dict(self) -> dict[str, Any]:
        """Describe the transform for ``run.json``: the config and the timm steps it runs."""
        steps = getattr(self.pipeline, "transforms", [self.pipeline])
        return {
            "kind": "timm",
            "function": "timm.data.create_transform",
            **self.cfg.to_dict(),
            "steps": [" ".join(repr(s).split()) for s in steps],
        }

    def __getstate__(self) -> dict[str, Any]:
        return {"cfg": self.cfg}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.cfg = state["cfg"]
        self.pipeline = self._build(self.cfg)

    def __repr__(self) -> str:
        return f"ImageTransform({self.cfg!r})"


def build_transform(cfg: PreprocessConfig) -> ImageTransform:
    """Build the eval transform for a preprocessing config: timm's own ``create_transform``.

    The image is converted to RGB, then run through ``timm.data.create_transform(input_size=(3, H, W),
    is_training=False, interpolation=cfg.interpolation, mean=cfg.mean, std=cfg.std, crop_pct=cfg.crop_pct,
    crop_mode=cfg.crop_mode)``: with the default ``"center"`` mode, resize so the short side is
    ``floor(size / crop_pct)`` (224 at crop_pct 0.9 gives 248), center-crop to ``cfg.input_size``, scale to
    ``[0, 1]`` and normalise. Images smaller than the target (digits are 8x8) are upsampled the same way.

    Args:
        cfg: The model's preprocessing config.

    Returns:
        A picklable callable mapping a PIL image to a ``float32`` tensor of shape ``(3, H, W)``.
    """
    if not isinstance(cfg, PreprocessConfig):
        raise _bad_param("cfg", "build_transform", "a PreprocessConfig", cfg)
    return ImageTransform(cfg)


#: How much larger than the transform's own resize target a drafted JPEG must stay (see :func:`draft_size_for`).
DRAFT_MARGIN = 2


def draft_size_for(transform: Callable[[Image.Image], torch.Tensor]) -> tuple[int, int] | None:
    """The smallest ``(width, height)`` a JPEG may be drafted to before ``transform``, or None for no drafting.

    PIL's ``Image.draft`` lets the JPEG decoder scale by 1/2, 1/4 or 1/8 in the DCT domain, choosing the largest
    factor that keeps the image at least the requested size in *both* dimensions (aspect ratio kept, sides rounded
    up). That skips most of the decoding work for photos much larger than the model's input
    (:meth:`~vitdepth.data.sources.DataSource.load_draft` applies it; non-JPEG files are never drafted).

    The rule: request :data:`DRAFT_MARGIN` (2) times the transform's resize target in each dimension, so the
    transform's own antialiased resize still down-samples the drafted image by at least 2x wherever the full image
    would have been down-sampled by 2x or more; images smaller than that are decoded in full. For timm's eval
    pipeline (:class:`ImageTransform`) the resize target is read off the pipeline's first step, the resize, whose
    size is ``floor(input_size / crop_pct)``:

    - ``crop_mode="center"`` (square input): ``Resize(S)`` scales the *short* side to ``S`` with the aspect kept;
      the request ``(2S, 2S)`` keeps the drafted short side >= ``2S`` whatever the aspect ratio (the long side
      follows it), and PIL's factor is then set by the short side, which is exactly what matters.
    - ``crop_mode="center"`` (non-square input ``(H, W)``): ``ResizeKeepRatio((Sh, Sw))`` scales by
      ``min(h / Sh, w / Sw)``; ``(2 Sw, 2 Sh)`` keeps that ratio >= 2 (exact, since draft keeps both sides >=).
    - ``crop_mode="squash"``: ``Resize((Sh, Sw))`` scales each side on its own; ``(2 Sw, 2 Sh)`` keeps both
      scalings >= 2 (exact).
    - ``crop_mode="border"``: ``ResizeKeepRatio(..., longest=1)`` scales by ``max(h / Sh, w / Sw)``; requiring
      both sides >= 2x is conservative (a very elongated image may be left undrafted where drafting was safe).

    ``interpolation="nearest"`` returns None: its resize does not antialias, so it would sample different pixels
    from a full and a drafted decode.

    Hugging Face processors (:class:`HFImageProcessorTransform`) are drafted only for the classes whose resize is
    known to be a plain antialiased resize to ``size`` (:data:`_HF_DRAFTABLE`: ViT, DeiT, BEiT, CLIP, BiT, the
    last also used by DINOv2), with ``do_resize`` on and a filter other than nearest: ``size={"height", "width"}``
    squashes (request ``(2 width, 2 height)``), ``size={"shortest_edge": S}`` keeps the aspect (request
    ``(2S, 2S)``). Other processors (e.g. ConvNeXt's ``crop_pct`` rule, ``longest_edge`` sizes) and user callables
    (``CallableTransform``) return None: they resize by their own rules, which are not read here.

    Tolerance (measured with PIL 13 / libjpeg-turbo, timm 1.0): against full decode + the same transform, on
    procedurally generated JPEGs (smooth gradients, filled shapes, a fine 5-7 px texture and noise, quality 90;
    300x400, 640x480, 480x640, 1024x768, 2000x1500, 1500x2000, 3000x1000) and in 0..255 pixel units of the final
    model input (the normalised tensor times ``255 * std``), the mean absolute difference per image is at most
    **0.6** and the max absolute difference at most **20** (isolated pixels at sharp edges). Images that are not
    drafted (short side below twice the resize target, e.g. 640x480 or 1024x768 for the default config) are
    bit-identical. Measured worst cases: default timm config (224, ``crop_pct=0.875``, bicubic) mean 0.39 / max 7;
    over center / squash / border, bilinear, 384, ``crop_pct=1.0`` and a 224x320 input mean 0.50 / max 15 (the
    224x320 center crop, whose drafted image is only 2.05x its resize target); the default ViT, DeiT and BiT Hugging
    Face processors (transformers 5.24) mean 0.44 / max 10. Drafting to 1x the resize target
    instead would give up to mean 2.2 / max 85, which these bounds reject. Reproduce with
    ``.venv/bin/python benchmarks/bench_decode.py --tolerance`` (``--factor 1`` for the 1x case);
    ``tests/test_draft_decode.py`` asserts the bounds.

    Args:
        transform: The transform the drafted images will go through.

    Returns:
        ``(width, height)`` for ``Image.draft``, in PIL's order, or None when drafting is not known to be safe.
    """
    if isinstance(transform, HFImageProcessorTransform):
        return _hf_draft_size(transform.processor)
    if not isinstance(transform, ImageTransform):
        return None
    from timm.data.transforms import ResizeKeepRatio
    from torchvision.transforms import InterpolationMode, Resize

    steps = getattr(transform.pipeline, "transforms", None)
    if not steps:
        return None
    first = steps[0]
    if isinstance(first, Resize):
        if first.max_size is not None:
            return None
        size = [first.size] if isinstance(first.size, int) else list(first.size)
    elif isinstance(first, ResizeKeepRatio):
        if first.random_scale_prob or first.random_aspect_prob:
            return None
        size = list(first.size)
    else:
        return None
    if first.interpolation not in (
        InterpolationMode.BICUBIC, InterpolationMode.BILINEAR, InterpolationMode.BOX, InterpolationMode.HAMMING,
        InterpolationMode.LANCZOS,
    ):
        return None
    if len(size) == 1:  # shortest-edge resize
        height = width = int(size[0])
    elif len(size) == 2:
        height, width = int(size[0]), int(size[1])
    else:
        return None
    return DRAFT_MARGIN * width, DRAFT_MARGIN * height


#: Hugging Face image processor classes whose resize is a plain antialiased resize to their ``size`` setting.
_HF_DRAFTABLE = frozenset({
    "ViTImageProcessor", "ViTImageProcessorFast", "DeiTImageProcessor", "DeiTImageProcessorFast",
    "BeitImageProcessor", "BeitImageProcessorFast", "CLIPImageProcessor", "CLIPImageProcessorFast",
    "BitImageProcessor", "BitImageProcessorFast",
})


def _hf_draft_size(processor: Any) -> tuple[int, int] | None:
    """:func:`draft_size_for` for a Hugging Face image processor (see there), or None."""
    if type(processor).__name__ not in _HF_DRAFTABLE or not getattr(processor, "do_resize", False):
        return None
    resample = getattr(processor, "resample", None)
    if resample is None or "nearest" in str(_resample_name(resample)).lower():
        return None
    size = getattr(processor, "size", None)

    def get(key: str) -> Any:
        return size.get(key) if isinstance(size, Mapping) else getattr(size, key, None)

    height, width, shortest = get("height"), get("width"), get("shortest_edge")
    others = [get(k) for k in ("longest_edge", "max_height", "max_width", "min_pixels", "max_pixels")]
    if any(v is not None for v in others):
        return None
    if isinstance(height, int) and isinstance(width, int) and shortest is None and height > 0 and width > 0:
        return DRAFT_MARGIN * width, DRAFT_MARGIN * height
    if isinstance(shortest, int) and height is None and width is None and shortest > 0:
        return DRAFT_MARGIN * shortest, DRAFT_MARGIN * shortest
    return None


def _jsonable(value: Any) -> Any:
    """A JSON-ready form of a processor setting (SizeDict, enums, tuples, tensors)."""
    if isinstance(value, enum.Enum):
        return value.value if isinstance(value.value, str) else value.name.lower()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items() if v is not None}
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


# PIL's resampling filter codes (Image.Resampling), as Hugging Face processor configs store them.
_PIL_FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _resample_name(value: Any) -> Any:
    """A resample setting as a filter name: processors saved to JSON hold PIL's int codes (3 is bicubic)."""
    if isinstance(value, int) and not isinstance(value, (bool, enum.Enum)):
        return _PIL_FILTERS.get(value, value)
    return _jsonable(value)


def _probe_shape(transform: Callable[[Image.Image], torch.Tensor], what: str) -> tuple[int, int, int]:
    """Run two small blank images of opposite aspect through ``transform`` and return the shared output shape."""
    shapes = set()
    for size in ((64, 48), (48, 64)):
        out = transform(Image.new("RGB", size, (128, 128, 128)))
        if not isinstance(out, torch.Tensor) or out.ndim != 3 or out.shape[0] != 3:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise VitdepthError(f"{what} must turn an image into a (3, H, W) tensor, got {got}; check its settings")
        shapes.add(tuple(int(s) for s in out.shape))
    if len(shapes) > 1:
        raise VitdepthError(
            f"{what} gives images of different sizes {sorted(shapes)} for different aspect ratios; "
            "it needs a fixed output size (a crop size, or a resize to height and width)"
        )
    return shapes.pop()  # type: ignore[return-value]


def _float_output(out: Any, what: str) -> torch.Tensor:
    if not isinstance(out, torch.Tensor) or not out.is_floating_point():
        got = f"{out.dtype} tensor" if isinstance(out, torch.Tensor) else type(out).__name__
        # An integer tensor would be silently cast to 0..255 floats: refuse instead.
        raise VitdepthError(f"{what} returned a {got}, expected a normalised float tensor; check its settings")
    return out.to(torch.float32)


# Processor settings recorded by HFImageProcessorTransform.to_dict(), in this order, where the processor has them.
_HF_SETTINGS = (
    "do_convert_rgb",
    "do_resize",
    "size",
    "resample",
    "do_center_crop",
    "crop_size",
    "do_pad",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
)


class _LibraryTransform:
    """RGB first, then a library's own transform (:meth:`_apply`); the output is a fixed-size float (3, H, W)."""

    _what = "transform"
    _output_shape: tuple[int, int, int]

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """``(3, H, W)`` of every tensor this transform returns."""
        return self._output_shape

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """Preprocess one image.

        Args:
            img: A PIL image of any mode; converted with :func:`to_rgb` first.

        Returns:
            A ``float32`` tensor of shape ``(3, H, W)``.
        """
        return _float_output(self._apply(to_rgb(img)), self._what)

    def _apply(self, rgb: Image.Image) -> Any:
        raise NotImplementedError


class HFImageProcessorTransform(_LibraryTransform):
    """A Hugging Face image processor as a transform: PIL image to RGB, then the processor itself.

    Calls ``processor(images=to_rgb(img), return_tensors="pt")["pixel_values"][0]``. The output shape is found
    once, at construction, by running two small blank images of opposite aspect through it; a processor whose
    output size depends on the input (e.g. ``shortest_edge`` resize without a crop) is refused, since batches need
    one size.

    Args:
        processor: A ``transformers`` image processor (e.g. from ``AutoImageProcessor.from_pretrained``).
        source: Where it was loaded from, recorded by :meth:`to_dict`.

    Raises:
        VitdepthError: The processor does not give one fixed ``(3, H, W)`` float tensor per image.
    """

    def __init__(self, processor: Any, source: str | None = None) -> None:
        self.processor = processor
        self.source = source
        self._what = f"image processor {type(processor).__name__}" + (f" from '{source}'" if source else "")
        self._output_shape = _probe_shape(self, self._what)

    def _apply(self, rgb: Image.Image) -> Any:
        return self.processor(images=rgb, return_tensors="pt")["pixel_values"][0]

    def to_dict(self) -> dict[str, Any]:
        """Describe the transform for ``run.json``: processor class, source and its main settings."""
        out: dict[str, Any] = {
            "kind": "hf_image_processor",
            "processor_class": type(self.processor).__name__,
            "source": self.source,
            "output_shape": list(self._output_shape),
        }
        for key in _HF_SETTINGS:
            value = getattr(self.processor, key, None)
            if value is not None:
                out[key] = _resample_name(value) if key == "resample" else _jsonable(value)
        return out

    describe = to_dict

    def __repr__(self) -> str:
        return f"HFImageProcessorTransform({type(self.processor).__name__}, output_shape={self._output_shape})"


# Files that hold a Hugging Face image processor's settings in a model directory.



# Attributes of torchvision's weights transforms (ImageClassification) worth recording.
_CALLABLE_SETTINGS = ("resize_size", "crop_size", "interpolation", "antialias", "mean", "std")


class CallableTransform(_LibraryTransform):
    """Any image callable (e.g. ``torchvision`` weights' ``transforms()``) as a transform: RGB first, then ``fn``.

    ``fn`` must map an RGB PIL image to a float ``(3, H, W)`` tensor of fixed size; this is checked once at
    construction. Picklable when ``fn`` is (torchvision's ``ImageClassification`` is).

    Example:
        >>> from torchvision.models import get_model_weights
        >>> weights = get_model_weights("vit_b_16").DEFAULT
        >>> t = CallableTransform(weights.transforms(), {"weights": str(weights)})
        >>> t.output_shape
        (3, 224, 224)

    Args:
        fn: The callable.
        description: JSON-ready facts about it for :meth:`to_dict`; merged over what is read off ``fn``
            (its class and, where present, ``resize_size``, ``crop_size``, ``interpolation``, ``antialias``,
            ``mean``, ``std``).

    Raises:
        VitdepthError: ``fn`` does not give one fixed ``(3, H, W)`` float tensor per image.
    """

    def __init__(self, fn: Callable[[Image.Image], torch.Tensor], description: Mapping[str, Any] | None = None):
        if not callable(fn):
            raise _bad_param("fn", "CallableTransform", "callable", fn)
        self.fn = fn
        cls = type(fn)
        found: dict[str, Any] = {"class": f"{cls.__module__}.{cls.__qualname__}"}
        for key in _CALLABLE_SETTINGS:
            value = getattr(fn, key, None)
            if value is not None:
                found[key] = _jsonable(value)
        self.description = {**found, **_jsonable(dict(description or {}))}
        self._what = f"transform {cls.__qualname__}"
        self._output_shape = _probe_shape(self, self._what)

    def _apply(self, rgb: Image.Image) -> Any:
        return self.fn(rgb)

    def to_dict(self) -> dict[str, Any]:
        """Describe the transform for ``run.json``."""
        return {"kind": "callable", "output_shape": list(self._output_shape), **self.description}

    def __repr__(self) -> str:
        return f"CallableTransform({self.fn!r})".replace("\n", " ")


# apply_preprocess_overrides: key -> (example, parser). Parsers raise ValueError with what is wrong.
def _parse_floats3(text: str) -> tuple[float, float, float]:
    parts = [float(p) for p in text.split(",")]
    if len(parts) != 3 or not all(math.isfinite(p) for p in parts):
        raise ValueError("needs 3 comma-separated finite numbers (R,G,B)")
    return parts[0], parts[1], parts[2]


def _parse_std(text: str) -> tuple[float, float, float]:
    std = _parse_floats3(text)
    if not all(s > 0 for s in std):
        raise ValueError("needs 3 positive numbers")
    return std


def _parse_input_size(text: str) -> tuple[int, int]:
    parts = [int(p) for p in text.split(",")]
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(p >= 1 for p in parts):
        raise ValueError("needs 1 or 2 comma-separated positive integers (H,W)")
    return parts[0], parts[1]


def _parse_crop_pct(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise ValueError("needs a positive number")
    return value


def _parse_choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.lower()
        if value not in choices:
            raise ValueError(f"needs one of {', '.join(choices)}")
        return value

    return parse


_OVERRIDES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "mean": ("mean=0.5,0.5,0.5", _parse_floats3),
    "std": ("std=0.5,0.5,0.5", _parse_std),
    "interpolation": ("interpolation=bicubic", _parse_choice(INTERPOLATIONS)),
    "crop_pct": ("crop_pct=0.9", _parse_crop_pct),
    "crop_mode": ("crop_mode=squash", _parse_choice(CROP_MODES)),
    "input_size": ("input_size=224,224", _parse_input_size),
}


def apply_preprocess_overrides(cfg: PreprocessConfig, items: list[str]) -> PreprocessConfig:
    """Apply ``KEY=VALUE`` overrides from the command line to a preprocessing config.

    Keys: ``mean`` and ``std`` (3 comma-separated numbers, ``mean=0.5,0.5,0.5``), ``interpolation``
    (``bicubic``, ``bilinear``, ...), ``crop_pct`` (``0.9``), ``crop_mode`` (``center``, ``squash``, ``border``)
    and ``input_size`` (``224,224`` as H,W, or ``224`` for a square). Keys are case-insensitive and ``-`` may
    stand for ``_``.

    Args:
        cfg: The model's own config.
        items: The override strings, e.g. ``["crop_pct=1.0", "input_size=256"]``.

    Returns:
        A new config with the overrides applied (``cfg`` itself is not changed).

    Raises:
        VitdepthError: An item is not ``KEY=VALUE``, names an unknown key, repeats a key or has a bad value.
    """
    if isinstance(items, str):
        items = [items]
    changes: dict[str, Any] = {}
    valid = ", ".join(_OVERRIDES)
    for item in items:
        raw = str(item)
        shown = " ".join(raw.split())
        key, sep, text = (s.strip() for s in raw.partition("="))
        key = key.lower().replace("-", "_")
        if not sep or not key:
            raise VitdepthError(
                f"preprocess override '{shown}' is not KEY=VALUE; use e.g. crop_pct=1.0 (keys: {valid})"
            )
        if key not in _OVERRIDES:
            close = difflib.get_close_matches(key, list(_OVERRIDES), n=2, cutoff=0.5)
            hint = " (did you mean " + " or ".join(f"'{c}'" for c in close) + "?)" if close else ""
            raise VitdepthError(f"unknown preprocess override '{key}'{hint}; valid keys: {valid}")
        if key in changes:
            raise VitdepthError(f"preprocess override '{key}' is given twice; keep one")
        example, parse = _OVERRIDES[key]
        try:
            changes[key] = parse(text)
        except ValueError as exc:
            # float()/int() errors quote the text; our own messages say what the key needs.
            need = str(exc) if str(exc).startswith("needs") else "has a malformed value"
            raise VitdepthError(f"preprocess override '{shown}': {key} {need}; e.g. {example}") from exc
    try:
        return dataclasses.replace(cfg, **changes)
    except VitdepthError as exc:
        shown = " ".join(" ".join(str(i).split()) for i in items)
        raise VitdepthError(f"preprocess overrides '{shown}' give an invalid config: {exc}") from exc
