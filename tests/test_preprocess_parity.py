"""Preprocessing parity: our transforms give exactly what timm, Hugging Face and torchvision give themselves.

Images are non-square and of several sizes and PIL modes; models are built with ``pretrained=False`` and image
processors are constructed and saved locally, so nothing is downloaded.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from vitdepth._errors import VitdepthError
from vitdepth.data import (
    CallableTransform,
    HFImageProcessorTransform,
    ImageTransform,
    PreprocessConfig,
    apply_preprocess_overrides,
    build_transform,
    to_rgb,
)
from vitdepth.models.adapters.hf import hf_image_transform

SIZES = [(500, 375), (375, 500), (97, 211), (8, 8)]  # PIL (width, height)
MODES = ["RGB", "L", "RGBA", "P", "I;16"]


def _image(size: tuple[int, int], mode: str, seed: int = 0) -> Image.Image:
    """Smooth colour ramps plus noise, so resampling filters and crop offsets all leave a trace."""
    w, h = size
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        yy, xx = np.mgrid[0:h, 0:w]
        arr = (xx * 977 + yy * 353 + rng.integers(0, 4000, size=(h, w))) % 65536
        img = Image.fromarray(arr.astype(np.uint16))
        assert img.mode == "I;16"
        return img
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], axis=-1)
    arr = np.clip(base + rng.integers(-40, 40, size=(h, w, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    if mode == "RGBA":
        alpha = rng.integers(0, 256, size=(h, w), dtype=np.uint8)
        img = Image.fromarray(np.dstack([arr, alpha]), mode="RGBA")
    elif mode != "RGB":
        img = img.convert(mode)
    assert img.mode == mode
    return img


IMAGES = [
    (f"{w}x{h}-{m}", _image((w, h), m, seed=i)) for i, ((w, h), m) in enumerate([(s, m) for s in SIZES for m in MODES])
]


def _library_rgb(img: Image.Image) -> Image.Image:
    """What a library's own loader feeds its pipeline: ``convert("RGB")``, except 16-bit greyscale (see to_rgb)."""
    return to_rgb(img) if img.mode.startswith("I") else img.convert("RGB")


def test_to_rgb_rescales_16_bit_instead_of_clipping():
    img = _image((97, 211), "I;16")
    rgb = to_rgb(img)
    assert rgb.mode == "RGB" and rgb.size == img.size
    arr = np.asarray(rgb)
    assert np.array_equal(arr[..., 0], arr[..., 1]) and arr.std() > 20  # a real grey ramp, not all white
    np.testing.assert_array_equal(arr[..., 0], np.clip(np.rint(np.asarray(img) / 257.0), 0, 255))


# ----------------------------------------------------------------------------------------------------------------
# timm


def _cfg_from_timm(data_cfg: dict) -> PreprocessConfig:
    return PreprocessConfig(
        input_size=tuple(data_cfg["input_size"][1:]),
        mean=data_cfg["mean"],
        std=data_cfg["std"],
        interpolation=data_cfg["interpolation"],
        crop_pct=data_cfg["crop_pct"],
        crop_mode=data_cfg["crop_mode"],
    )


def _timm_model_cfgs() -> list[tuple[str, dict]]:
    """timm's own resolved data configs: real models (random init) and real pretrained cfgs of other modes."""
    timm = pytest.importorskip("timm")
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    out = []
    for name in ("vit_tiny_patch16_224", "deit_tiny_patch16_224", "vit_tiny_patch16_384"):
        model = timm.create_model(name, pretrained=False)
        out.append((name, resolve_data_config({}, model=model)))
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    # Non-square inputs through timm's own argument resolution: center (ResizeKeepRatio) and border modes.
    out.append(("center-160x224", resolve_data_config({"input_size": (3, 160, 224), "crop_pct": 0.875}, model=model)))
    out.append(
        ("border-224x160", resolve_data_config({"input_size": (3, 224, 160), "crop_mode": "border"}, model=model))
    )
    # Squash mode as real checkpoints use it (square at crop_pct 0.95, non-square 1024x768 at 1.0).
    for name in ("vit_base_patch32_clip_384.openai_ft_in12k_in1k", "vit_base_patch16_sapiens2.fb"):
        out.append((name, resolve_data_config(pretrained_cfg=get_pretrained_cfg(name).to_dict())))
    return out


@pytest.fixture(scope="module")
def timm_cfgs() -> list[tuple[str, dict]]:
    return _timm_model_cfgs()


def test_build_transform_equals_timm_create_transform(timm_cfgs):
    from timm.data import create_transform

    modes = {data_cfg["crop_mode"] for _, data_cfg in timm_cfgs}
    assert modes == {"center", "squash", "border"}
    for name, data_cfg in timm_cfgs:
        ref = create_transform(**data_cfg)
        ours = build_transform(_cfg_from_timm(data_cfg))
        assert ours.output_shape == tuple(data_cfg["input_size"])
        for label, img in IMAGES:
            out = ours(img)
            expected = ref(_library_rgb(img))
            assert out.dtype == torch.float32 and out.shape == data_cfg["input_size"], (name, label)
            assert torch.equal(out, expected), (name, label)


def test_timm_crop_pct_0_9_resizes_short_side_to_248(timm_cfgs):
    import torchvision.transforms.functional as TF
    from timm.data import create_transform
    from torchvision.transforms import InterpolationMode, Resize

    data_cfg = dict(timm_cfgs)["vit_tiny_patch16_224"]
    assert data_cfg["crop_pct"] == 0.9 and data_cfg["input_size"] == (3, 224, 224)
    resize = create_transform(**data_cfg).transforms[0]
    assert isinstance(resize, Resize) and resize.size == 248  # floor(224 / 0.9), not round() = 249
    ours = build_transform(_cfg_from_timm(data_cfg))
    assert ours.to_dict()["steps"][0].startswith("Resize(size=248,")
    img = _image((500, 375), "RGB")

    def by_hand(short: int) -> torch.Tensor:
        x = TF.resize(img, short, interpolation=InterpolationMode.BICUBIC, antialias=True)
        assert min(x.size) == short
        x = TF.to_tensor(TF.center_crop(x, [224, 224]))
        return TF.normalize(x, data_cfg["mean"], data_cfg["std"])

    out = ours(img)
    assert torch.equal(out, by_hand(248))
    assert not torch.allclose(out, by_hand(249))


def test_image_transform_to_dict_and_old_configs_load():
    cfg = PreprocessConfig(input_size=(160, 224), crop_pct=0.9, crop_mode="squash")
    d = build_transform(cfg).to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["kind"] == "timm" and d["crop_mode"] == "squash" and d["input_size"] == [160, 224]
    # Configs written before crop_mode existed still load, as center crops.
    old = {"input_size": [224, 224], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic", "crop_pct": 0.9}
    assert PreprocessConfig(**old).crop_mode == "center"
    assert PreprocessConfig(**cfg.to_dict()) == cfg
    with pytest.raises(VitdepthError, match="crop_mode"):
        PreprocessConfig(input_size=(8, 8), crop_mode="middle")
    assert PreprocessConfig(input_size=(8, 8), interpolation="lanczos").interpolation == "lanczos"


# ----------------------------------------------------------------------------------------------------------------
# Hugging Face image processors


@pytest.fixture(scope="module")
def hf_processor_dirs(tmp_path_factory) -> dict[str, object]:
    transformers = pytest.importorskip("transformers")
    made = {
        # ViT: squash straight to 224x224, no crop.
        "vit": transformers.ViTImageProcessor(size={"height": 224, "width": 224}),
        # DeiT: squash to 256x256, then center-crop 224.
        "deit": transformers.DeiTImageProcessor(
            size={"height": 256, "width": 256}, crop_size={"height": 224, "width": 224}, do_center_crop=True
        ),
        # CLIP: short side to 224 (aspect kept), center-crop 224, RGB conversion built in.
        "clip": transformers.CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}),
    }
    root = tmp_path_factory.mktemp("processors")
    dirs = {}
    for name, proc in made.items():
        proc.save_pretrained(root / name)
        dirs[name] = root / name
    return dirs


def _direct(proc, img: Image.Image) -> torch.Tensor:
    return proc(images=img, return_tensors="pt")["pixel_values"][0]


@pytest.mark.parametrize("name", ["vit", "deit", "clip"])
def test_hf_transform_equals_processor(hf_processor_dirs, name):
    from transformers import AutoImageProcessor

    t = hf_image_transform(hf_processor_dirs[name])
    assert isinstance(t, HFImageProcessorTransform) and t.output_shape == (3, 224, 224)
    proc = AutoImageProcessor.from_pretrained(hf_processor_dirs[name], local_files_only=True)
    for label, img in IMAGES:
        out = t(img)
        assert out.dtype == torch.float32 and out.shape == (3, 224, 224), label
        assert torch.equal(out, _direct(proc, _library_rgb(img))), label
        if img.mode == "RGB":
            assert torch.equal(out, _direct(proc, img)), label
    d = t.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["kind"] == "hf_image_processor" and d["processor_class"] == type(proc).__name__
    assert d["output_shape"] == [3, 224, 224] and d["source"] == str(hf_processor_dirs[name])
    assert {"size", "resample", "image_mean", "image_std", "do_rescale", "rescale_factor"} <= set(d)


def test_hf_vit_squashes_and_deit_crops(hf_processor_dirs):
    from transformers import AutoImageProcessor

    img = _image((500, 375), "RGB")
    vit = hf_image_transform(hf_processor_dirs["vit"])
    d = vit.to_dict()
    assert d["size"] == {"height": 224, "width": 224} and not d.get("do_center_crop")
    assert d["resample"] == "bilinear"
    proc = AutoImageProcessor.from_pretrained(hf_processor_dirs["vit"], local_files_only=True)
    center = img.crop((62, 0, 62 + 375, 375))  # the central 375x375 square
    assert not torch.allclose(vit(img), _direct(proc, center), atol=0.1)

    deit = hf_image_transform(hf_processor_dirs["deit"])
    assert deit.to_dict()["do_center_crop"] is True and deit.to_dict()["crop_size"] == {"height": 224, "width": 224}
    no_crop = build_transform(
        PreprocessConfig(input_size=(224, 224), mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=1.0, crop_mode="squash")
    )
    assert not torch.allclose(deit(img), no_crop(img), atol=0.1)
    # Same geometry as timm's squash at 224 / 256: close, though HF resizes tensors and timm resizes PIL images.
    squash = build_transform(
        PreprocessConfig(input_size=(224, 224), mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=224 / 256, crop_mode="squash")
    )
    assert (deit(img) - squash(img)).abs().mean() < 0.02


def test_hf_image_transform_missing_and_broken(tmp_path):
    transformers = pytest.importorskip("transformers")
    assert hf_image_transform(tmp_path) is None  # empty directory
    transformers.ViTConfig().save_pretrained(tmp_path / "model_only")
    assert hf_image_transform(tmp_path / "model_only") is None  # a model without preprocessor_config.json
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(VitdepthError, match="preprocessor_config.json") as info:
        hf_image_transform(broken)
    assert "\n" not in str(info.value)


def test_hf_variable_size_processor_refused():
    transformers = pytest.importorskip("transformers")
    proc = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, do_center_crop=False)
    with pytest.raises(VitdepthError, match="different sizes") as info:
        HFImageProcessorTransform(proc)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------------------------------------------
# torchvision weights' transforms and other callables


@pytest.fixture(scope="module")
def tv_transform():
    models = pytest.importorskip("torchvision.models")
    return models.get_model_weights("vit_b_16").DEFAULT.transforms()


def test_callable_transform_equals_torchvision(tv_transform):
    t = CallableTransform(tv_transform, {"weights": "ViT_B_16_Weights.IMAGENET1K_V1"})
    assert t.output_shape == (3, 224, 224)
    for label, img in IMAGES:
        out = t(img)
        assert out.dtype == torch.float32 and torch.equal(out, tv_transform(_library_rgb(img))), label
    with pytest.raises(RuntimeError):  # torchvision alone cannot take greyscale: RGB first matters
        tv_transform(_image((97, 211), "L"))
    d = t.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["kind"] == "callable" and d["weights"] == "ViT_B_16_Weights.IMAGENET1K_V1"
    assert d["class"].endswith("ImageClassification") and d["interpolation"] == "bilinear"
    assert d["crop_size"] == [224] and d["resize_size"] == [256]


def test_callable_transform_refuses_int_and_variable_outputs():
    from torchvision import transforms

    with pytest.raises(VitdepthError, match="float") as info:
        CallableTransform(transforms.Compose([transforms.Resize((8, 8)), transforms.PILToTensor()]))
    assert "\n" not in str(info.value)
    with pytest.raises(VitdepthError, match="different sizes"):
        CallableTransform(transforms.ToTensor())


# ----------------------------------------------------------------------------------------------------------------
# pickling (DataLoader workers started with spawn)


def test_transforms_pickle(hf_processor_dirs, tv_transform):
    transforms = [
        build_transform(PreprocessConfig(input_size=(160, 224), crop_pct=0.9)),
        build_transform(PreprocessConfig(input_size=(224, 160), crop_mode="border")),
        hf_image_transform(hf_processor_dirs["deit"]),
        hf_image_transform(hf_processor_dirs["clip"]),
        CallableTransform(tv_transform),
    ]
    img = _image((375, 500), "RGBA")
    for t in transforms:
        back = pickle.loads(pickle.dumps(t))
        assert type(back) is type(t) and back.output_shape == t.output_shape
        assert torch.equal(back(img), t(img)), repr(t)
    assert isinstance(transforms[0], ImageTransform)


def test_dataloader_workers(hf_processor_dirs):
    from vitdepth.data import create_source, iterate_batches

    src = create_source("synthetic:n=6,classes=2,size=40")
    for t in (
        build_transform(PreprocessConfig(input_size=(32, 24), crop_pct=0.9)),
        hf_image_transform(hf_processor_dirs["deit"]),
    ):
        one = list(iterate_batches(src, np.arange(6), t, batch_size=4))
        two = list(iterate_batches(src, np.arange(6), t, batch_size=4, num_workers=2))
        assert all(torch.equal(a.images, b.images) for a, b in zip(one, two, strict=True))
        assert one[0].images.shape[1:] == t.output_shape


# ----------------------------------------------------------------------------------------------------------------
# command-line overrides


def test_apply_preprocess_overrides():
    cfg = PreprocessConfig(input_size=(224, 224), crop_pct=0.9)
    assert apply_preprocess_overrides(cfg, []) == cfg
    new = apply_preprocess_overrides(
        cfg,
        [
            "mean=0.5,0.5,0.5",
            "std= 0.25, 0.5 ,1",
            "interpolation=Bilinear",
            "crop-pct=1",
            "crop_mode=squash",
            "input_size=256,192",
        ],
    )
    assert new == PreprocessConfig(
        input_size=(256, 192),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.5, 1.0),
        interpolation="bilinear",
        crop_pct=1.0,
        crop_mode="squash",
    )
    assert cfg.crop_pct == 0.9 and cfg.mean == (0.485, 0.456, 0.406)  # the original is untouched
    assert apply_preprocess_overrides(cfg, ["input_size=384"]).input_size == (384, 384)
    assert build_transform(new)(_image((97, 211), "RGB")).shape == (3, 256, 192)


@pytest.mark.parametrize(
    ("item", "match"),
    [
        ("crop_pct", "not KEY=VALUE"),
        ("=1", "not KEY=VALUE"),
        ("crop_pc=1", "did you mean 'crop_pct'"),
        ("size=224", "valid keys: mean, std"),
        ("mean=0.5,0.5", "mean needs 3 comma-separated"),
        ("mean=a,b,c", "mean has a malformed value; e.g. mean=0.5,0.5,0.5"),
        ("std=0.5,0,0.5", "std needs 3 positive"),
        ("input_size=224,224,3", "input_size needs 1 or 2"),
        ("input_size=0", "input_size needs 1 or 2"),
        ("input_size=22.4", "e.g. input_size=224,224"),
        ("crop_pct=0", "crop_pct needs a positive number"),
        ("crop_pct=nan", "crop_pct needs a positive number"),
        ("crop_mode=middle", "crop_mode needs one of center, squash, border"),
        ("interpolation=lanczos7", "interpolation needs one of bicubic"),
        ("mean=\n1,2", "mean"),
    ],
)
def test_apply_preprocess_overrides_errors(item, match):
    cfg = PreprocessConfig(input_size=(224, 224))
    with pytest.raises(VitdepthError, match=match) as info:
        apply_preprocess_overrides(cfg, [item])
    assert "\n" not in str(info.value)


def test_apply_preprocess_overrides_repeated_key():
    with pytest.raises(VitdepthError, match="given twice"):
        apply_preprocess_overrides(PreprocessConfig(input_size=(8, 8)), ["crop_pct=1", "crop-pct=0.9"])
