"""Training recipes: one data file per family, validated field by field.

A recipe fixes everything except model size (data, augmentation, optimiser, schedule,
epochs, batch size, seed), so the sizes of a family differ only in width, depth and heads, as
in the paper's ViT-S/B/L comparison (arXiv 2511.21635) and the DeiT recipe (Touvron et al.
2021). Recipes ship as JSON in ``vitdepth/train/recipes``; a path to a JSON file works too.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
from importlib import resources
from numbers import Real
from pathlib import Path

from .._errors import VitdepthError

# field -> (type(s), check, requirement text); nested dicts use dotted names
_SIZE_FIELDS = {"embed_dim": int, "depth": int, "num_heads": int}
SCHEMA: dict[str, tuple] = {
    "name": (str, None, "a string"),
    "description": (str, None, "a string"),
    "data": (str, None, "a data spec string"),
    "image_size": (int, lambda v: v >= 8, "an int >= 8"),
    "patch_size": (int, lambda v: v >= 1, "an int >= 1"),
    "mlp_ratio": (Real, lambda v: v > 0, "a number > 0"),
    "drop_path_rate": (Real, lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "sizes": (dict, lambda v: len(v) > 0, "a non-empty mapping size -> {embed_dim, depth, num_heads}"),
    "mean": (list, lambda v: len(v) == 3, "a list of 3 numbers"),
    "std": (list, lambda v: len(v) == 3 and all(x > 0 for x in v), "a list of 3 numbers > 0"),
    "interpolation": (str, lambda v: v in ("bilinear", "bicubic", "nearest"), "bilinear, bicubic or nearest"),
    "optimizer.name": (str, lambda v: v == "adamw", "'adamw'"),
    "optimizer.lr": (Real, lambda v: v > 0, "a number > 0"),
    "optimizer.lr_batch_reference": ((int, type(None)), lambda v: v is None or v > 0,
                                     "null or an int > 0 (lr is scaled by batch_size / this)"),
    "optimizer.weight_decay": (Real, lambda v: v >= 0, "a number >= 0"),
    "optimizer.betas": (list, lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two numbers in [0, 1)"),
    "optimizer.eps": (Real, lambda v: v > 0, "a number > 0"),
    "optimizer.grad_clip": ((Real, type(None)), lambda v: v is None or v > 0, "null or a number > 0"),
    "schedule.warmup_epochs": (Real, lambda v: v >= 0, "a number >= 0"),
    "schedule.warmup_lr": (Real, lambda v: v >= 0, "a number >= 0"),
    "schedule.min_lr": (Real, lambda v: v >= 0, "a number >= 0"),
    "label_smoothing": (Real, lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "augment.scale": (list, lambda v: len(v) == 2 and 0 < v[0] <= v[1] <= 1, "[min, max] with 0 < min <= max <= 1"),
    "augment.ratio": (list, lambda v: len(v) == 2 and 0 < v[0] <= v[1], "[min, max] with 0 < min <= max"),
    "augment.hflip": (Real, lambda v: 0 <= v <= 1, "a probability"),
    "augment.color_jitter": (Real, lambda v: v >= 0, "a number >= 0"),
    "augment.randaugment": ((str, type(None)), lambda v: v is None or v.startswith("rand-"),
                            "null or a timm RandAugment string such as 'rand-m9-mstd0.5-inc1'"),
    "augment.random_erasing": (Real, lambda v: 0 <= v <= 1, "a probability"),
    "augment.mixup": (Real, lambda v: v >= 0, "a number >= 0 (mixup alpha; 0 = off)"),
    "augment.cutmix": (Real, lambda v: v >= 0, "a number >= 0 (cutmix alpha; 0 = off)"),
    "epochs": (int, lambda v: v >= 1, "an int >= 1"),
    "batch_size": (int, lambda v: v >= 1, "an int >= 1"),
    "seed": (int, None, "an int"),
    "split": (list, lambda v: len(v) == 3 and abs(sum(v) - 1) < 1e-9 and min(v) >= 0,
              "three fractions train/val/test summing to 1"),
    "monitor.every": (int, lambda v: v >= 1, "an int >= 1 (steps between ISI monitor evaluations)"),
    "monitor.images": (int, lambda v: v >= 2, "an int >= 2 (size of the fixed held-out monitor batch)"),
}
_SECTIONS = {k.split(".")[0] for k in SCHEMA if "." in k}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if k in _SECTIONS and not prefix and isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def validate_recipe(recipe: dict, source: str) -> dict:
    """Check every field; raise a one-line :class:`VitdepthError` naming the first bad one."""
    if not isinstance(recipe, dict):
        raise VitdepthError(f"recipe {source} must be a JSON object")
    flat = _flatten(recipe)
    for key in flat:
        if key not in SCHEMA:
            close = difflib.get_close_matches(key, list(SCHEMA), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise VitdepthError(f"recipe {source} has an unknown field '{key}'{hint}")
    for key, (types, check, requirement) in SCHEMA.items():
        if key not in flat:
            raise VitdepthError(f"recipe {source} lacks the field '{key}' ({requirement})")
        value = flat[key]
        ok = isinstance(value, types) and not isinstance(value, bool)
        if ok and isinstance(value, list):
            ok = all(isinstance(x, Real) and not isinstance(x, bool) for x in value)
        if ok:  # JSON's Infinity / NaN pass most range checks
            ok = all(math.isfinite(x) for x in (value if isinstance(value, list) else [value]) if isinstance(x, Real))
        if ok and check is not None:
            ok = bool(check(value))
        if not ok:
            raise VitdepthError(f"recipe field '{key}' in {source} must be {requirement}; got {value!r}")
    for size, spec in recipe["sizes"].items():
        if not isinstance(spec, dict) or set(spec) != set(_SIZE_FIELDS):
            raise VitdepthError(f"recipe field 'sizes.{size}' in {source} must have exactly the keys "
                                f"{', '.join(_SIZE_FIELDS)}; got {spec!r}")
        for k, t in _SIZE_FIELDS.items():
            if not isinstance(spec[k], t) or spec[k] < 1:
                raise VitdepthError(f"recipe field 'sizes.{size}.{k}' in {source} must be an int >= 1; "
                                    f"got {spec[k]!r}")
        if spec["embed_dim"] % spec["num_heads"]:
            raise VitdepthError(f"recipe field 'sizes.{size}' in {source}: embed_dim {spec['embed_dim']} is not "
                                f"divisible by num_heads {spec['num_heads']}")
    randaugment = recipe["augment"]["randaugment"]
    if randaugment is not None:
        problem = randaugment_problem(randaugment)
        if problem:
            raise VitdepthError(f"recipe field 'augment.randaugment' in {source} must be null or a timm RandAugment "
                                f"string such as 'rand-m9-mstd0.5-inc1'; got {randaugment!r} ({problem})")
    if recipe["image_size"] % recipe["patch_size"]:
        raise VitdepthError(f"recipe field 'patch_size' in {source} must divide image_size {recipe['image_size']}")
    return recipe


# numeric sections of a timm RandAugment string: key -> (parser, check, requirement)
_RANDAUGMENT_SECTIONS = {
    "m": (int, lambda v: v >= 0, "an int magnitude >= 0"),
    "n": (int, lambda v: v >= 1, "an int number of ops >= 1"),
    "p": (float, lambda v: 0 <= v <= 1, "a probability"),
    "mstd": (float, lambda v: v >= 0, "a magnitude std >= 0"),
    "mmax": (int, lambda v: v >= 1, "an int maximum magnitude >= 1"),
    "inc": (int, lambda v: v in (0, 1), "0 or 1"),
}


def randaugment_problem(value: str) -> str | None:
    """What is wrong with a timm RandAugment string, or None when timm reads it as written.

    timm's own parser (:func:`timm.data.auto_augment.rand_augment_transform`) silently skips sections it does
    not understand ("rand-bogus" builds the default RandAugment) and falls back to the default ops for an unknown
    transform set ("rand-tbogus"), so each section is checked here first, then timm builds the transform.

    Args:
        value: the recipe's ``augment.randaugment`` string, e.g. ``"rand-m9-mstd0.5-inc1"``.

    Returns:
        None when the string is valid, else a short description of the first problem (for a one-line error).
    """
    from timm.data.auto_augment import rand_augment_choices, rand_augment_transform

    parts = value.split("-")
    if parts[0] != "rand":
        return "it must start with 'rand-'"
    fallback = rand_augment_choices("", increasing=True)
    for part in parts[1:]:
        if part.startswith("t"):
            if rand_augment_choices(part[1:], increasing=True) is fallback:
                return f"unknown transform set '{part[1:]}' in section '{part}'"
            continue
        match = re.fullmatch(r"([a-z]+)(\d.*)", part)
        if not match or match.group(1) not in _RANDAUGMENT_SECTIONS:
            return (f"unknown section '{part}'; sections are m<int>, n<int>, p<float>, mstd<float>, mmax<int>, "
                    "inc<0|1>, t<name>")
        parse, check, requirement = _RANDAUGMENT_SECTIONS[match.group(1)]
        try:
            number = parse(match.group(2))
        except ValueError:
            return f"section '{part}' must be '{match.group(1)}' followed by {requirement}"
        if not check(number):
            return f"section '{part}' must be '{match.group(1)}' followed by {requirement}"
    try:
        rand_augment_transform(value, None)
    except Exception as e:  # noqa: BLE001 - any failure of timm's parser is a bad string
        return f"timm cannot build it: {type(e).__name__}: {e}".splitlines()[0]
    return None


def list_recipes() -> list[str]:
    """Names of the recipes shipped with vitdepth."""
    files = resources.files("vitdepth.train").joinpath("recipes")
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".json"))


def load_recipe(name_or_path: str) -> dict:
    """A shipped recipe by name, or a JSON file by path, validated."""
    path = Path(name_or_path)
    if path.suffix == ".json" or path.is_file():
        if not path.is_file():
            raise VitdepthError(f"recipe file {path} does not exist")
        text, source = path.read_text(), str(path)
    else:
        names = list_recipes()
        if name_or_path not in names:
            close = difflib.get_close_matches(name_or_path, names, n=2)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise VitdepthError(f"unknown recipe {name_or_path!r}{hint} (shipped: {', '.join(names)}; or pass a "
                                ".json path)")
        text = resources.files("vitdepth.train").joinpath("recipes", f"{name_or_path}.json").read_text()
        source = f"{name_or_path}.json"
    try:
        recipe = json.loads(text)
    except json.JSONDecodeError as e:
        raise VitdepthError(f"recipe {source} is not valid JSON ({e.msg} at line {e.lineno})") from None
    return validate_recipe(recipe, source)


def recipe_hash(recipe: dict) -> str:
    """sha256 of the recipe's canonical JSON (what was trained, independent of formatting)."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def model_args(recipe: dict, size: str, num_classes: int) -> dict:
    """timm ``VisionTransformer`` keyword arguments of one size of the family."""
    if size not in recipe["sizes"]:
        raise VitdepthError(f"size {size!r} is not in recipe {recipe['name']!r} (sizes: "
                            f"{', '.join(recipe['sizes'])})")
    return {"img_size": recipe["image_size"], "patch_size": recipe["patch_size"],
            "mlp_ratio": float(recipe["mlp_ratio"]), "drop_path_rate": float(recipe["drop_path_rate"]),
            "num_classes": num_classes, **recipe["sizes"][size]}
