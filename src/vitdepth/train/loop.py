"""``vitdepth train``: train the sizes of a family with one recipe, resumably, on 1..N processes.

Determinism: every epoch reseeds Python, NumPy and torch from (seed, epoch) and draws its
data order from a generator seeded the same way, so a run resumed from the last epoch
checkpoint continues exactly as if it had not stopped (tested). The learning rate is a pure
function of the global step (linear warmup, then cosine to ``min_lr``).

Resume: ``--resume`` continues only the run the checkpoints record. The recipe (every field but its
description), the data (spec and content hash), seed, batch size, ``--samples`` and the epoch count (the
learning-rate schedule spans all epochs, so another count would train the remaining epochs on another
schedule) must equal what each size's checkpoint recorded; otherwise one line names each difference. A
size without a checkpoint starts from scratch only when another requested size has one (a family run
interrupted before reaching it); with none at all ``--resume`` is an error. The ISI monitor's loss window
and warning state are saved with each epoch checkpoint and ``monitor.csv`` rows past the resume point are
dropped, so a resumed run's ``monitor.csv`` equals an uninterrupted run's (tested).

Distributed: under torchrun each rank takes every world_size-th image of each global batch
and DistributedDataParallel averages the gradients, which equals one process on the global
batch (tested with two gloo processes). Only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
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
from ..distributed import DistContext, all_reduce_sum, barrier, init_distributed
from ..models.checkpoint import apply_state_dict, load_state_dict, save_checkpoint
from ..outputs import OutputLock, check_writable
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
    _check_out_writable(out, sizes)
    points = _resume_points(out, sizes) if cfg.resume else {}
    if cfg.resume:
        _refuse_differences(out, [d for meta in points.values() for d in _setting_differences(cfg, recipe, meta)])
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise VitdepthError(f"--device {cfg.device} was asked for but CUDA is not available; use --device cpu")
    ctx = init_distributed(cfg.device)
    device = torch.device(f"cuda:{ctx.local_rank}" if cfg.device.startswith("cuda") and ctx.enabled
                          else cfg.device)
    if recipe["batch_size"] % ctx.world_size:
        raise VitdepthError(f"batch size {recipe['batch_size']} is not divisible by the {ctx.world_size} processes")
    aug = recipe["augment"]
    if (aug["mixup"] or aug["cutmix"]) and (recipe["batch_size"] // ctx.world_size) % 2:
        raise VitdepthError(f"recipe fields 'augment.mixup' / 'augment.cutmix' need an even batch per process; got "
                            f"{recipe['batch_size'] // ctx.world_size}; use an even --batch-size")

    source = create_source(recipe["data"], seed=recipe["seed"])
    labels = np.asarray(source.labels)
    check_labels(labels, source.class_names)
    indices = stratified_subset(labels, cfg.samples, recipe["seed"]) if cfg.samples else np.arange(len(source))
    splits = stratified_splits(labels[indices], tuple(recipe["split"]), seed=recipe["seed"])
    split_idx = {name: indices[splits == i] for i, name in enumerate(("train", "val", "test"))}
    if points:
        identity = source.identity()
        _refuse_differences(out, [d for meta in points.values() for d in _data_differences(identity, meta)])
        for size, meta in points.items():
            _refuse_part_way(out, size, meta, len(split_idx["train"]) // recipe["batch_size"])
    results = {}
    # one writer per family directory: a second `vitdepth train --out` on it fails at once, naming this one
    with OutputLock(out) if ctx.is_main else contextlib.nullcontext():
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
    start_epoch, step, history, monitor_state = 0, 0, [], None
    last = out / "last"
    if cfg.resume and (last / "train_state.pt").is_file():
        apply_state_dict(model, load_state_dict(last / "model.safetensors"), str(last))
        state = torch.load(last / "train_state.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        monitor_state = state.get("monitor")
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
                             log=None if cfg.quiet else (lambda s: print(s, file=sys.stderr, flush=True)),
                             start_step=step)  # rows a killed run wrote past its last checkpoint are redone
        if monitor_state is not None:
            monitor.load_state_dict(monitor_state)
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
            _write_last(model, optimizer, last, recipe, size, args, epoch + 1, step, history, source, cfg.samples,
                        None if monitor is None else monitor.state_dict())
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
        meta = _checkpoint_meta(recipe, size, args, source, history, cfg.samples)
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


def _checkpoint_meta(recipe, size, args, source, history, samples) -> dict:
    return {"arch": "timm.VisionTransformer", "model_args": args, "preprocess": preprocess_of(recipe).to_dict(),
            "class_names": list(source.class_names), "recipe_name": recipe["name"], "recipe": recipe,
            "recipe_hash": recipe_hash(recipe), "size": size, "data": source.identity(), "seed": recipe["seed"],
            "samples": samples, "history": history, "vitdepth_version": __version__, "torch": torch.__version__}


def _write_last(model, optimizer, last: Path, recipe, size, args, epoch, step, history, source, samples,
                monitor_state) -> None:
    # written to a temporary sibling and swapped in, so an interruption never leaves a torn resume point
    tmp = last.with_name("last.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    meta = _checkpoint_meta(recipe, size, args, source, history, samples)
    meta.update({"epoch": epoch, "complete": False})
    save_checkpoint(model, tmp, meta)
    torch.save({"optimizer": optimizer.state_dict(), "epoch": epoch, "step": step, "history": history,
                "monitor": monitor_state}, tmp / "train_state.pt")
    if last.exists():
        shutil.rmtree(last)
    tmp.rename(last)


def _check_out_writable(out: Path, sizes: list[str]) -> None:
    """Refuse an ``--out`` that cannot be written before any data is read or any step is trained."""
    if out.exists() and not out.is_dir():
        raise VitdepthError(f"--out {out} is a file, not a directory; choose another --out")
    if not out.exists():
        check_writable(out)  # probes the first existing directory above it
        return
    for s in sizes:
        d = out / s
        if d.exists() and not d.is_dir():
            raise VitdepthError(f"--out {out}: {d} is a file, not a directory; move it or choose another --out")
        check_writable(d)  # probes --out itself
        if d.is_dir():
            check_writable(d / "last")  # probes the size directory a resumed run writes into


# recipe fields the CLI overrides -> the option
_OVERRIDES = {"seed": "--seed", "batch_size": "--batch-size", "epochs": "--epochs", "data": "--data"}
_UNSET = object()


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise VitdepthError(f"{path} cannot be read ({e}); remove {path.parent} or start a new --out") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("recipe"), dict):
        raise VitdepthError(f"{path} records no recipe, so the run cannot be checked; start a new --out")
    return meta


def _resume_points(out: Path, sizes: list[str]) -> dict[str, dict]:
    """``{size: checkpoint config}`` of the requested sizes that have something to resume (complete or last)."""
    points = {}
    for s in sizes:
        final, last = out / s / "config.json", out / s / "last"
        meta = _read_meta(final) if final.is_file() else {}
        if meta.get("complete"):
            points[s] = meta
        elif (last / "train_state.pt").is_file():
            points[s] = _read_meta(last / "config.json")
    if not points:
        there = [s for s in sizes if (out / s).exists()]
        fix = ("drop --resume and pass --overwrite to start again" if there
               else "drop --resume to start a new run")
        raise VitdepthError(f"--resume: nothing to resume in {out} (no epoch checkpoint of size "
                            f"{', '.join(sizes)}); {fix}")
    return points


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _show(value) -> str:
    return "not given (all images)" if value is None else str(value)


def _setting_differences(cfg: TrainConfig, recipe: dict, meta: dict) -> list[str]:
    """What this call would train differently from the run a checkpoint records (empty when it may resume)."""
    recorded = meta["recipe"]
    diffs = []
    for key, flag in _OVERRIDES.items():
        now, then = recipe[key], recorded.get(key, _UNSET)
        if then is _UNSET or now == then:
            continue
        what = f"{flag} {now}" if getattr(cfg, key) is not None else f"the recipe's {key} {now} (no {flag} given)"
        diffs.append(f"{what} differs from the checkpoint's {then}")
    if "samples" in meta and meta["samples"] != cfg.samples:  # checkpoints before 'samples' was recorded: unknown
        diffs.append(f"--samples {_show(cfg.samples)} differs from the checkpoint's {_show(meta['samples'])}")
    if recipe["name"] != recorded.get("name"):
        diffs.append(f"recipe {recipe['name']!r} differs from the checkpoint's {recorded.get('name')!r}")
    skip = {*_OVERRIDES, "name", "description"}  # the description changes nothing that is trained
    now_flat = _flat({k: v for k, v in recipe.items() if k not in skip})
    then_flat = _flat({k: v for k, v in recorded.items() if k not in skip})
    changed = sorted(k for k in now_flat.keys() | then_flat.keys()
                     if now_flat.get(k, _UNSET) != then_flat.get(k, _UNSET))
    if changed:
        shown = [f"'{k}' {now_flat.get(k, 'absent')} (checkpoint: {then_flat.get(k, 'absent')})" for k in changed[:3]]
        more = f" (+{len(changed) - 3} more)" if len(changed) > 3 else ""
        fields = "fields" if len(changed) > 1 else "field"
        verb = "differ" if len(changed) > 1 else "differs"
        diffs.append(f"recipe {fields} {', '.join(shown)}{more} {verb} from the checkpoint's recipe (hash "
                     f"{recipe_hash(recipe)[:12]} vs {str(meta.get('recipe_hash'))[:12]})")
    return diffs


def _data_differences(identity: dict, meta: dict) -> list[str]:
    """A difference only visible once the data is read: the same data spec with other images or labels."""
    then = meta.get("data") or {}
    if then.get("spec") == identity["spec"] and then.get("content_hash") not in (None, identity["content_hash"]):
        return [f"the data {identity['spec']} has changed since the checkpoint (content hash "
                f"{identity['content_hash'][:12]} vs {str(then['content_hash'])[:12]})"]
    return []


def _refuse_part_way(out: Path, size: str, meta: dict, steps_per_epoch: int) -> None:
    """A --max-steps run stopped inside an epoch saved that epoch as done: resuming would skip its rest."""
    epoch, history = meta.get("epoch"), meta.get("history") or []
    if meta.get("complete") or not epoch or not history:
        return
    step = history[-1].get("step")
    if step != epoch * steps_per_epoch:
        raise VitdepthError(f"cannot resume {out / size}: --max-steps stopped it at step {step}, part-way through "
                            f"epoch {epoch} (which ends at step {epoch * steps_per_epoch}); start a new --out or "
                            "pass --overwrite")


def _refuse_differences(out: Path, diffs: list[str]) -> None:
    unique = list(dict.fromkeys(diffs))  # the sizes of a family usually share each difference
    if unique:
        raise VitdepthError(f"cannot resume {out}: {'; '.join(unique)}; resume with the same settings or start a "
                            "new --out")


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
