"""Train the small Hugging Face ViT that benchmark (b) analyzes: seeded, on scikit-learn's digits.

The model is a ``ViTForImageClassification`` (image 32 px, patch 4 → 64 patches + [CLS], hidden 64,
6 layers, 4 heads, MLP 256), trained for 20 epochs (AdamW, one-cycle lr 3e-4, batch 16; about a minute on
2 cores, ~94% test accuracy of its own head) on the *train* split of vitdepth's own stratified 70/10/20 split
(seed 0), so the test images that both pipelines score probes on were never seen in training. The
digits (8×8) are upsampled to 32 px with the same eval transform ``vitdepth analyze hf:DIR --data digits``
uses, and the directory gets a ``preprocessor_config.json`` (size, mean, std, bicubic) so that vitdepth and
``ViTImageProcessor`` both read the same preprocessing from it.

Usage (normally called by ``bench_analyze.py --part b``)::

    .venv/bin/python benchmarks/digits_vit.py OUT_DIR [--epochs 20]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

IMAGE_SIZE = 32
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
ARCH = {"image_size": IMAGE_SIZE, "patch_size": 4, "num_channels": 3, "hidden_size": 64, "num_hidden_layers": 6,
        "num_attention_heads": 4, "intermediate_size": 256, "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0, "num_labels": 10}
SEED = 0
FRACTIONS = (0.7, 0.1, 0.2)


def digits_tensors() -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """All 1,797 digits preprocessed exactly as vitdepth does for this model, labels and split codes."""
    from vitdepth.data import PreprocessConfig, build_transform, create_source, stratified_splits

    src = create_source("digits")
    transform = build_transform(PreprocessConfig(input_size=(IMAGE_SIZE, IMAGE_SIZE), mean=MEAN, std=STD,
                                                 interpolation="bicubic"))
    x = torch.stack([transform(src.load(i)) for i in range(len(src))])
    labels = np.asarray(src.labels)
    return x, labels, stratified_splits(labels, FRACTIONS, seed=SEED)


def train(out: Path, epochs: int = 20, batch_size: int = 16, lr: float = 3e-4) -> dict:
    """Train, save with ``save_pretrained`` plus ``preprocessor_config.json``, return a summary."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(SEED)
    x, labels, splits = digits_tensors()
    y = torch.as_tensor(labels)
    tr = torch.as_tensor(np.flatnonzero(splits == 0))
    te = torch.as_tensor(np.flatnonzero(splits == 2))
    config = ViTConfig(**ARCH, id2label={i: str(i) for i in range(10)}, label2id={str(i): i for i in range(10)})
    model = ViTForImageClassification(config)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * ((len(tr) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(SEED)
    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        perm = tr[torch.randperm(len(tr), generator=gen)]
        for i in range(0, len(perm), batch_size):
            b = perm[i:i + batch_size]
            loss = torch.nn.functional.cross_entropy(model(pixel_values=x[b]).logits, y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.inference_mode():
        pred = torch.cat([model(pixel_values=x[te[i:i + 256]]).logits.argmax(-1) for i in range(0, len(te), 256)])
    test_acc = float((pred == y[te]).float().mean())
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    pre = {"do_resize": True, "size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE}, "resample": 3,
           "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(MEAN),
           "image_std": list(STD), "image_processor_type": "ViTImageProcessor"}
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    summary = {"arch": ARCH, "epochs": epochs, "train_images": len(tr), "test_images": len(te),
               "head_test_accuracy": test_acc, "train_s": time.perf_counter() - t0}
    (out / "bench_training.json").write_text(json.dumps(summary, indent=2))
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--epochs", type=int, default=20)
    args = ap.parse_args()
    print(json.dumps(train(args.out, epochs=args.epochs), indent=2))


if __name__ == "__main__":
    main()
