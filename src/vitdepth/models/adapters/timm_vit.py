"""timm vision transformers: ViT, DeiT (including distilled), register tokens, EVA / EVA-02, RoPE ViTs,
DINOv3, BEiT, relative-position ViTs (pre- and post-norm), SigLIP (attention-pool head), hybrid
(ResNet-stem) ViTs, FlexiViT, DeiT-III. Families that are not one token sequence (Swin, CrossViT,
SAM, PiT, parallel blocks) are refused by :func:`~vitdepth.models.structure.refuse_unsupported`.

Weights are timm's pretrained weights by default, loaded through timm's own path
(``timm.create_model(name, pretrained=True)``): the Hugging Face hub cache is read, and the file is downloaded
when allowed, so ``HF_HUB_OFFLINE`` and ``HF_HOME`` behave as in timm. ``--checkpoint`` (safetensors or a plain
state dict, loaded safely here) and ``--random-init`` replace them. Nothing is ever unpickled unsafely: timm
reads safetensors itself; a repository that has only ``pytorch_model.bin`` (or weights only at a URL) is
loaded here with ``torch.load(weights_only=True)`` and handed to timm as a state dict.
"""

from __future__ import annotations

import difflib
import sys

import torch
from torch import nn

from ..._errors import VitdepthError
from ...data.transforms import PreprocessConfig
from ..checkpoint import apply_state_dict, file_sha256, load_state_dict
from ..registry import register_adapter
from ..structure import find_sites
from ..tapped import Reference, TappedModel
from .hf import _one_line, cached_hub_file, hf_cli, hub_failure, quiet_hub, snapshot_commit


def timm_prefix_names(model: nn.Module) -> tuple[tuple[str, ...], bool]:
    """Names of timm's prefix tokens, in the order ``_pos_embed`` concatenates them."""
    names: list[str] = []
    has_cls = getattr(model, "cls_token", None) is not None
    if has_cls:
        names.append("cls")
    if getattr(model, "dist_token", None) is not None:
        names.append("dist")
    reg = getattr(model, "reg_token", None)
    if reg is not None:
        names += [f"reg{i}" for i in range(reg.shape[1])]
    n = int(getattr(model, "num_prefix_tokens", len(names)))
    if n != len(names):  # an unknown prefix layout: keep the count right, name them generically
        names = (["cls"] if has_cls else []) + [f"prefix{i}" for i in range(len(names) if has_cls else 0, n)]
    return tuple(names), has_cls


def timm_preprocess(model: nn.Module) -> PreprocessConfig:
    """The model's own preprocessing from its timm pretrained config."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    _, h, w = cfg["input_size"]
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img_size is not None:  # a bare VisionTransformer(img_size=…) has no pretrained cfg of its own
        h, w = int(img_size[0]), int(img_size[1])
    return PreprocessConfig(input_size=(h, w), mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                            interpolation=cfg.get("interpolation", "bicubic"), crop_pct=float(cfg.get("crop_pct", 1.0)),
                            crop_mode=cfg.get("crop_mode", "center"))


def _timm_forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(x)


def timm_reference(model: nn.Module, x: torch.Tensor) -> Reference:
    """timm's own view of a batch: block outputs from ``forward_intermediates`` and the eager attention.

    The eager probabilities are read where timm's non-fused path hands them to ``attn_drop`` (the attention
    modules of ViT, EVA, relpos and BEiT all do), with ``fused_attn`` switched off for this one forward.
    """
    hidden = None
    if hasattr(model, "forward_intermediates"):
        prefix = int(getattr(model, "num_prefix_tokens", 0) or 0) > 0
        try:
            with torch.inference_mode():
                inter = model.forward_intermediates(x, intermediates_only=True, return_prefix_tokens=prefix,
                                                    output_fmt="NLC", norm=False)
            hidden = {}
            for i, item in enumerate(inter):
                spatial, prefix = item if isinstance(item, (tuple, list)) else (item, None)
                hidden[str(i + 1)] = spatial if prefix is None or prefix.numel() == 0 else torch.cat(
                    [prefix, spatial], dim=1)
        except Exception:  # noqa: BLE001 - a family whose forward_intermediates fails has no token reference
            hidden = None
    blocks = find_sites(model).blocks
    attn_modules = [next((m for m in b.modules() if hasattr(m, "fused_attn") and isinstance(
        getattr(m, "attn_drop", None), nn.Module)), None) for b in blocks]
    attentions = None
    if all(m is not None for m in attn_modules):
        probs: list[torch.Tensor] = []
        saved = [m.fused_attn for m in attn_modules]
        handles = [m.attn_drop.register_forward_hook(lambda _m, a, _o: probs.append(a[0].detach()))
                   for m in attn_modules]
        try:
            for m in attn_modules:
                m.fused_attn = False
            with torch.inference_mode():
                model(x)
        finally:
            for m, f in zip(attn_modules, saved, strict=True):
                m.fused_attn = f
            for h in handles:
                h.remove()
        attentions = probs if len(probs) == len(blocks) else None
    return Reference(hidden, attentions, "timm forward_intermediates (block outputs) and the eager attention "
                                         "(fused_attn off, probabilities at attn_drop)")


def wrap_timm(model: nn.Module, spec: str, identity: dict) -> TappedModel:
    """Wrap a built timm vision transformer (used by ``timm:`` and ``file:``)."""
    names, has_cls = timm_prefix_names(model)
    return TappedModel(spec=spec, adapter="timm", model=model, sites=find_sites(model),
                       preprocess=timm_preprocess(model), prefix_names=names, has_cls=has_cls,
                       forward_fn=_timm_forward, identity=identity, reference_fn=timm_reference)


def _head_classes(sd: dict[str, torch.Tensor]) -> int:
    w = sd.get("head.weight")
    return int(w.shape[0]) if w is not None else 0


def _resample_for(model: nn.Module, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Adapt a state dict to a model built at another image size with timm's own ``checkpoint_filter_fn``
    (the one its pretrained loading applies: position embeddings resampled, relative tables kept)."""
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is None:
        raise VitdepthError(f"timm's {type(model).__name__} has no checkpoint_filter_fn to resample its weights to "
                            "another image size; run it without --image-size")
    return filter_fn(sd, model)


_TIMM_ALTERNATIVE = "pass --checkpoint PATH / --random-init"


def _timm_pretrained_cfg(name: str):
    """timm's pretrained config for ``NAME[.TAG]`` (``None`` for an architecture without any), or a one-line
    error for a tag timm does not know."""
    import timm
    from timm.models import get_pretrained_cfg

    try:
        return get_pretrained_cfg(name)
    except RuntimeError:
        arch, _, tag = name.partition(".")
        tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")]
        known = f" (its tags: {', '.join(tags[:6])}{', ...' if len(tags) > 6 else ''})" if tags else ""
        raise VitdepthError(f"timm:{name}: timm has no pretrained weights tagged {tag!r} for {arch}{known}; "
                            "pass one of its tags, --checkpoint PATH or --random-init") from None


def _timm_hub_files(cfg) -> list[str]:
    """The files timm's hub loading tries, in its order: safetensors alternatives first, then the named file."""
    fname = cfg.hf_hub_filename or "pytorch_model.bin"
    if fname.endswith(".safetensors"):
        return [fname]
    try:
        from timm.models._hub import _get_safe_alternatives

        safe = list(_get_safe_alternatives(fname))
    except ImportError:  # another timm layout: its documented preference
        safe = ["model.safetensors"] if fname == "pytorch_model.bin" else []
    return [*safe, fname]


def _subject(spec: str, repo: str) -> str:
    return f"{spec}: its pretrained weights ({repo}) are"


def _timm_hub_file(spec: str, repo: str, revision: str | None, files: list[str]) -> tuple[str, str]:
    """``(file name, path)`` of the pretrained file in the hub cache; downloaded now when none is cached.

    The cache is read first (no network); otherwise the files are fetched in timm's order with
    ``hf_hub_download`` (what timm calls), so a miss fails at once, in one line.
    """
    from huggingface_hub import errors, hf_hub_download

    fill = f"{repo} {files[0]}" + (f" --revision {revision}" if revision else "")
    for fname in files:
        hit = cached_hub_file(repo, fname, revision)
        if hit:
            return fname, hit
    for fname in files:
        try:
            with quiet_hub():
                return fname, hf_hub_download(repo, fname, revision=revision)
        except Exception as e:  # noqa: BLE001 - hub errors surface as many types
            if isinstance(e, errors.EntryNotFoundError) and not isinstance(e, errors.LocalEntryNotFoundError):
                continue  # the repository has no such file: timm's next choice
            raise hub_failure(e, spec, repo, fill, _TIMM_ALTERNATIVE, _subject(spec, repo)) or VitdepthError(
                f"{spec}: could not fetch {fname} of {repo} from the Hugging Face hub ({_one_line(e)}); "
                f"{_TIMM_ALTERNATIVE}") from None
    raise VitdepthError(f"{spec}: the hub repository {repo} has none of {', '.join(files)}; {_TIMM_ALTERNATIVE}")


def _create(name: str, kwargs: dict, pretrained: bool, overlay: dict | None = None,
            hub: tuple[str, str] | None = None) -> nn.Module:
    """``timm.create_model`` with its failures in one line; ``hub`` is ``(repo, fill)`` of hub weights."""
    import timm

    spec = f"timm:{name}"
    extra = {"pretrained_cfg_overlay": overlay} if overlay else {}
    try:
        with quiet_hub():
            model = timm.create_model(name, pretrained=pretrained, **kwargs, **extra)
    except VitdepthError:
        raise
    except Exception as e:  # noqa: BLE001 - timm's pretrained loading (hub, state dict) raises many types
        if isinstance(e, TypeError) and "img_size" in kwargs:
            raise VitdepthError(f"{spec} cannot be built with {kwargs} ({e}); drop --image-size") from None
        if not pretrained:
            raise
        failure = hub_failure(e, spec, hub[0], hub[1], _TIMM_ALTERNATIVE, _subject(spec, hub[0])) if hub else None
        raise failure or VitdepthError(f"{spec}: timm could not load its pretrained weights ({_one_line(e)}); "
                                       f"{_TIMM_ALTERNATIVE}") from None
    if overlay and isinstance(getattr(model, "pretrained_cfg", None), dict):
        model.pretrained_cfg["state_dict"] = None  # loaded: do not keep a second copy of the weights
    return model


def _load_pretrained(name: str, kwargs: dict) -> tuple[nn.Module, dict]:
    """timm's pretrained weights for ``NAME[.TAG]`` through ``timm.create_model(pretrained=True)``, and their record."""
    from ..checkpoint import check_safetensors

    spec = f"timm:{name}"
    cfg = _timm_pretrained_cfg(name)
    tag = getattr(cfg, "tag", None)
    if cfg is not None and cfg.hf_hub_id:
        repo, _, revision = cfg.hf_hub_id.partition("@")
        revision = revision or None
        files = _timm_hub_files(cfg)
        fill = f"{repo} {files[0]}" + (f" --revision {revision}" if revision else "")
        fname, path = _timm_hub_file(spec, repo, revision, files)
        refill = f"fill the cache again with `{hf_cli()} download {fill} --force-download`"
        overlay = None
        if fname.endswith(".safetensors"):
            check_safetensors(path, fix=refill)  # timm reads it itself (safetensors: nothing to run)
        elif not fname.endswith(".npz"):  # a pickle: loaded here with weights_only=True, whatever timm would do
            overlay = {"state_dict": load_state_dict(path, fix=refill)}
            if cfg.source == "hf-hub":
                overlay["source"] = ""  # else timm would fetch from the hub again instead of taking the state dict
        model = _create(name, kwargs, True, overlay, hub=(repo, fill))
        path = cached_hub_file(repo, fname, revision) or path  # timm may have fetched a newer commit
        record = {"source": "timm-pretrained", "hub_id": repo, "tag": tag, "commit": snapshot_commit(path),
                  "file": path, "sha256": file_sha256(path)}
        if revision:
            record["revision"] = revision
        return model, record
    if cfg is not None and cfg.url and not cfg.custom_load:
        from .torchvision_vit import torch_hub_weights

        sd, path = torch_hub_weights(cfg.url, spec)
        overlay = {"state_dict": sd, "source": ""}
        model = _create(name, kwargs, True, overlay)
        return model, {"source": "timm-pretrained", "url": cfg.url, "tag": tag, "file": path,
                       "sha256": file_sha256(path)}
    which = f" (timm tag {tag!r})" if tag else ""
    raise VitdepthError(f"{spec} has no pretrained weights in timm{which}; {_TIMM_ALTERNATIVE}")


@register_adapter("timm")
def load_timm(name: str, *, checkpoint: str | None, random_init: bool, seed: int,
              image_size: int | None = None) -> TappedModel:
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join('timm:' + c for c in close)}?" if close else ""
        raise VitdepthError(f"unknown timm model {name!r}{hint} (list them with timm.list_models('vit*'))")
    if checkpoint and random_init:
        raise VitdepthError("--checkpoint and --random-init contradict each other; pass one of them")
    _timm_pretrained_cfg(name)  # an unknown tag is one line, whatever the weights
    identity: dict = {"class": None, "weights": None}
    kwargs = {"img_size": image_size} if image_size is not None else {}
    torch.manual_seed(seed)
    if checkpoint:
        sd = load_state_dict(checkpoint)
        identity["weights"] = {"source": "checkpoint", "path": str(checkpoint), "sha256": file_sha256(checkpoint)}
        model = _create(name, {"num_classes": _head_classes(sd), **kwargs}, False)
        if image_size is not None:
            sd = _resample_for(model, sd)
        apply_state_dict(model, sd, checkpoint)
    elif random_init:
        identity["weights"] = {"source": "random-init", "seed": seed}
        model = _create(name, kwargs, False)
    else:
        model, identity["weights"] = _load_pretrained(name, kwargs)
    if image_size is not None and not random_init:
        identity["image_size"] = image_size
    identity["class"] = f"timm.{type(model).__name__}"
    return wrap_timm(model, f"timm:{name}", identity)
