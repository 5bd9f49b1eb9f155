"""Run-time self-check: the taps against the model's own computation, on the first images of a run.

The adapters recompute attention from what the model feeds its kernel and read tokens with hooks.
Both are tested per family, but a family nobody has tested yet (a new position encoding, an extra
bias term) could still make them differ from what the model computes. Before the pass, on a few
images, this module compares:

- **attention**, two ways where they exist: (a) the recomputed probabilities times the kernel's own
  values against the kernel's own output (every block whose attention went through
  ``scaled_dot_product_attention``), and (b) the recomputed probabilities against the library's
  eager attention (Hugging Face ``output_attentions``, timm's non-fused path, torchvision's
  ``need_weights``);
- **tokens**: layers ``0..L`` against the hidden states the library exposes (Hugging Face
  ``output_hidden_states``, timm ``forward_intermediates``).

Attention that fails, or that nothing could verify, is not used: the analysis drops the metrics that read
it and says why. Tokens that fail stop the run (every metric reads them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from .tapped import TappedModel

#: Largest |Δ| of attention probabilities (or of the attention output, relative to its largest entry) accepted,
#: by the model's dtype: float32 kernels agree with the float32 recompute to ~1e-6; half precision to ~1e-3.
ATTENTION_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8, torch.bfloat16: 2e-2, torch.float16: 1e-2}
#: Largest |Δ| of tokens relative to the layer's largest |token| accepted, by dtype.
TOKEN_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8, torch.bfloat16: 2e-2, torch.float16: 1e-2}


@dataclass
class SelfCheck:
    """Outcome of :func:`self_check`.

    Attributes:
        attention: ``"verified"``, ``"failed"`` or ``"unverified"`` (nothing to compare against).
        tokens: ``"verified"``, ``"failed"`` or ``"not exposed"`` (the library exposes no hidden states).
        attention_max_diff: largest |Δ| seen in the attention comparisons.
        tokens_max_rel_diff: largest relative |Δ| seen in the token comparisons.
        attention_tolerance: tolerance applied to attention.
        tokens_tolerance: tolerance applied to tokens.
        images: images compared.
        checks: what was compared, in words.
        reason: why attention or tokens cannot be used, one line; empty when both are fine.
    """

    attention: str
    tokens: str
    attention_max_diff: float | None = None
    tokens_max_rel_diff: float | None = None
    attention_tolerance: float = 0.0
    tokens_tolerance: float = 0.0
    images: int = 0
    checks: list[str] = field(default_factory=list)
    reason: str = ""

    def to_dict(self) -> dict:
        """JSON-ready dict (run.json ``self_check``)."""
        return asdict(self)

    def summary(self) -> str:
        """One console line."""
        att = self.attention + (f" (max |Δ| {self.attention_max_diff:.1e})" if self.attention_max_diff is not None
                                else "")
        tok = self.tokens + (f" (max rel |Δ| {self.tokens_max_rel_diff:.1e})" if self.tokens_max_rel_diff is not None
                             else "")
        return f"self-check on {self.images} images: attention {att}, tokens {tok}"


def _max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |a − b|, where the same non-finite value in both counts as equal and any other as infinite."""
    a, b = a.float(), b.float()
    same = (a == b) | (torch.isnan(a) & torch.isnan(b))
    d = torch.where(same, torch.zeros_like(a), (a - b).abs())
    return float(torch.nan_to_num(d, nan=torch.inf).max()) if d.numel() else 0.0


def self_check(tm: TappedModel, images: torch.Tensor) -> SelfCheck:
    """Compare the taps of ``images`` with the model's own attention and hidden states (see the module docstring)."""
    dtype = tm.dtype
    att_tol = ATTENTION_TOLERANCE.get(dtype, 1e-2)
    tok_tol = TOKEN_TOLERANCE.get(dtype, 1e-2)
    with torch.inference_mode():
        _, layers = tm.capture(images, keep_calls=True)
        reference = tm.reference(images)
    blocks = [t for t in layers if t.is_block]
    checks: list[str] = []
    att_diffs: list[tuple[float, str]] = []

    kernel = [(i, t) for i, t in enumerate(blocks) if t.call is not None]
    if kernel:
        for i, t in kernel:
            v = t.call.value
            if v.shape[1] != t.qk.q.shape[1]:  # grouped heads, as SDPA repeats them
                v = v.repeat_interleave(t.qk.q.shape[1] // v.shape[1], dim=1)
            out = t.call.output.float()
            recomputed = torch.matmul(t.attn, v.float())
            rel = _max_abs_diff(recomputed, out) / max(1.0, float(torch.nan_to_num(out).abs().max()))
            att_diffs.append((rel, f"block {i}: recomputed probabilities x the kernel's values vs its output"))
        checks.append(f"attention x values vs the SDPA kernel's output ({len(kernel)} of {len(blocks)} blocks)")
    if reference is not None and reference.attentions is not None:
        for i, (t, ref) in enumerate(zip(blocks, reference.attentions, strict=True)):
            if ref.shape != t.attn.shape:
                att_diffs.append((float("inf"), f"block {i}: shape {tuple(t.attn.shape)} vs the model's "
                                                 f"{tuple(ref.shape)}"))
                continue
            att_diffs.append((_max_abs_diff(t.attn, ref), f"block {i}: recomputed vs the model's eager attention"))
        checks.append(f"attention vs the model's own eager attention ({reference.source})")
    covered = len(kernel) == len(blocks) or (reference is not None and reference.attentions is not None)
    attention_max = max((d for d, _ in att_diffs), default=None)
    reason = ""
    if attention_max is not None and attention_max > att_tol:
        worst = max(att_diffs)
        attention, reason = "failed", (f"recomputed attention differs from the model's own ({worst[1]}: "
                                       f"|Δ| {worst[0]:.2g} > {att_tol:g})")
    elif not covered:
        attention, reason = "unverified", ("the model's attention could not be checked (no SDPA call in some blocks "
                                           "and no eager attention from the library)")
    else:
        attention = "verified"

    tok_diffs: list[tuple[float, str]] = []
    if reference is not None and reference.hidden_states:
        by_layer = {t.layer: t for t in layers}
        for layer, ref in reference.hidden_states.items():
            t = by_layer.get(layer)
            if t is None or t.tokens.shape != ref.shape:
                tok_diffs.append((float("inf"), f"layer {layer}: shape {None if t is None else tuple(t.tokens.shape)} "
                                                f"vs the model's {tuple(ref.shape)}"))
                continue
            scale = max(1e-6, float(torch.nan_to_num(ref.float(), posinf=0, neginf=0).abs().max()))
            rel = _max_abs_diff(t.tokens, ref) / scale
            tok_diffs.append((rel, f"layer {layer}"))
        checks.append(f"tokens of layers {', '.join(reference.hidden_states)} vs the model's hidden states")
    tokens_max = max((d for d, _ in tok_diffs), default=None)
    if tokens_max is None:
        tokens = "not exposed"
    elif tokens_max > tok_tol:
        worst = max(tok_diffs)
        tokens = "failed"
        reason = (reason + "; " if reason else "") + (f"tapped tokens differ from the model's hidden states "
                                                      f"({worst[1]}: relative |Δ| {worst[0]:.2g} > {tok_tol:g})")
    else:
        tokens = "verified"
    return SelfCheck(attention, tokens, attention_max, tokens_max, att_tol, tok_tol, int(images.shape[0]), checks,
                     reason)
