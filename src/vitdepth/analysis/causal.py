"""Head lens and causal [CLS] interventions, per batch of the streaming pass.

The paper (arXiv 2511.21635) reads the [CLS] token's "marginalisation" off correlational curves (CLS centrality,
probes). These measurements intervene instead, for every layer ℓ = 0..L of the residual stream (design §3):

- *head lens* (``lens_acc``, ``lens_kl``): the model's own readout (final norm, pooling, head;
  :mod:`vitdepth.models.readout`) applied to layer ℓ — top-1 against the labels and KL(p_final ‖ p_ℓ). The vision
  analogue of the logit lens (nostalgebraist 2020; Belrose et al. 2023, arXiv 2303.08112).
- *[CLS] swap* (``cls_swap_acc``, ``cls_swap_follow``): at layer ℓ the [CLS] token of each image is replaced by the
  [CLS] token (at the same layer, from the clean forward) of a *donor*: another image of a different class in the
  same batch, fixed by the seed. Top-1 of the edited forward on the image's own label, and the rate at which its
  prediction becomes the donor's clean prediction (activation patching, Meng et al. 2022, arXiv 2202.05262).
- *patch control* (``patch_swap_acc``, ``patch_swap_follow``): the same swap on one random patch position per image
  (the donor's token at that position), so a [CLS] effect can be told from "any token swap hurts".
- *[CLS] knock-out* (``cls_knockout_kl``, ``cls_knockout_acc``, ``cls_knockout_probe_acc``): from block ℓ on,
  patch queries may not attend to the [CLS] key (−inf in the model's own attention scores;
  :func:`vitdepth.models.interventions.block_key`). KL(p_clean ‖ p_knocked), top-1, and the final-layer [CLS]
  probe (fitted on clean features) evaluated on the knocked-out final [CLS] features. At ℓ = L no block is masked:
  the values there are the clean ones by construction (KL = 0).

A head that does not read [CLS] (global average pooling, an attention-pool head) is detected, not assumed: if
replacing the final [CLS] leaves the output unchanged, the swap metrics are not applicable and only the knock-out is
measured (recorded in run.json).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch

from ..metrics.predictions import donor_follow, kl_divergence, top1_correct
from ..models.interventions import block_key, edit_streams, reuse_clean_prefix
from ..models.readout import HeadReadout
from ..models.tapped import TappedModel
from ..models.taps import LayerTaps

LENS_IDS = ("lens_acc", "lens_kl")
SWAP_IDS = ("cls_swap_acc", "cls_swap_follow", "patch_swap_acc", "patch_swap_follow")
KNOCKOUT_IDS = ("cls_knockout_kl", "cls_knockout_acc")
KNOCKOUT_PROBE_ID = "cls_knockout_probe_acc"
#: per-image curves this module fills (the knock-out probe is fitted after the pass from cached features)
CAUSAL_PER_IMAGE_IDS = LENS_IDS + SWAP_IDS + KNOCKOUT_IDS
INTERVENTION_IDS = frozenset(SWAP_IDS + KNOCKOUT_IDS + (KNOCKOUT_PROBE_ID,))
#: the feature-cache token set holding, per knock-out start ℓ, the final [CLS] feature of the knocked-out forward
KNOCKOUT_CACHE = "cls_knockout"

#: The clean residual stream of the images intervened on is kept (all layers) so that edited forwards skip the
#: blocks before their edit (:func:`~vitdepth.models.interventions.reuse_clean_prefix`) when it fits in this many
#: bytes; above it every edited forward runs all blocks (same results, about twice the compute).
CLEAN_STREAM_BYTES = 512 << 20

#: An output that moved by less than this (relative to its largest magnitude) when the final [CLS] was replaced
#: counts as unchanged: the head does not read [CLS].
UNCHANGED_RTOL = 1e-6


def donors(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each image of a batch, a donor: the next image of another class in a seeded random cyclic order.

    Labels < 0 (unknown) count as a class of their own per image (any other image may donate). Images with no
    image of another class in the batch get −1.
    """
    n = len(labels)
    order = rng.permutation(n)
    out = np.full(n, -1, dtype=np.int64)
    for k, i in enumerate(order):
        for step in range(1, n):
            j = order[(k + step) % n]
            if labels[i] < 0 or labels[j] != labels[i]:
                out[i] = j
                break
    return out


@dataclass
class CausalLayers:
    """Lens and intervention state of a run: per batch :meth:`begin`, the clean forward's :meth:`sink`, :meth:`finish`.

    Attributes:
        tm: the model.
        metrics: selected metric ids (the lens and intervention ids among them are computed).
        seed: seeds the donors and the control positions (with the batch's first row).
        readout: the model's verified readout, or None (no lens, no prediction metrics).
        head_reads_cls: decided on the first batch (None before).
        notes: what was not applicable and why (run.json).
        subset: the analysis positions the interventions run on (``--intervention-samples``); None: all.
        max_images: the most images one edited forward holds; the edits of several layers share a forward (each
            on its own copy of the images) up to it, so small subsets do not pay one forward per layer.
    """

    tm: TappedModel
    metrics: frozenset[str]
    seed: int
    readout: HeadReadout | None
    head_reads_cls: bool | None = None
    notes: list[str] = field(default_factory=list)
    subset: np.ndarray | None = None  # analysis positions the interventions run on (None: all)
    max_images: int = 32  # images per edited forward (the pass's batch size): layers are stacked up to it

    def __post_init__(self) -> None:
        want = self.metrics
        self.lens = self.readout is not None and bool(want & set(LENS_IDS))
        has_cls = self.tm.has_cls
        self.swap = has_cls and self.readout is not None and bool(want & set(SWAP_IDS))
        self.knockout = has_cls and self.readout is not None and bool(want & set(KNOCKOUT_IDS))
        self.knockout_features = has_cls and KNOCKOUT_PROBE_ID in want
        self._reset()

    @property
    def intervenes(self) -> bool:
        return self.swap or self.knockout or self.knockout_features

    def _reset(self) -> None:
        self._lens: list[tuple[int, torch.Tensor]] = []
        self._cls: dict[int, torch.Tensor] = {}
        self._patch: dict[int, torch.Tensor] = {}
        self._clean: dict[int, torch.Tensor] = {}  # layer -> clean stream of the selected images (prefix reuse)
        self._donor = self._pos = self._sel = None

    def begin(self, labels: np.ndarray, first_row: int, selected: np.ndarray | None = None) -> None:
        """Before the clean forward of a batch: the images to intervene on, their donors and control positions.

        Args:
            labels: labels of the batch (−1: unknown).
            first_row: the batch's first analysis row (seeds the draws with :attr:`seed`).
            selected: which images of the batch the interventions run on (``--intervention-samples``); None: all.
        """
        self._reset()
        self._sel = np.flatnonzero(np.ones(len(labels), bool) if selected is None else selected)
        if self.swap and len(self._sel):
            rng = np.random.default_rng([self.seed, first_row])
            self._donor = donors(labels[self._sel], rng)
            patches = self.tm.sites.grid[0] * self.tm.sites.grid[1]
            self._pos = rng.integers(0, patches, size=len(self._sel))

    def sink(self, t: LayerTaps) -> None:
        """During the clean forward: the lens logits and the donors' tokens of each layer 0..L."""
        if t.layer == "pre":
            return
        layer = t.position - 1
        if self.lens:
            self._lens.append((t.position, self.readout(t.tokens)))
        if self.intervenes and len(self._sel) and self._keeps_clean(t.tokens):
            self._clean[layer] = t.tokens[torch.as_tensor(self._sel, device=t.tokens.device)].clone()
        if self._donor is not None:
            x = t.tokens[torch.as_tensor(self._sel, device=t.tokens.device)]
            donor = torch.as_tensor(np.maximum(self._donor, 0), device=x.device)
            self._cls[layer] = x[donor, 0].clone()
            pos = torch.as_tensor(self._pos + t.num_prefix, device=x.device)
            self._patch[layer] = x[donor, pos].clone()
        if self.knockout_features and layer == self.tm.depth:
            self._cls[-1] = t.tokens[:, 0].clone()  # the clean final [CLS]: knock-out from L changes nothing

    def finish(self, images: torch.Tensor, output: torch.Tensor, labels: np.ndarray
               ) -> tuple[list[tuple[str, int, torch.Tensor]], torch.Tensor | None]:
        """After the clean forward: run the edited forwards; per-image values and the knocked-out final [CLS].

        Returns:
            ``(metric, position, values (B,))`` triples (NaN for images not selected), and (L+1, B, d) final [CLS]
            features per knock-out start (NaN rows for images not selected; None unless the knock-out probe is
            selected).
        """
        out = []
        y = torch.as_tensor(labels, device=output.device)
        if self.readout is not None and not (labels < self.readout.num_classes).all():
            y = torch.full_like(y, -1)  # the head's classes do not cover the data's labels: no accuracies
            note = (f"the model's head has {self.readout.num_classes} classes, fewer than the data's labels: "
                    "lens_acc, cls_swap_acc, patch_swap_acc and cls_knockout_acc are not measured")
            if note not in self.notes:
                self.notes.append(note)
        for position, logits in self._lens:
            out.append(("lens_kl", position, kl_divergence(output, logits)))
            out.append(("lens_acc", position, top1_correct(logits, y)))
        knocked_final = None
        sel = self._sel
        if self.intervenes and len(sel):
            idx = torch.as_tensor(sel, device=output.device)
            part: list = []
            if self._donor is not None:
                part += self._swaps(images[idx], output[idx], y[idx])
            if self.knockout or self.knockout_features:
                knocked, knocked_final = self._knockouts(images[idx], output[idx], y[idx], self._cls.get(-1))
                part += knocked
            for metric, position, values in part:  # back to the whole batch, NaN where not selected
                full = torch.full((len(images),), float("nan"), dtype=values.dtype, device=values.device)
                out.append((metric, position, full.index_copy_(0, idx, values)))
            if knocked_final is not None:
                full = torch.full((knocked_final.shape[0], len(images), knocked_final.shape[2]), float("nan"),
                                  dtype=knocked_final.dtype, device=knocked_final.device)
                knocked_final = full.index_copy_(1, idx, knocked_final)
        self._reset()
        return out, knocked_final

    def _keeps_clean(self, tokens: torch.Tensor) -> bool:
        per_layer = len(self._sel) * tokens[0].numel() * tokens.element_size()
        return per_layer * (self.tm.depth + 1) <= CLEAN_STREAM_BYTES

    def _prefix(self, starts: list[int]):
        """Skip the blocks before each group's edit when the clean stream was kept (same results)."""
        if len(self._clean) != self.tm.depth + 1:
            return contextlib.nullcontext()
        return reuse_clean_prefix(self.tm, [self._clean[j] for j in range(self.tm.depth + 1)], starts)

    def _groups(self, layers: list[int], n: int) -> list[list[int]]:
        """Layers packed so that a stacked forward holds at most ``max(max_images, n)`` images."""
        per = max(1, self.max_images // max(n, 1))
        return [layers[k:k + per] for k in range(0, len(layers), per)]

    def _stacked(self, images: torch.Tensor, group: list[int], edit_of) -> torch.Tensor:
        """One forward of ``len(group)`` copies of ``images``, copy k edited at layer ``group[k]``."""
        n = len(images)
        edits = [(layer, slice(k * n, (k + 1) * n), edit_of(layer)) for k, layer in enumerate(group)]
        with self._prefix(group), edit_streams(self.tm, edits):  # prefix hooks first: they run before the edits
            return self.tm.output(images.repeat(len(group), *([1] * (images.dim() - 1))))

    def _swaps(self, images, output, y) -> list:
        tm, n, out = self.tm, len(images), []
        own = output.argmax(dim=-1)
        valid = torch.as_tensor(self._donor >= 0, device=output.device)
        donor = torch.as_tensor(np.maximum(self._donor, 0), device=output.device)
        donor_pred = own[donor]
        rows = torch.arange(n, device=output.device)
        pos = torch.as_tensor(self._pos + tm.sites.num_prefix, device=output.device)

        def put_cls(layer):
            def edit(x):
                x[:, 0] = self._cls[layer].to(x.dtype)
                return x
            return edit

        def put_patch(layer):
            def edit(x):
                x[rows, pos] = self._patch[layer].to(x.dtype)
                return x
            return edit

        if self.head_reads_cls is None:  # the last layer first: it decides whether the head reads [CLS]
            swapped = self._stacked(images, [tm.depth], put_cls)
            scale = float(output.abs().max()) or 1.0
            moved = float((swapped.float() - output.float()).abs().max()) / scale
            self.head_reads_cls = moved > UNCHANGED_RTOL
            if not self.head_reads_cls:
                self.notes.append("the model's head does not read the [CLS] token (replacing the final [CLS] "
                                  "leaves its output unchanged): the swap metrics are not applicable; the "
                                  "knock-out is measured")
        if not self.head_reads_cls:
            return []
        layers = list(range(tm.depth + 1))
        for kind, edit_of in (("cls", put_cls), ("patch", put_patch)):
            for group in self._groups(layers, n):
                edited = self._stacked(images, group, edit_of)
                for k, layer in enumerate(group):
                    logits = edited[k * n:(k + 1) * n]
                    pred = logits.argmax(dim=-1)
                    acc = top1_correct(logits, y).masked_fill(~valid, float("nan"))
                    follow = donor_follow(pred, donor_pred, own).masked_fill(~valid, float("nan"))
                    out += [(f"{kind}_swap_acc", layer + 1, acc), (f"{kind}_swap_follow", layer + 1, follow)]
        return out

    def _knockouts(self, images, output, y, clean_final) -> tuple[list, torch.Tensor | None]:
        tm, n, out, finals = self.tm, len(images), [], []
        captured: dict[str, torch.Tensor] = {}

        def grab(_mod, _args, result):
            first = result[0] if isinstance(result, (tuple, list)) else result
            captured["cls"] = first[:, 0].detach()

        handle = tm.sites.blocks[-1].register_forward_hook(grab) if self.knockout_features else None
        try:
            for group in self._groups(list(range(tm.depth)), n):
                starts = torch.as_tensor(group, device=images.device).repeat_interleave(n)
                with self._prefix(group), block_key(tm, key=0, from_block=starts,
                                                    queries=slice(tm.sites.num_prefix, None)):
                    knocked = tm.output(images.repeat(len(group), *([1] * (images.dim() - 1))))
                for k, layer in enumerate(group):
                    logits = knocked[k * n:(k + 1) * n]
                    if self.knockout:
                        out += [("cls_knockout_kl", layer + 1, kl_divergence(output, logits)),
                                ("cls_knockout_acc", layer + 1, top1_correct(logits, y))]
                    if self.knockout_features:
                        finals.append(captured["cls"][k * n:(k + 1) * n])
        finally:
            if handle is not None:
                handle.remove()
        if self.knockout:  # from layer L on, no block is masked: the clean forward itself
            out += [("cls_knockout_kl", tm.depth + 1, torch.zeros_like(kl_divergence(output, output))),
                    ("cls_knockout_acc", tm.depth + 1, top1_correct(output, y))]
        if not self.knockout_features:
            return out, None
        finals.append(clean_final[torch.as_tensor(self._sel, device=clean_final.device)])
        return out, torch.stack(finals)
