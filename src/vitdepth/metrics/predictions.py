"""Per-image metrics of a model's predictions: KL divergence to a reference output, top-1 hits, donor following.

Used by the head lens (a layer's readout against the final output; nostalgebraist 2020, "interpreting GPT: the
logit lens"; Belrose et al. 2023, arXiv 2303.08112) and the causal [CLS] interventions (an edited forward against
the clean one; Meng et al. 2022, arXiv 2202.05262). Pure functions, one value per image, in the reduction dtype
of :func:`vitdepth.metrics.functional.reduction_dtype` (float64 by default).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .functional import _acc_dtype

__all__ = ["donor_follow", "kl_divergence", "top1_correct"]


def kl_divergence(reference_logits: Tensor, logits: Tensor) -> Tensor:
    """KL(p_ref ‖ p) = Σ_c p_ref,c (log p_ref,c − log p_c) per image, in nats, from logits (B, C) each.

    Computed from log-softmax in the reduction dtype, so classes with vanishing probability contribute exactly 0.
    """
    acc = _acc_dtype(logits.device)
    ref = torch.log_softmax(reference_logits.to(acc), dim=-1)
    out = torch.log_softmax(logits.to(acc), dim=-1)
    return (ref.exp() * (ref - out)).sum(dim=-1).clamp_min(0.0)


def top1_correct(logits: Tensor, labels: Tensor) -> Tensor:
    """1.0 where the arg-max class equals the label, else 0.0; NaN where the label is negative (unknown)."""
    hit = (logits.argmax(dim=-1) == labels).to(_acc_dtype(logits.device))
    return torch.where(labels < 0, torch.full_like(hit, float("nan")), hit)


def donor_follow(predicted: Tensor, donor_prediction: Tensor, own_prediction: Tensor) -> Tensor:
    """1.0 where an edited forward predicts the donor's clean class, 0.0 where not (per image).

    NaN where the donor's clean prediction equals the image's own: following the donor cannot be told apart from
    keeping one's own class there.
    """
    acc = _acc_dtype(predicted.device)
    follow = (predicted == donor_prediction).to(acc)
    return torch.where(donor_prediction == own_prediction, torch.full_like(follow, float("nan")), follow)
