"""Hugging Face vision transformers: ViT, DeiT, DINOv2 (with and without registers), DINOv3, BEiT,
Data2Vec-vision, ViT-MSN, ViT-MAE (unmasked), I-JEPA, SigLIP, AIMv2 and the CLIP vision tower.

``hf:DIR`` loads a local ``save_pretrained`` directory offline (``local_files_only=True``). ``hf:ORG/NAME``
loads a hub id the library's own way (``from_pretrained(id)``): the Hugging Face cache is read first and
files are downloaded when allowed, so ``HF_HUB_OFFLINE``, ``HF_HOME`` and a pre-filled cache behave exactly as
in transformers. The helpers for the hub cache here (:func:`hub_cache_dir`, :func:`hub_failure`) also serve
the ``timm:`` adapter.

The model keeps its default attention implementation (SDPA where available); the taps
recompute the probabilities from what it feeds the kernel, which equals ``output_attentions``
of the eager implementation (tested per family). The prefix (CLS, distillation, register
tokens) is read from the embeddings module, so models without [CLS] (SigLIP, I-JEPA, AIMv2)
get no ``cls`` rows. ViT-MAE encoders mask and shuffle patches on every forward; they are run
with ``mask_ratio = 0`` and the identity order (the model's own ``noise`` argument).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import logging
import os
import re
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from ..._errors import VitdepthError
from ...data.transforms import HFImageProcessorTransform, PreprocessConfig
from ..checkpoint import file_sha256, read_json_object
from ..registry import register_adapter
from ..structure import find_sites
from ..tapped import Reference, TappedModel

_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL resample codes used in HF preprocessor configs


def hf_prefix_names(model: nn.Module, config) -> tuple[tuple[str, ...], bool]:
    """Prefix tokens of a HF vision model, from its embeddings: CLS, then distillation or register tokens.

    The count is checked against the tokens that reach block 0 when the model is wrapped.
    """
    emb = getattr(model, "embeddings", None)
    names = []
    has_cls = emb is not None and any(getattr(emb, a, None) is not None for a in ("cls_token", "class_embedding"))
    if has_cls:
        names.append("cls")
    if emb is not None and getattr(emb, "distillation_token", None) is not None:
        names.append("dist")
    registers = getattr(emb, "register_tokens", None) if emb is not None else None
    count = int(registers.shape[1]) if isinstance(registers, torch.Tensor) else int(
        getattr(config, "num_register_tokens", 0) or 0)
    names += [f"reg{i}" for i in range(count)]
    return tuple(names), has_cls


def hf_preprocess(path: Path, config) -> PreprocessConfig:
    """Preprocessing from ``preprocessor_config.json``, else the config's image size and ImageNet stats."""
    size = getattr(config, "image_size", 224)
    size = (size, size) if isinstance(size, int) else tuple(size)
    cfg_file = path / "preprocessor_config.json"
    if not cfg_file.is_file():
        return PreprocessConfig(input_size=size)
    fix = "fix or remove it (or re-save the image processor with save_pretrained)"
    pp = read_json_object(cfg_file, fix)
    try:
        mean = tuple(pp.get("image_mean", (0.485, 0.456, 0.406)))
        std = tuple(pp.get("image_std", (0.229, 0.224, 0.225)))
        interp = _RESAMPLE.get(pp.get("resample", 3), "bicubic")
        crop = pp.get("crop_size") if pp.get("do_center_crop") else None
        rs = pp.get("size", {})
        if crop:
            crop_hw = (crop["height"], crop["width"]) if isinstance(crop, dict) else (crop, crop)
            short = rs.get("shortest_edge") if isinstance(rs, dict) else rs
            crop_pct = crop_hw[0] / short if short else 1.0
            return PreprocessConfig(input_size=crop_hw, mean=mean, std=std, interpolation=interp, crop_pct=crop_pct)
        if isinstance(rs, dict) and "height" in rs:
            size = (rs["height"], rs["width"])
        elif isinstance(rs, dict) and "shortest_edge" in rs:
            size = (rs["shortest_edge"], rs["shortest_edge"])
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
        raise VitdepthError(f"{cfg_file} does not describe fixed-size preprocessing ({type(e).__name__}: {e}); "
                            f"{fix}") from None
    return PreprocessConfig(input_size=size, mean=mean, std=std, interpolation=interp)


_RESAVE = "re-save the model with save_pretrained"


def _one_line(e: BaseException, limit: int = 200) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:limit]}" if text else type(e).__name__


def _check_config_json(path: Path) -> None:
    """Refuse a config.json that is not JSON, not an object or without model_type, before transformers reads it."""
    cfg_file = path / "config.json"
    raw = read_json_object(cfg_file, _RESAVE)
    model_type = raw.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise VitdepthError(f"{cfg_file} has no model_type (not a Hugging Face model config); {_RESAVE}")


def _check_hf_weights(path: Path) -> None:
    """Refuse truncated safetensors and pickled weights that are not plain tensors, before transformers reads them.

    transformers prefers ``model*.safetensors``; their headers are checked (a cut-off file fails there). Without
    them it reads ``pytorch_model*.bin``, which are opened here with ``torch.load(weights_only=True)``: a pickle
    that would import or run anything is refused without running it, whatever transformers version is installed.
    """
    _check_hf_weights_in(path, f"{_RESAVE} (safetensors)")


def _check_hf_weights_in(path: Path, fix: str) -> None:
    """:func:`_check_hf_weights` with ``fix`` ending its messages."""
    from ..checkpoint import check_safetensors, load_state_dict

    shards = sorted(path.glob("model*.safetensors"))
    if shards:
        for f in shards:
            check_safetensors(f, fix=fix)
        return
    for f in sorted(path.glob("pytorch_model*.bin")):
        load_state_dict(f, fix=fix)


_HF_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


def hf_image_transform(path_or_id: str | os.PathLike[str]) -> HFImageProcessorTransform | None:
    """Load the image processor saved with a Hugging Face model, as a transform.

    A directory is read with ``transformers.AutoImageProcessor.from_pretrained(dir, local_files_only=True)``
    (nothing is downloaded). A hub id is loaded the library's normal way, ``from_pretrained(id)``: from the
    Hugging Face cache, downloading when allowed (``HF_HUB_OFFLINE`` is honoured).

    Args:
        path_or_id: A model directory, or a hub id (``org/name``).

    Returns:
        The transform, or ``None`` when there is no processor config (a directory without
        ``preprocessor_config.json``, a hub repo without one, or one that is neither cached nor downloadable).

    Raises:
        VitdepthError: transformers is not installed, a local processor config exists but cannot be loaded, or
            the processor does not give fixed-size images.
    """
    try:
        from transformers import AutoImageProcessor
    except ImportError as exc:
        raise VitdepthError(
            "Hugging Face preprocessing needs transformers, which is not installed; pip install 'vitdepth[hf]'"
        ) from exc
    where = os.fspath(path_or_id)
    local = Path(os.path.expanduser(where))
    is_dir = local.is_dir()
    if is_dir and not any((local / name).is_file() for name in _HF_PROCESSOR_FILES):
        return None
    try:
        if is_dir:
            processor = AutoImageProcessor.from_pretrained(str(local), local_files_only=True)
        else:
            with quiet_hub():
                processor = AutoImageProcessor.from_pretrained(where)
    except (OSError, ValueError) as exc:
        if not is_dir:
            return None
        reason = " ".join(str(exc).split())[:300]
        # A config that is there but broken must not fall back to other preprocessing silently.
        raise VitdepthError(
            f"cannot load the image processor in '{local}' ({type(exc).__name__}: {reason}); "
            "fix or remove its preprocessor_config.json"
        ) from exc
    return HFImageProcessorTransform(processor, source=str(local) if is_dir else where)


# --- the Hugging Face hub cache (also used by the timm: adapter) ---------------------------------------------------

_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")


def is_hub_id(text: str) -> bool:
    """Whether ``text`` has the form of a Hugging Face model id, ``org/name`` (letters, digits, ``-_.``)."""
    return bool(_HUB_ID.fullmatch(text)) and ".." not in text and "--" not in text and not text.endswith(".")


def hub_cache_dir() -> str:
    """The Hugging Face hub cache the libraries read and fill now (``huggingface_hub.constants.HF_HUB_CACHE``)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def hf_cli() -> str:
    """The command-line tool the installed huggingface_hub provides: ``hf``, or ``huggingface-cli`` before 0.34."""
    try:
        from importlib.metadata import distribution

        names = {ep.name for ep in distribution("huggingface_hub").entry_points}
    except Exception:  # noqa: BLE001 - metadata unreadable: name the current tool
        return "hf"
    return "huggingface-cli" if "huggingface-cli" in names and "hf" not in names else "hf"


@contextlib.contextmanager
def quiet_hub():
    """Silence huggingface_hub's warnings (``Retrying in 1s``...) while a file is fetched: a miss is one line."""
    log = logging.getLogger("huggingface_hub")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _causes(e: BaseException | None):
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def hub_failure(e: BaseException, spec: str, repo: str, fill: str, alternative: str,
                subject: str | None = None) -> VitdepthError | None:
    """A one-line error for a hub failure of ``repo``, or ``None`` when ``e`` is not about reaching the hub.

    Args:
        e: what the library raised (its causes are searched).
        spec: the model spec, which starts the message.
        repo: the hub repository.
        fill: what follows ``hf download`` in the command that fills the cache (the repo, maybe file names).
        alternative: the other way out, after "or".
        subject: what is missing, with its verb (default ``"SPEC is"``).
    """
    from huggingface_hub import constants, errors

    for c in _causes(e):
        if isinstance(c, errors.GatedRepoError):
            return VitdepthError(f"{spec}: the hub repository {repo} is gated; accept its terms on huggingface.co and "
                                 f"log in with `{hf_cli()} auth login`, or {alternative}")
        if isinstance(c, errors.RepositoryNotFoundError):
            return VitdepthError(f"{spec}: there is no model {repo} on the Hugging Face hub (or it is private: log in "
                                 f"with `{hf_cli()} auth login`); check the name, or {alternative}")
        if isinstance(c, errors.RevisionNotFoundError):
            return VitdepthError(f"{spec}: the hub repository {repo} has no such revision; check it, or {alternative}")
        if isinstance(c, (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled, ConnectionError, TimeoutError)):
            why = ("HF_HUB_OFFLINE is set" if getattr(constants, "HF_HUB_OFFLINE", False)
                   else "the hub cannot be reached")
            return VitdepthError(f"{subject or spec + ' is'} not in the Hugging Face cache {hub_cache_dir()} and "
                                 f"cannot be downloaded ({why}); fill the cache with `{hf_cli()} download {fill}` "
                                 f"or {alternative}")
    return None


def snapshot_commit(path: str | os.PathLike[str] | None) -> str | None:
    """The commit of a file in the hub cache, from its path ``.../snapshots/<commit>/<file>``."""
    if not path:
        return None
    parts = Path(path).parts
    idx = max((i for i, part in enumerate(parts) if part == "snapshots"), default=-1)
    return parts[idx + 1] if 0 <= idx < len(parts) - 2 else None


def cached_hub_file(repo: str, filename: str, revision: str | None = None) -> str | None:
    """Path of ``filename`` of ``repo`` in the hub cache (``try_to_load_from_cache``), ``None`` when not there."""
    from huggingface_hub import try_to_load_from_cache

    try:
        hit = try_to_load_from_cache(repo, filename, revision=revision)
    except Exception:  # noqa: BLE001 - an id or revision the cache cannot hold: not cached
        return None
    return hit if isinstance(hit, str) else None


def _is_mae(model: nn.Module) -> bool:
    return getattr(model.config, "model_type", "") == "vit_mae"


def _hf_call(model: nn.Module, x: torch.Tensor, **kwargs):
    size = getattr(model.config, "image_size", None)
    size = (size, size) if isinstance(size, int) else tuple(size or ())
    if size and tuple(x.shape[-2:]) != size and "interpolate_pos_encoding" in inspect.signature(
            model.forward).parameters:
        kwargs["interpolate_pos_encoding"] = True  # --image-size: the model's own position-embedding resampling
    if _is_mae(model):
        if float(getattr(model.config, "mask_ratio", 0.0)) != 0.0:
            raise VitdepthError(f"this ViT-MAE masks {model.config.mask_ratio:.0%} of the patches on every forward; "
                                "set model.config.mask_ratio = 0 to analyze it unmasked")
        patches = int((x.shape[-2] // model.config.patch_size) * (x.shape[-1] // model.config.patch_size))
        # increasing noise keeps every patch in its own place: the identity order
        kwargs["noise"] = torch.arange(patches, device=x.device, dtype=torch.float32).expand(x.shape[0], -1)
    return model(pixel_values=x, **kwargs)


def hf_reference(model: nn.Module, x: torch.Tensor) -> Reference:
    """The library's own hidden states and eager ``output_attentions`` (attention switched to eager for one forward)."""
    # the config setter reaches every attention module (they read it at call time), also for a bare vision tower
    # (a CLIP / SigLIP vision transformer is a plain nn.Module without set_attn_implementation)
    from transformers.utils import logging as hf_logging

    config = model.config
    previous, verbosity = config._attn_implementation, hf_logging.get_verbosity()
    config._attn_implementation = "eager"
    hf_logging.set_verbosity_error()  # "does not support output_attentions" notices: handled below
    try:
        with torch.inference_mode():
            out = _hf_call(model, x, output_hidden_states=True, output_attentions=True)
    finally:
        config._attn_implementation = previous
        hf_logging.set_verbosity(verbosity)
    hidden = getattr(out, "hidden_states", None)
    attns = getattr(out, "attentions", None)
    if (not attns or any(a is None for a in attns)) and hasattr(model, "_from_config"):
        # families that pick their attention class when built (BEiT-style Data2Vec) ignore the switch above:
        # a twin built eager with the same weights gives the library's own eager attention
        twin = type(model)._from_config(copy.deepcopy(model.config), attn_implementation="eager")
        twin.load_state_dict(model.state_dict())
        twin.to(device=x.device, dtype=x.dtype).eval()
        with torch.inference_mode():
            attns = getattr(_hf_call(twin, x, output_attentions=True), "attentions", None)
        del twin
    return Reference({str(i): h for i, h in enumerate(hidden)} if hidden else None,
                     list(attns) if attns and all(a is not None for a in attns) else None,
                     "Hugging Face output_hidden_states and eager output_attentions")


def _hf_output(model: nn.Module, x):
    out = _hf_call(model, x)
    return _main_output(model, out)


def _main_output(model: nn.Module, out):
    for name in ("logits", "pooler_output", "last_hidden_state"):
        value = getattr(out, name, None)
        if value is not None:
            return value
    raise VitdepthError(f"{type(model).__name__} returned no logits, pooler_output or last_hidden_state")


_HF_ALTERNATIVE = "pass hf:DIR, a local save_pretrained directory"
_HUB_WEIGHTS = (("model.safetensors", "model.safetensors.index.json"),
                ("pytorch_model.bin", "pytorch_model.bin.index.json"))


def _hub_files(repo: str, commit: str | None) -> dict[str, str]:
    """sha256 of the files of ``repo`` at ``commit`` that the load read from the hub cache: config, processor
    config and the weights transformers prefers (safetensors, else ``pytorch_model.bin``; shards of an index)."""
    names = ["config.json", *_HF_PROCESSOR_FILES]
    for single, index in _HUB_WEIGHTS:
        if cached_hub_file(repo, single, commit):
            names.append(single)
            break
        index_file = cached_hub_file(repo, index, commit)
        if index_file:
            try:
                shards = sorted(set(json.loads(Path(index_file).read_text(encoding="utf-8"))["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                shards = []
            names += [index, *shards]
            break
    found = {name: cached_hub_file(repo, name, commit) for name in names}
    return {name: file_sha256(path) for name, path in found.items() if path}


def _hf_auto(transformers, config):
    architectures = getattr(config, "architectures", None)
    architectures = architectures if isinstance(architectures, (list, tuple)) else []
    return (transformers.AutoModelForImageClassification
            if any(isinstance(a, str) and a.endswith("ForImageClassification") for a in architectures)
            else transformers.AutoModel)


def _vision_config(config):
    if getattr(config, "model_type", "") in ("clip", "siglip", "siglip2", "aimv2"):  # a full model: its vision tower
        return config.vision_config
    return config


def _from_config(transformers, config, where: str):
    try:
        return transformers.AutoModel.from_config(config)
    except Exception as e:  # noqa: BLE001 - a config transformers accepts but cannot build a model from
        raise VitdepthError(f"cannot build a Hugging Face model from {where} ({_one_line(e)}); {_RESAVE}") from None


def _load_hf_dir(transformers, path: Path, random_init: bool):
    """Config, model and weights record of a local ``save_pretrained`` directory, read offline."""
    _check_config_json(path)
    try:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers raises many types for a config it cannot use
        raise VitdepthError(f"{path / 'config.json'} is not a usable Hugging Face config ({_one_line(e)}); "
                            f"{_RESAVE}") from None
    config = _vision_config(config)
    if random_init:
        return config, _from_config(transformers, config, str(path / "config.json")), None
    _check_hf_weights(path)
    try:
        model = _hf_auto(transformers, config).from_pretrained(path, local_files_only=True)
    except VitdepthError:
        raise
    except Exception as e:  # noqa: BLE001 - missing / corrupt weights or config surface as many types
        raise VitdepthError(f"could not load the Hugging Face model in {path} ({_one_line(e)}); {_RESAVE}") from None
    wfile = next((path / f for f in ("model.safetensors", "pytorch_model.bin") if (path / f).is_file()), None)
    return config, model, {"source": "hf-directory", "path": str(path), "sha256": file_sha256(wfile) if wfile else None}


def _load_hf_hub(transformers, repo: str, random_init: bool):
    """Config, model and weights record of a hub id, loaded with ``from_pretrained(id)`` (the cache first,
    downloads when allowed). Weights already cached are checked first like a directory's (safetensors headers;
    a ``pytorch_model.bin`` opened with ``weights_only=True``); transformers itself loads with weights_only=True."""
    spec = f"hf:{repo}"

    def failed(e: BaseException, what: str) -> VitdepthError:
        return hub_failure(e, spec, repo, repo, _HF_ALTERNATIVE) or VitdepthError(
            f"{spec}: could not load the {what} from the Hugging Face hub ({_one_line(e)}); {_HF_ALTERNATIVE}")

    try:
        with quiet_hub():
            config = transformers.AutoConfig.from_pretrained(repo)
    except Exception as e:  # noqa: BLE001 - hub and config errors surface as many types
        raise failed(e, "config") from None
    commit = getattr(config, "_commit_hash", None) or snapshot_commit(cached_hub_file(repo, "config.json"))
    full_config, config = config, _vision_config(config)
    if random_init:
        return config, _from_config(transformers, config, spec), None
    cached_config = cached_hub_file(repo, "config.json", commit)
    if cached_config:  # weights already in this snapshot are checked before transformers reads them
        fix = f"delete them and fill the cache again with `{hf_cli()} download {repo}`"
        _check_hf_weights_in(Path(cached_config).parent, fix)
    try:
        with quiet_hub():
            model = _hf_auto(transformers, full_config).from_pretrained(repo)
    except VitdepthError:
        raise
    except Exception as e:  # noqa: BLE001 - missing / corrupt weights or hub errors surface as many types
        raise failed(e, "model") from None
    commit = getattr(model.config, "_commit_hash", None) or commit
    return config, model, {"source": "hf-hub", "id": repo, "commit": commit, "files": _hub_files(repo, commit)}


@register_adapter("hf")
def load_hf(target: str, *, checkpoint: str | None, random_init: bool, seed: int,
            image_size: int | None = None) -> TappedModel:
    try:
        import transformers
    except ImportError:
        raise VitdepthError("hf: models need Hugging Face transformers; pip install 'vitdepth[hf]'") from None
    path = Path(os.path.expanduser(target))
    hub = None
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise VitdepthError(f"hf model directory {path} has no config.json; pass a directory saved with "
                                "save_pretrained or a hub id such as google/vit-base-patch16-224")
    elif is_hub_id(target):
        hub = target
    else:
        raise VitdepthError(f"hf:{target} is neither an existing directory nor a Hugging Face hub id (org/name); "
                            "pass a directory saved with save_pretrained or an id such as google/vit-base-patch16-224")
    if checkpoint:
        raise VitdepthError("--checkpoint is not used with hf: models; the weights come from the directory or hub id")
    transformers.utils.logging.disable_progress_bar()  # keep the CLI's output to its own lines
    torch.manual_seed(seed)
    if hub is None:
        config, model, weights = _load_hf_dir(transformers, path, random_init)
    else:
        config, model, weights = _load_hf_hub(transformers, hub, random_init)
    if weights is None:
        weights = {"source": "random-init", "seed": seed}
    if _is_mae(model):
        model.config.mask_ratio = 0.0  # analyzed unmasked, in the identity patch order (see _hf_call)
    transform = None
    if hub is not None:
        transform = hf_image_transform(hub)  # also brings its preprocessor_config.json into the cache, read below
        transform = transform if image_size is None else None
        cached_config = cached_hub_file(hub, "config.json", weights.get("commit"))
        path = Path(cached_config).parent if cached_config else path  # the snapshot: its preprocessor_config.json
    elif image_size is None:
        transform = hf_image_transform(path)  # the model's own image processor, where the directory has one
    preprocess = hf_preprocess(path, config)
    if image_size is not None:
        preprocess = replace(preprocess, input_size=(image_size, image_size), crop_pct=1.0)
    tm = hf_tapped(model, f"hf:{target}", preprocess, interpolate=image_size is not None)
    tm.transform = transform
    tm.identity["weights"] = weights
    if image_size is not None:
        tm.identity["image_size"] = image_size
    return tm


def hf_tapped(model: nn.Module, spec: str, preprocess: PreprocessConfig | None = None,
              interpolate: bool = False) -> TappedModel:
    """Wrap a built Hugging Face vision model (a full CLIP / SigLIP is reduced to its vision tower).

    Args:
        model: the model.
        spec: recorded spec.
        preprocess: its preprocessing (default: the config's image size, ImageNet statistics).
        interpolate: run with ``interpolate_pos_encoding=True`` (another input size than the config's).
    """
    vision = getattr(model, "vision_model", None)
    model = vision if isinstance(vision, nn.Module) else model
    if interpolate and "interpolate_pos_encoding" not in inspect.signature(model.forward).parameters:
        raise VitdepthError(f"{type(model).__name__} cannot interpolate its position embeddings "
                            "(no interpolate_pos_encoding); run it at its own image size without --image-size")
    config = model.config
    names, has_cls = hf_prefix_names(_base(model), config)
    size = getattr(config, "image_size", 224)
    identity = {"class": f"transformers.{type(model).__name__}", "weights": {"source": "in-memory"},
                "transformers_model_type": getattr(config, "model_type", None)}
    size = (size, size) if isinstance(size, int) else tuple(size)
    return TappedModel(spec=spec, adapter="hf", model=model, sites=find_sites(model),
                       preprocess=preprocess or PreprocessConfig(input_size=size), prefix_names=names,
                       has_cls=has_cls, forward_fn=_hf_output, identity=identity, reference_fn=hf_reference)


def _base(model: nn.Module) -> nn.Module:
    """The backbone of a *ForImageClassification model (the module holding ``embeddings``)."""
    if hasattr(model, "embeddings"):
        return model
    for child in model.children():
        if hasattr(child, "embeddings"):
            return child
    return model
