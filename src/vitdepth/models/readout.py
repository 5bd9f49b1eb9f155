"""The model's own readout (final norm, pooling, classification head) as a function of a layer's tokens.

The *head lens* applies this readout to the residual stream of every layer: the vision analogue of the logit lens
(nostalgebraist 2020; the "tuned lens" of Belrose et al. 2023 is its trained variant). vitdepth never re-implements a
head: each adapter names the modules the model itself runs after its last block, and :func:`find_readout` accepts
them only if, on real images, the readout of the last block's output reproduces the model's own output. A model
whose readout cannot be found or does not reproduce its output gets no lens (a wrong number is worse than none).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .tapped import TappedModel

#: Largest difference between the readout of the last block's output and the model's own output, relative to the
#: output's largest magnitude, for the readout to count as the model's (float32 summation-order noise is ~1e-6).
READOUT_TOLERANCE = 1e-4


@dataclass(frozen=True)
class HeadReadout:
    """``fn(tokens)`` maps a layer's tokens (B, T, d) to the model's logits (B, C) through its own final layers.

    Attributes:
        fn: the readout.
        num_classes: outputs of the head.
        modules: the modules it runs, in words (recorded in run.json).
    """

    fn: Callable[[torch.Tensor], torch.Tensor]
    num_classes: int
    modules: str

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fn(tokens)


def _is_head(module: object) -> bool:
    return isinstance(module, nn.Module) and not isinstance(module, nn.Identity)


def _timm_candidate(model: nn.Module):
    if not (hasattr(model, "forward_head") and callable(getattr(model, "get_classifier", None))):
        return None
    if not _is_head(model.get_classifier()):
        return None  # num_classes=0: the model outputs pooled features, there is no head to read with
    norm = getattr(model, "norm", None)
    norm = norm if isinstance(norm, nn.Module) else nn.Identity()
    return (lambda x: model.forward_head(norm(x))), "norm → forward_head (pool, fc_norm, head)"


def _hf_candidate(model: nn.Module):
    classifier = getattr(model, "classifier", None)
    if not _is_head(classifier):
        return None
    base = next((c for c in [model, *model.children()] if hasattr(c, "embeddings")), None)
    norm = getattr(base, "layernorm", None) if base is not None else None
    norm = norm if isinstance(norm, nn.Module) else nn.Identity()
    return (lambda x: classifier(norm(x)[:, 0])), "layernorm → [CLS] → classifier"


def _torchvision_candidate(model: nn.Module):
    heads = getattr(model, "heads", None)
    ln = getattr(getattr(model, "encoder", None), "ln", None)
    if not (_is_head(heads) and isinstance(ln, nn.Module)):
        return None
    return (lambda x: heads(ln(x)[:, 0])), "encoder.ln → [CLS] → heads"


_CANDIDATES = {"timm": _timm_candidate, "hf": _hf_candidate, "torchvision": _torchvision_candidate}


def find_readout(tm: TappedModel, images: torch.Tensor) -> HeadReadout | str:
    """The model's readout, verified on ``images``; or, when there is none, the reason in words.

    Verification: the readout applied to the tapped output of the last block must equal the model's own output to
    :data:`READOUT_TOLERANCE` (relative to the output's largest magnitude).
    """
    candidate = _CANDIDATES.get(tm.adapter, lambda _m: None)(tm.model)
    if candidate is None:
        return ("the model has no classification head vitdepth can apply to a layer (it outputs features, or its "
                f"{tm.adapter} head layout is not known)")
    fn, modules = candidate
    with torch.inference_mode():
        out, layers = tm.capture(images, attention=False)
        try:
            mine = fn(layers[-1].tokens)
        except Exception as e:  # noqa: BLE001 - a head that cannot take a layer's tokens has no lens
            return f"the head ({modules}) cannot be applied to a layer's tokens: {type(e).__name__}: {e}"
    if not torch.is_tensor(out) or mine.shape != out.shape:
        return f"the head ({modules}) gives shape {tuple(mine.shape)}, the model {tuple(getattr(out, 'shape', ()))}"
    scale = float(out.abs().max()) or 1.0
    diff = float((mine.float() - out.float()).abs().max()) / scale
    if not diff <= READOUT_TOLERANCE:
        return (f"the head ({modules}) applied to the last block's output differs from the model's output by "
                f"{diff:.1e} (relative); the model does more after its blocks than vitdepth knows")
    return HeadReadout(fn, int(out.shape[-1]), modules)
