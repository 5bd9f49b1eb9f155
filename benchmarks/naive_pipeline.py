"""The naive layer-analysis pipeline that benchmark (b) compares ``vitdepth analyze`` against.

Written the way such analyses are commonly done today, as one script:

1. Hugging Face ``ViTForImageClassification`` loaded with ``attn_implementation="eager"``, and every batch run
   with ``output_hidden_states=True, output_attentions=True``;
2. ALL hidden states (N × T × d per layer) and attentions (N × H × T × T per block) kept in memory for the whole
   dataset (per-batch outputs collected in lists, then concatenated per layer);
3. per layer and token set (``cls``, ``mean`` of patches): ``StandardScaler`` + scikit-learn
   ``LogisticRegression(max_iter=1000)``, fitted on train, scored on test;
4. token similarity from full P × P cosine matrices (mean over i ≠ j), attention entropy from the stored
   attentions.

Same data (scikit-learn digits, pixels 0..16 scaled to 0..255 as vitdepth's ``digits`` source does), same
preprocessing (``ViTImageProcessor`` from the model directory's ``preprocessor_config.json``), same batch size and
the same train / val / test split as vitdepth (``vitdepth.data.stratified_splits``, 70/10/20, seed 0), so
both score their probes on the same test images. Val is not used (no hyper-parameter search here).

With ``--folder DIR`` (an ImageFolder tree, ``DIR/<class>/<image>``, as issue "Fast where users wait" measures
it) the images are read from the files instead: listed in vitdepth's order (sorted classes, sorted files) so the
split is the same, and decoded with PIL batch by batch inside the forward loop, as such scripts usually do.

Usage::

    .venv/bin/python benchmarks/naive_pipeline.py MODEL_DIR --out result.json [--batch-size 32] [--folder DIR]

Prints nothing but a final line; the result (accuracies, token-similarity curve, timings, own peak RSS) goes
to ``--out`` as JSON.
"""

from __future__ import annotations

import time

T_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from transformers import ViTForImageClassification, ViTImageProcessor  # noqa: E402

from vitdepth.data import stratified_splits  # noqa: E402  (only for the identical split)


def main() -> None:
    ap = argparse.ArgumentParser(description="naive per-layer analysis (benchmark baseline)")
    ap.add_argument("model_dir")
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--folder", default=None, help="read the images from this ImageFolder tree of files")
    args = ap.parse_args()
    t = {"imports_s": time.perf_counter() - T_START}

    t0 = time.perf_counter()
    if args.folder:
        root = Path(args.folder)
        classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        files = [(f, c) for c, name in enumerate(classes) for f in sorted((root / name).rglob("*.png"))]
        images = [f for f, _ in files]  # paths: decoded in the forward loop
        labels = np.array([c for _, c in files], dtype=np.int64)
    else:
        digits = load_digits()
        gray = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        images = [Image.fromarray(np.repeat(g[:, :, None], 3, axis=2), mode="RGB") for g in gray]
        labels = digits.target.astype(np.int64)
    splits = stratified_splits(labels, (0.7, 0.1, 0.2), seed=args.seed)
    processor = ViTImageProcessor.from_pretrained(args.model_dir)
    model = ViTForImageClassification.from_pretrained(args.model_dir, attn_implementation="eager").eval()
    t["load_s"] = time.perf_counter() - t0

    # 1-2. forward every batch with all hidden states and attentions, keep everything
    t0 = time.perf_counter()
    hidden_batches, attn_batches = [], []
    with torch.no_grad():
        for i in range(0, len(images), args.batch_size):
            batch = [Image.open(x).convert("RGB") if isinstance(x, Path) else x for x in images[i:i + args.batch_size]]
            pixels = processor(images=batch, return_tensors="pt")["pixel_values"]
            out = model(pixel_values=pixels, output_hidden_states=True, output_attentions=True)
            hidden_batches.append([h.numpy() for h in out.hidden_states])
            attn_batches.append([a.numpy() for a in out.attentions])
    t["forward_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    hidden = [np.concatenate([b[layer] for b in hidden_batches]) for layer in range(len(hidden_batches[0]))]
    attentions = [np.concatenate([b[layer] for b in attn_batches]) for layer in range(len(attn_batches[0]))]
    del hidden_batches, attn_batches
    t["concat_s"] = time.perf_counter() - t0
    held = sum(h.nbytes for h in hidden) + sum(a.nbytes for a in attentions)

    # 3. logistic-regression probes per layer and token set
    t0 = time.perf_counter()
    train, test = splits == 0, splits == 2
    acc: dict[str, list[float]] = {"cls": [], "mean": []}
    for h in hidden:
        feats = {"cls": h[:, 0], "mean": h[:, 1:].mean(axis=1)}
        for ts, x in feats.items():
            clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ConvergenceWarning on some layers
                clf.fit(x[train], labels[train])
            acc[ts].append(float(clf.score(x[test], labels[test])))
    t["probes_s"] = time.perf_counter() - t0

    # 4. token similarity from full P x P cosine matrices, attention entropy from the kept attentions
    t0 = time.perf_counter()
    token_sim = []
    for h in hidden:
        z = torch.from_numpy(h[:, 1:])
        zn = torch.nn.functional.normalize(z, dim=-1)
        sim = zn @ zn.transpose(1, 2)  # (N, P, P)
        p = sim.shape[-1]
        off_diag = (sim.sum(dim=(1, 2)) - sim.diagonal(dim1=1, dim2=2).sum(-1)) / (p * (p - 1))
        token_sim.append(float(off_diag.double().mean()))
    attn_entropy = []
    for a in attentions:
        a = torch.from_numpy(a)
        ent = -(a * torch.log(a.clamp_min(1e-30))).sum(-1) / np.log(a.shape[-1])
        attn_entropy.append(float(ent.double().mean()))
    t["similarity_s"] = time.perf_counter() - t0
    t["total_in_process_s"] = time.perf_counter() - T_START

    result = {
        "layers": [str(i) for i in range(len(hidden))],
        "probe_acc": acc,
        "token_sim": token_sim,
        "attn_entropy": attn_entropy,
        "n_images": len(images),
        "n_test": int(test.sum()),
        "held_bytes": int(held),
        "timings": t,
        "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"naive pipeline: {len(images)} images, best mean-probe acc {max(acc['mean']):.4f}, "
          f"{held / 2**20:.0f} MiB of activations held")


if __name__ == "__main__":
    main()
