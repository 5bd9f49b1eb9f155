"""``vitdepth train``: train the sizes of a family with one recipe, resumably, on 1..N processes.

Determinism: every epoch reseeds Python, NumPy and torch from (seed, epoch) and draws its
data order from a generator seeded the same way, so a run resumed from the last epoch
checkpoint continues exactly as if it had not stopped (tested). The learning rate is a pure
function of the global step (linear warmup, then cosine to ``min_lr``).

Distributed: under torchrun each rank takes every world_size-th image of each global batch
and DistributedDataParallel averages the gradients, which equals one process on the global
batch (tested with two gloo processes). Only rank 0 writes files.
"""

from __future__ import annotations

import csv
import json
import math
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import __version__
from .._errors import VitdepthError
from ..data import (
    PreprocessConfig,
    build_transform,
    check_labels,
    create_source,
    iterate_batches,
    stratified_splits,
    stratified_subset,
)
from ..models.checkpoint import apply_state_dict, load_state_dict, save_checkpoint
from .distributed import DistContext, all_reduce_sum, barrier, init_distributed
from .monitor import ISIMonitor
from .recipe import load_recipe, model_args, recipe_hash


@dataclass
class TrainConfig:
    """A ``vitdepth train`` call: a recipe plus the overrides the CLI allows."""

    recipe: str
    out: str
    sizes: list[str] | None = None
    data: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    seed: int | None = None
    device: str = "cpu"
    samples: int | None = None
    resume: bool = False
    overwrite: bool = False
    quiet: bool = False
    monitor: bool = True
    max_steps: int | None = None  # stop each size after this many optimiser steps (smoke runs, tests)
    num_workers: int = 0
    callbacks: list[Callable[[dict], None]] = field(default_factory=list)  # called after each epoch checkpoint


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_at(step: int, total: int, warmup: int, lr: float, warmup_lr: float, min_lr: float) -> float:
    """Linear warmup from ``warmup_lr`` to ``lr`` over ``warmup`` steps, then cosine to ``min_lr``."""
    if step < warmup:
        return warmup_lr + (lr - warmup_lr) * step / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    # timm / DeiT convention: no weight decay on biases, norms, position embedding and prefix tokens
    decay, no_decay = [], []
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _train_transform(recipe: dict):
    from timm.data import create_transform

    aug = recipe["augment"]
    return create_transform(
        input_size=recipe["image_size"], is_training=True, scale=tuple(aug["scale"]), ratio=tuple(aug["ratio"]),
        hflip=aug["hflip"], color_jitter=aug["color_jitter"] or None, auto_augment=aug["randaugment"],
        interpolation=recipe["interpolation"], mean=tuple(recipe["mean"]), std=tuple(recipe["std"]),
        re_prob=aug["random_erasing"])


def preprocess_of(recipe: dict) -> PreprocessConfig:
    """Evaluation preprocessing of a recipe (also stored in the checkpoint for ``analyze``)."""
    s = recipe["image_size"]
    return PreprocessConfig(input_size=(s, s), mean=tuple(recipe["mean"]), std=tuple(recipe["std"]),
                            interpolation=recipe["interpolation"], crop_pct=1.0)


class _TrainImages(torch.utils.data.Dataset):
    def __init__(self, source, transform):
        self.source, self.transform = source, transform

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        return self.transform(self.source.load(int(i))), int(self.source.labels[int(i)])


@torch.no_grad()
def evaluate(model: nn.Module, source, indices: np.ndarray, transform, batch_size: int, device) -> tuple[int, int]:
    """(correct, total) top-1 over the given dataset indices."""
    was = model.training
    model.eval()
    correct = total = 0
    for b in iterate_batches(source, indices, transform, batch_size):
        if len(b.indices) == 0:
            continue
        logits = model(b.images.to(device))
        y = torch.as_tensor(source.labels[b.indices], device=device)
        correct += int((logits.argmax(-1) == y).sum())
        total += len(b.indices)
    model.train(was)
    return correct, total


def _log(ctx: DistContext, quiet: bool, msg: str) -> None:
    if ctx.is_main and not quiet:
        print(msg, file=sys.stderr, flush=True)


def train(cfg: TrainConfig) -> dict[str, Path]:
    """Train every requested size of the recipe's family; returns ``{size: checkpoint dir}``."""
    recipe = load_recipe(cfg.recipe)
    for key, value in (("epochs", cfg.epochs), ("batch_size", cfg.batch_size), ("seed", cfg.seed),
                       ("data", cfg.data)):
        if value is not None:
            recipe[key] = value
    if recipe["epochs"] < 1 or recipe["batch_size"] < 1:
        raise VitdepthError("--epochs and --batch-size must be >= 1")
    sizes = cfg.sizes or list(recipe["sizes"])
    for s in sizes:
        model_args(recipe, s, 2)  # validates the size name
    out = Path(cfg.out)
    for s in sizes:
        if (out / s).exists() and not (cfg.resume or cfg.overwrite):
            raise VitdepthError(f"{out / s} already exists; pass --resume to continue it or --overwrite to "
                                "start again")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise VitdepthError(f"--device {cfg.device} was asked for but CUDA is not available; use --device cpu")
    ctx = init_distributed(cfg.device)
    device = torch.device(f"cuda:{ctx.local_rank}" if cfg.device.startswith("cuda") and ctx.enabled
                          else cfg.device)
    if recipe["batch_size"] % ctx.world_size:
        raise VitdepthError(f"batch size {recipe['batch_size']} is not divisible by the {ctx.world_size} processes")

    source = create_source(recipe["data"], seed=recipe["seed"])
    labels = np.asarray(source.labels)
    check_labels(labels, source.class_names)
    indices = stratified_subset(labels, cfg.samples, recipe["seed"]) if cfg.samples else np.arange(len(source))
    splits = stratified_splits(labels[indices], tuple(recipe["split"]), seed=recipe["seed"])
    split_idx = {name: indices[splits == i] for i, name in enumerate(("train", "val", "test"))}
    results = {}
    for size in sizes:
        results[size] = _train_size(cfg, recipe, size, source, split_idx, ctx, device)
    if ctx.is_main:
        summary = {s: json.loads((p / "config.json").read_text()).get("test_acc") for s, p in results.items()}
        (out / "family.json").write_text(json.dumps({"recipe": recipe["name"], "recipe_hash": recipe_hash(recipe),
                                                     "test_acc": summary}, indent=2))
    barrier(ctx)
    return results


def _train_size(cfg: TrainConfig, recipe: dict, size: str, source, split_idx, ctx: DistContext, device) -> Path:
    from timm.models.vision_transformer import VisionTransformer

    out = Path(cfg.out) / size
    final_cfg = out / "config.json"
    if cfg.resume and final_cfg.is_file() and json.loads(final_cfg.read_text()).get("complete"):
        _log(ctx, cfg.quiet, f"{size}: already complete, skipping ({out})")
        return out
    if cfg.overwrite and not cfg.resume and out.exists() and ctx.is_main:
        shutil.rmtree(out)
    barrier(ctx)
    num_classes = len(source.class_names)
    args = model_args(recipe, size, num_classes)
    seed = recipe["seed"]
    _seed_all(seed)
    model = VisionTransformer(**args).to(device)
    opt_cfg, sched = recipe["optimizer"], recipe["schedule"]
    global_batch = recipe["batch_size"]
    lr = opt_cfg["lr"] * (global_batch / opt_cfg["lr_batch_reference"] if opt_cfg["lr_batch_reference"] else 1)
    optimizer = torch.optim.AdamW(_param_groups(model, opt_cfg["weight_decay"]), lr=lr,
                                  betas=tuple(opt_cfg["betas"]), eps=opt_cfg["eps"])
    n_train = len(split_idx["train"])
    steps_per_epoch = n_train // global_batch
    if steps_per_epoch == 0:
        raise VitdepthError(f"the train split has {n_train} images, fewer than one batch of {global_batch}; "
                            "lower --batch-size")
    total_steps = steps_per_epoch * recipe["epochs"]
    warmup_steps = int(round(sched["warmup_epochs"] * steps_per_epoch))
    start_epoch, step, history = 0, 0, []
    last = out / "last"
    if cfg.resume and (last / "train_state.pt").is_file():
        apply_state_dict(model, load_state_dict(last / "model.safetensors"), str(last))
        state = torch.load(last / "train_state.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, step, history = int(state["epoch"]), int(state["step"]), list(state["history"])
        _log(ctx, cfg.quiet, f"{size}: resuming after epoch {start_epoch} (step {step})")
    ddp = model
    if ctx.enabled:
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
    eval_tf = build_transform(preprocess_of(recipe))
    monitor = None
    if cfg.monitor and ctx.is_main and len(split_idx["val"]) >= 2:
        held_out = split_idx["val"][: recipe["monitor"]["images"]]
        images = torch.stack([eval_tf(source.load(int(i))) for i in held_out])
        monitor = ISIMonitor(model, images, every=recipe["monitor"]["every"], out_dir=out, warmup_steps=warmup_steps,
                             log=None if cfg.quiet else (lambda s: print(s, file=sys.stderr, flush=True)))
    mixup = _mixup(recipe, len(source.class_names))
    criterion = _criterion(recipe, mixup)
    dataset = _TrainImages(source, _train_transform(recipe))
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else torch.autocast("cpu", enabled=False))
    t0 = time.perf_counter()
    model.train()
    stopped = False
    for epoch in range(start_epoch, recipe["epochs"]):
        _seed_all(seed * 100_003 + epoch)
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = split_idx["train"][torch.randperm(n_train, generator=g).numpy()]
        batches = [order[b * global_batch:(b + 1) * global_batch][ctx.rank::ctx.world_size]
                   for b in range(steps_per_epoch)]
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=cfg.num_workers)
        loss_sum = torch.zeros(2, dtype=torch.float64)
        t_epoch = time.perf_counter()
        for x, y in loader:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total_steps, warmup_steps, lr, sched["warmup_lr"], sched["min_lr"])
            x, y = x.to(device), y.to(device)
            if mixup is not None:
                x, y = mixup(x, y)
            with autocast:
                loss = criterion(ddp(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if opt_cfg["grad_clip"]:
                torch.nn.utils.clip_grad_norm_(model.parameters(), opt_cfg["grad_clip"])
            optimizer.step()
            loss_value = float(loss.detach())
            loss_sum += torch.tensor([loss_value * len(x), len(x)], dtype=torch.float64)
            if monitor is not None:
                monitor(step, loss_value)
            step += 1
            if cfg.max_steps is not None and step >= cfg.max_steps:
                stopped = True
                break
        all_reduce_sum(ctx, loss_sum)
        correct, total = evaluate(model, source, split_idx["val"], eval_tf, 256, device)
        rec = {"epoch": epoch + 1, "step": step, "train_loss": float(loss_sum[0] / max(1.0, float(loss_sum[1]))),
               "val_acc": correct / total if total else float("nan"), "lr": optimizer.param_groups[0]["lr"],
               "epoch_time_s": time.perf_counter() - t_epoch}
        history.append(rec)
        _log(ctx, cfg.quiet, f"{size} epoch {epoch + 1}/{recipe['epochs']}: loss {rec['train_loss']:.4f} "
                             f"val_acc {rec['val_acc']:.4f} ({time.perf_counter() - t0:.0f}s)")
        if ctx.is_main:
            _write_last(model, optimizer, last, recipe, size, args, epoch + 1, step, history, source)
        barrier(ctx)
        for cb in cfg.callbacks:
            cb({"size": size, **rec})
        if stopped:
            break
    if monitor is not None:
        monitor.close()
    correct, total = evaluate(model, source, split_idx["test"], eval_tf, 256, device)
    test_acc = correct / total if total else float("nan")
    train_time = sum(r["epoch_time_s"] for r in history)
    if ctx.is_main:
        meta = _checkpoint_meta(recipe, size, args, source, history)
        meta.update({"test_acc": test_acc, "test_n": total, "complete": not stopped,
                     "train_time_s": train_time, "max_steps": cfg.max_steps})
        save_checkpoint(model, out, meta)
        with open(out / "train_log.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(history[0]) if history else ["epoch"])
            w.writeheader()
            w.writerows(history)
        _log(ctx, cfg.quiet, f"{size}: test_acc {test_acc:.4f} on {total} held-out images -> {out}")
    barrier(ctx)
    return out


def _checkpoint_meta(recipe, size, args, source, history) -> dict:
    return {"arch": "timm.VisionTransformer", "model_args": args, "preprocess": preprocess_of(recipe).to_dict(),
            "class_names": list(source.class_names), "recipe_name": recipe["name"], "recipe": recipe,
            "recipe_hash": recipe_hash(recipe), "size": size, "data": source.identity(), "seed": recipe["seed"],
            "history": history, "vitdepth_version": __version__, "torch": torch.__version__}


def _write_last(model, optimizer, last: Path, recipe, size, args, epoch, step, history, source) -> None:
    # written to a temporary sibling and swapped in, so an interruption never leaves a torn resume point
    tmp = last.with_name("last.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    meta = _checkpoint_meta(recipe, size, args, source, history)
    meta.update({"epoch": epoch, "complete": False})
    save_checkpoint(model, tmp, meta)
    torch.save({"optimizer": optimizer.state_dict(), "epoch": epoch, "step": step, "history": history},
               tmp / "train_state.pt")
    if last.exists():
        shutil.rmtree(last)
    tmp.rename(last)


def _mixup(recipe: dict, num_classes: int):
    aug = recipe["augment"]
    if not (aug["mixup"] or aug["cutmix"]):
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=aug["mixup"], cutmix_alpha=aug["cutmix"], label_smoothing=recipe["label_smoothing"],
                 num_classes=num_classes)


def _criterion(recipe: dict, mixup):
    if mixup is not None:
        from timm.loss import SoftTargetCrossEntropy

        return SoftTargetCrossEntropy()
    return nn.CrossEntropyLoss(label_smoothing=recipe["label_smoothing"])
