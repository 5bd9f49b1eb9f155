"""torchvision vision transformers (``vit_b_16``, ``vit_b_32``, ``vit_l_16``, ``vit_l_32``, ``vit_h_14``).

torchvision's encoder blocks attend with ``nn.MultiheadAttention``, whose inference fast path never
exposes queries and keys. The taps read the block's attention input and apply the module's own packed
input projection (``in_proj_weight``, rows 0..E for queries, E..2E for keys) with scale hd^-0.5, which
is what ``F.multi_head_attention_forward`` computes; the self-check compares the result with the
module's own ``need_weights=True`` probabilities. Preprocessing is the weights' own transform
(``Weights.DEFAULT.transforms()``: resize 256 bilinear, center crop 224 for ``vit_b_16``).

Weights come from ``--checkpoint`` (a state dict), ``--random-init``, or by default the ``DEFAULT`` weights
through torchvision's own path, torch hub's cache (``$TORCH_HOME/hub/checkpoints``), downloaded there when
allowed. torchvision's ``Weights.get_state_dict`` unpickles with torch hub's default ``weights_only=False``, so
the file is fetched and loaded here with ``torch.hub.load_state_dict_from_url(..., weights_only=True,
check_hash=True)`` instead: nothing in it can run.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import os
import urllib.parse
import warnings

import torch
from torch import nn

from ..._errors import VitdepthError
from ...data.transforms import PreprocessConfig
from ..checkpoint import apply_state_dict, file_sha256, load_state_dict
from ..registry import register_adapter
from ..structure import find_sites
from ..tapped import Reference, TappedModel


def _vit_names() -> list[str]:
    import torchvision

    return [n for n in torchvision.models.list_models(module=torchvision.models) if n.startswith("vit_")]


def _forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(x)


def torchvision_reference(model: nn.Module, x: torch.Tensor) -> Reference:
    """Each block's attention as ``nn.MultiheadAttention`` itself reports it (``need_weights=True``, per head)."""
    blocks = find_sites(model).blocks
    inputs: list[torch.Tensor] = []
    handles = [b.self_attention.register_forward_pre_hook(lambda _m, a: inputs.append(a[0].detach()))
               for b in blocks]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()
    with torch.inference_mode():
        attns = [b.self_attention(q, q, q, need_weights=True, average_attn_weights=False)[1]
                 for b, q in zip(blocks, inputs, strict=True)]
    return Reference(None, attns, "nn.MultiheadAttention need_weights=True (torchvision exposes no hidden states)")


def torch_hub_weights(url: str, spec: str) -> tuple[dict[str, torch.Tensor], str]:
    """A state dict from ``url`` through torch hub's cache, downloaded when allowed, never unpickled unsafely.

    ``torch.hub.load_state_dict_from_url(url, weights_only=True, check_hash=True)``: the cache
    (``torch.hub.get_dir()/checkpoints``) is read first, a missing file is downloaded there (its hash prefix
    in the file name checked).

    Args:
        url: the weights' address.
        spec: the model spec, which starts the error messages.

    Returns:
        The state dict and the path of the file in the cache.

    Raises:
        VitdepthError: the file is not cached and cannot be downloaded (naming the cache and the command that
            fills it), or it is not a plain state dict of tensors (refused without running it).
    """
    cache_dir = os.path.join(torch.hub.get_dir(), "checkpoints")
    name = os.path.basename(urllib.parse.urlparse(url).path)
    cached = os.path.join(cache_dir, name)
    fetch = f"curl -L --create-dirs -o {cached} {url}"
    try:
        # torch hub prints 'Downloading: ...' before it tries: the CLI's output stays its own, a failure one line
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")  # torch's pickle-protocol notices; the error below says enough
            sd = torch.hub.load_state_dict_from_url(url, model_dir=cache_dir, map_location="cpu", progress=False,
                                                    check_hash=True, weights_only=True)
    except Exception as e:  # noqa: BLE001 - network, hash and unpickling failures surface as many types
        if not os.path.isfile(cached):
            reason = " ".join(str(e).split())[:160]
            raise VitdepthError(f"{spec} needs weights and nothing is downloaded: {name} is not in {cache_dir} and "
                                f"fetching it failed ({type(e).__name__}: {reason}); fill the cache with `{fetch}` "
                                "or pass --checkpoint PATH / --random-init") from None
        sd = None  # there but refused: the safe loader below names why, in one line
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        sd = load_state_dict(cached, fix=f"delete it and fill the cache again with `{fetch}`")
    return sd, cached


def _preprocess_record(weights) -> PreprocessConfig:
    t = weights.transforms()
    crop, resize = int(t.crop_size[0]), int(t.resize_size[0])
    return PreprocessConfig(input_size=(crop, crop), mean=tuple(t.mean), std=tuple(t.std),
                            interpolation=t.interpolation.value, crop_pct=crop / resize)


def wrap_torchvision(model: nn.Module, spec: str, identity: dict, weights=None) -> TappedModel:
    """Wrap a built torchvision ``VisionTransformer``; ``weights`` (a Weights enum) gives its preprocessing."""
    size = int(getattr(model, "image_size", 224))
    preprocess = _preprocess_record(weights) if weights is not None else PreprocessConfig(input_size=(size, size))
    tm = TappedModel(spec=spec, adapter="torchvision", model=model, sites=find_sites(model), preprocess=preprocess,
                     prefix_names=("cls",), has_cls=True, forward_fn=_forward, identity=identity,
                     reference_fn=torchvision_reference)
    if weights is not None:
        from ...data.transforms import CallableTransform

        tm.transform = CallableTransform(weights.transforms(), {"torchvision_weights": str(weights),
                                                                 **preprocess.to_dict()})
    return tm


@register_adapter("torchvision")
def load_torchvision(name: str, *, checkpoint: str | None, random_init: bool, seed: int) -> TappedModel:
    import torchvision

    names = _vit_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join('torchvision:' + c for c in close)}?" if close else ""
        raise VitdepthError(f"torchvision:{name} is not a torchvision vision transformer{hint} "
                            f"(known: {', '.join(names)})")
    if checkpoint and random_init:
        raise VitdepthError("--checkpoint and --random-init contradict each other; pass one of them")
    weights = torchvision.models.get_model_weights(name).DEFAULT
    if checkpoint:
        sd = load_state_dict(checkpoint)
        source = {"source": "checkpoint", "path": str(checkpoint), "sha256": file_sha256(checkpoint)}
    elif random_init:
        sd, source = None, {"source": "random-init", "seed": seed}
    else:
        sd, cached = torch_hub_weights(weights.url, f"torchvision:{name}")
        source = {"source": "torchvision-weights", "weights": str(weights), "url": weights.url, "file": cached,
                  "sha256": file_sha256(cached)}
    torch.manual_seed(seed)
    num_classes = int(sd["heads.head.weight"].shape[0]) if sd is not None and "heads.head.weight" in sd else 1000
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    if sd is not None:
        apply_state_dict(model, sd, checkpoint or source["file"])
    return wrap_torchvision(model, f"torchvision:{name}", {"class": f"torchvision.{type(model).__name__}",
                                                           "weights": source}, weights)
