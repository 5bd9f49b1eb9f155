"""JPEG draft decoding: how far the model input moves, and how much time it saves.

``--tolerance`` decodes procedurally generated JPEGs (smooth gradients, shapes and noise, quality 90) in full and
drafted to :func:`vitdepth.data.transforms.draft_size_for`, runs both through the same eval transform and prints
the mean and max absolute difference of the final model input in 0..255 pixel units (the normalised tensor times
``255 * std``), per config and image size. ``--speed`` times decode + transform per image, full vs draft, on one
large JPEG. Without flags both run.

    .venv/bin/python benchmarks/bench_decode.py --tolerance
    .venv/bin/python benchmarks/bench_decode.py --speed --size 4000x3000 --repeat 20
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
import torch
from PIL import Image, ImageDraw

from vitdepth.data.sources import decode_image_bytes
from vitdepth.data.transforms import PreprocessConfig, build_transform, draft_size_for

SIZES = ((300, 400), (640, 480), (480, 640), (1024, 768), (2000, 1500), (1500, 2000), (3000, 1000))
CONFIGS = {
    "timm default (224, crop_pct 0.875, bicubic)": PreprocessConfig((224, 224), crop_pct=0.875),
    "center 224 crop_pct 1.0": PreprocessConfig((224, 224), crop_pct=1.0),
    "center 224 bilinear 0.9": PreprocessConfig((224, 224), crop_pct=0.9, interpolation="bilinear"),
    "squash 224 0.875": PreprocessConfig((224, 224), crop_pct=0.875, crop_mode="squash"),
    "border 224 1.0": PreprocessConfig((224, 224), crop_pct=1.0, crop_mode="border"),
    "center 384 1.0": PreprocessConfig((384, 384), crop_pct=1.0),
    "center 224x320 0.875": PreprocessConfig((224, 320), crop_pct=0.875),
}


def natural_jpeg(width: int, height: int, seed: int = 0, quality: int = 90) -> bytes:
    """JPEG bytes of a photo-like picture: smooth colour gradients, random filled shapes, fine texture and noise."""
    rng = np.random.default_rng([seed, width, height])
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    x /= width
    y /= height
    img = np.empty((height, width, 3), np.float32)
    for c in range(3):
        a, b, p = rng.uniform(-1, 1, 3)
        img[..., c] = 128 + 60 * np.sin(3 * a * x + 2 * b * y + 6 * p) + 30 * (x - y) * a
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(40):
        x0, x1 = sorted(rng.uniform(0, width, 2))
        y0, y1 = sorted(rng.uniform(0, height, 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    arr = np.asarray(pil, dtype=np.float32)
    # Fine texture (a few pixels per cycle, like foliage or fabric) and sensor-like noise.
    arr += 12 * np.sin(2 * np.pi * (x * width / 5.3 + y * height / 7.1))[..., None]
    arr += rng.normal(0, 6, arr.shape).astype(np.float32)
    buf = io.BytesIO()
    Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def pixel_diff(a: torch.Tensor, b: torch.Tensor, std_rgb) -> tuple[float, float]:
    """Mean and max absolute difference of two normalised model inputs, in 0..255 pixel units."""
    std = torch.tensor(tuple(std_rgb), dtype=torch.float64).view(3, 1, 1)
    d = ((a.double() - b.double()) * std * 255.0).abs()
    return float(d.mean()), float(d.max())


def _hf_transforms() -> list:
    """Default ViT (224x224 squash, bilinear), DeiT (256 squash, crop 224) and BiT/DINOv2 (short side 224, crop 224)
    processors, when transformers is installed."""
    try:
        import transformers
    except ImportError:
        return []
    from vitdepth.data.transforms import HFImageProcessorTransform

    out = []
    for name in ("ViTImageProcessor", "DeiTImageProcessor", "BitImageProcessor"):
        proc = getattr(transformers, name)()
        out.append((f"hf {name}", HFImageProcessorTransform(proc, name), proc.image_std))
    return out


def tolerance(factor_override: int | None = None) -> tuple[float, float]:
    """Print the table; return the worst mean and max over everything."""
    worst_mean = worst_max = 0.0
    transforms = [(label, build_transform(cfg), cfg.std) for label, cfg in CONFIGS.items()]
    transforms += _hf_transforms()
    for label, t, std in transforms:
        draft = draft_size_for(t)
        if factor_override is not None:
            draft = tuple(d // 2 * factor_override for d in draft)
        print(f"{label}: draft_size={draft}")
        for w, h in SIZES:
            data = natural_jpeg(w, h)
            full = decode_image_bytes(data, "full")
            small = decode_image_bytes(data, "draft", draft)
            mean, mx = pixel_diff(t(full), t(small), std)
            worst_mean, worst_max = max(worst_mean, mean), max(worst_max, mx)
            print(f"  {w}x{h} -> {small.size[0]}x{small.size[1]}: mean {mean:.3f}  max {mx:.2f}")
    print(f"worst: mean {worst_mean:.3f}  max {worst_max:.2f}")
    return worst_mean, worst_max


def speed(width: int, height: int, repeat: int) -> None:
    cfg = PreprocessConfig((224, 224), crop_pct=0.875)
    t = build_transform(cfg)
    draft = draft_size_for(t)
    data = natural_jpeg(width, height)
    torch.set_num_threads(1)
    modes = (("full", None), ("draft", draft))
    for label, size in modes:  # warm-up
        t(decode_image_bytes(data, label, size))
    times: dict[str, list[float]] = {label: [] for label, _ in modes}
    for _ in range(repeat):  # interleaved, so drifting machine load hits both alike
        for label, size in modes:
            t0 = time.perf_counter()
            t(decode_image_bytes(data, label, size))
            times[label].append(time.perf_counter() - t0)
    drafted = decode_image_bytes(data, "draft", draft).size
    med = {}
    for label, ts in times.items():
        ts.sort()
        med[label] = ts[len(ts) // 2]
        decoded = drafted if label == "draft" else (width, height)
        print(f"{label:5s} {width}x{height} ({len(data) / 1e6:.2f} MB JPEG, decoded {decoded}): "
              f"median {1e3 * med[label]:.1f} ms, min {1e3 * ts[0]:.1f} ms per image (decode + transform, 1 thread)")
    print(f"speed-up (median): {med['full'] / med['draft']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tolerance", action="store_true")
    parser.add_argument("--speed", action="store_true")
    parser.add_argument("--size", default="2000x1500", help="WxH of the speed test's JPEG")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--factor", type=int, default=None,
                        help="draft to FACTOR x the resize target instead of 2x (1 shows what is too aggressive)")
    args = parser.parse_args()
    both = not (args.tolerance or args.speed)
    if args.tolerance or both:
        tolerance(args.factor)
    if args.speed or both:
        w, h = (int(v) for v in args.size.lower().split("x"))
        speed(w, h, args.repeat)


if __name__ == "__main__":
    main()
