"""The model and data spec forms, described and checked without loading anything (standard library only).

``vitdepth models`` lists these, and ``vitdepth analyze`` rejects an unknown spec kind with them before torch,
timm or the data sources load, so both answer in a fraction of a second. The registries stay the source of
truth for loading: the adapters still ``register_adapter`` themselves (:mod:`vitdepth.models.registry`;
``tests/test_startup.py`` checks that :data:`MODEL_SPECS` equals what they register), and the data sources take
their examples, descriptions and unknown-spec message from here (``vitdepth.data.sources``).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from typing import NamedTuple


class SpecForm(NamedTuple):
    """One spec form: its kind (the part before ``:``), an example spec and a one-line description."""

    kind: str
    example: str
    description: str


#: The built-in model adapters, sorted by prefix (the order of ``list_adapters()``).
MODEL_SPECS: tuple[SpecForm, ...] = (
    SpecForm("file", "file:/tmp/fam/L", "a vitdepth checkpoint directory (config.json + model.safetensors)"),
    SpecForm("hf", "hf:google/vit-base-patch16-224",
             "a Hugging Face ViT-like model, a local directory or a hub id (ViT, DeiT, DINOv2/v3, BEiT, Data2Vec, "
             "MSN, MAE, I-JEPA, SigLIP, AIMv2, CLIP vision; see docs/models.md); hub ids from the Hugging Face "
             "cache, downloaded when allowed"),
    SpecForm("timm", "timm:vit_small_patch16_224",
             "timm ViTs (ViT, DeiT, registers, EVA-02, RoPE, DINOv3, BEiT, relpos, SigLIP, hybrids; see "
             "docs/models.md), NAME[.TAG]; timm's pretrained weights (Hugging Face cache, downloaded when allowed), "
             "--checkpoint or --random-init"),
    SpecForm("torchvision", "torchvision:vit_b_16",
             "torchvision ViTs (vit_b_16, vit_l_16, ...); DEFAULT weights through torch hub's cache (downloaded "
             "when allowed), --checkpoint or --random-init; the weights' own preprocessing"),
)

#: The built-in data sources, in the order ``list_sources()`` shows them.
DATA_SPECS: tuple[SpecForm, ...] = (
    SpecForm("digits", "digits", "scikit-learn's 1,797 8x8 handwritten digits, 10 classes, no download"),
    SpecForm("synthetic", "synthetic:n=2000,classes=10,size=224",
             "generated gratings (class sets orientation, frequency, hue); any size and count, seeded"),
    SpecForm("folder", "folder:PATH",
             "an ImageFolder tree PATH/<class>/<image> (png, jpg, ...); folder:PATH:split=val reads "
             "PATH/val/<class>/...; loose images without class folders are read unlabelled"),
    SpecForm("hf-dataset", "hf-dataset:PATH_OR_ID",
             "a Hugging Face datasets dataset: save_to_disk folder, .parquet/.arrow files or hub id; options "
             ":split=NAME,image=COL,label=COL,config=NAME (needs the 'datasets' package)"),
    SpecForm("wds", "wds:train-{000000..000009}.tar",
             "webdataset tar shards (KEY.jpg/png + KEY.cls), indexed once for random access; splits by a hash of "
             "each key"),
    SpecForm("csv", "csv:FILE",
             "a CSV of image paths (relative to the file) and labels, columns found by header or given as "
             ":path=COL,label=COL; no label column: unlabelled"),
)


# ---------------------------------------------------------------------------------------------------------------
# model specs


def model_spec_error(spec: str, forms: Iterable[tuple[str, str]] | None = None) -> str | None:
    """The one-line error for a model spec whose prefix names no adapter, or None when prefix and target are there.

    Args:
        spec: ``prefix:target``.
        forms: ``(prefix, example)`` of every adapter (default: :data:`MODEL_SPECS`); the registry passes its own.
    """
    known = {kind: example for kind, example in (forms if forms is not None else
                                                  ((f.kind, f.example) for f in MODEL_SPECS))}
    prefix, sep, target = spec.partition(":")
    if sep and prefix in known and target:
        return None
    valid = ", ".join(f"{p}:… (e.g. {known[p]})" for p in sorted(known))
    if sep and prefix in known:
        return f"model spec {spec!r} names no model after '{prefix}:'; valid forms: {valid}"
    if not sep:
        return f"unknown model spec {spec!r}: it needs a prefix{timm_name_hint(spec)}; valid forms: {valid}"
    close = difflib.get_close_matches(prefix, list(known), n=3)
    hint = f"; did you mean {', '.join(c + ':' + target for c in close)}?" if close else ""
    return f"unknown model spec prefix {prefix!r} in {spec!r}{hint} valid forms: {valid}"


def timm_name_hint(name: str) -> str:
    """`` (did you mean timm:NAME?)`` when ``name`` is a timm model name, else ``""``.

    timm's architecture names are Python function names, so anything else (a path, a hub id) is answered without
    importing timm (and torch); only a plausible name pays for the lookup.
    """
    if not name.split(".", 1)[0].isidentifier():
        return ""
    try:
        import timm
    except ImportError:
        return ""
    return f" (did you mean timm:{name}?)" if timm.is_model(name) else ""


# ---------------------------------------------------------------------------------------------------------------
# data specs


def data_spec_error(spec: object) -> str | None:
    """The one-line error for a data spec that is empty or of an unknown kind, or None when its kind is known.

    The same message as ``vitdepth.data.create_source``; the options and paths of a known kind are checked there.
    """
    if not isinstance(spec, str) or not spec.strip():
        return f"data spec must be a non-empty string, got {spec!r}; valid forms: {data_forms()}"
    spec = spec.strip()
    kind = spec.partition(":")[0]
    if kind.strip().lower() in {f.kind for f in DATA_SPECS}:
        return None
    return unknown_data_spec_message(spec, kind)


def data_forms() -> str:
    """The example specs of every data source, quoted, for error messages."""
    return ", ".join(f"'{f.example}'" for f in DATA_SPECS)


def unknown_data_spec_message(spec: str, kind: str) -> str:
    """The one-line error for a data spec of unknown kind, with the closest kinds and a hint for paths."""
    close = difflib.get_close_matches(kind.strip().lower(), [f.kind for f in DATA_SPECS], n=3, cutoff=0.5)
    hints = []
    if close:
        hints.append("did you mean " + " or ".join(f"'{c}'" for c in close) + "?")
    path = os.path.expanduser(spec)
    if os.path.isdir(path):
        hints.append(f"for a folder of images use 'folder:{spec}';")
    else:
        lower = spec.lower()
        for ends, suggested in ((".csv", "csv"), (".tsv", "csv"), (".tar", "wds"), (".parquet", "hf-dataset"),
                                (".arrow", "hf-dataset")):
            if lower.endswith(ends):
                hints.append(f"for this file use '{suggested}:{spec}';")
                break
    hint = (" " + " ".join(hints)) if hints else ""
    return f"unknown data spec '{spec}';{hint} valid forms: {data_forms()}"


# ---------------------------------------------------------------------------------------------------------------
# analyze flags checked before anything loads (and again by analyze() itself, with the same message)


def image_size_error(size: int | None) -> str | None:
    """The error for an ``--image-size`` that is not a positive number of pixels, else None."""
    return None if size is None or size >= 1 else f"--image-size must be a positive number of pixels, got {size}"


def device_form_error(device: str) -> str | None:
    """The error for a ``--device`` that is neither ``cpu`` nor ``cuda[:N]``, else None (availability is
    checked where torch is loaded)."""
    if device == "cpu" or device.startswith("cuda"):
        return None
    return f"--device {device!r} is not understood; use cpu or cuda[:N]"
