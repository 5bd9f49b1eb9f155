"""The catalogue of metric ids: what each one measures, its formula and its family.

The ids are the ``metric`` column of ``layers.csv`` (design §4). The paper (arXiv 2511.21635)
does not publish exact formulas for token similarity, ACI, CCC or its ISI regressor; where a
definition below is ours it says so.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class MetricInfo:
    """One metric id.

    Attributes:
        id: the metric id in the results table.
        family: figure / report group.
        kind: ``"per_image"`` (a scalar per image, bootstrap CI), ``"probe"`` (accuracy, Wilson CI) or
            ``"split"`` (a statistic of a whole split: no CI).
        layers: ``"all"`` (pre, 0..L), ``"tokens"`` (0..L: needs prefix tokens) or ``"blocks"`` (1..L).
        requires_cls: not applicable to models without a [CLS] token.
        token_sets: token sets the metric is reported for (probes), else empty.
        formula: the formula as implemented.
        reading: what high and low values mean.
        cost: what computing it costs.
        source: where the metric comes from (and whether the exact definition is ours).
        groups: ``--metrics`` groups it belongs to (``core``, ``paper``; ``all`` holds every id).
    """

    id: str
    family: str
    kind: str
    layers: str
    requires_cls: bool
    token_sets: tuple[str, ...]
    formula: str
    reading: str
    cost: str = ""
    source: str = ""
    groups: tuple[str, ...] = ("core", "paper")


METRICS: dict[str, MetricInfo] = {
    m.id: m
    for m in (
        MetricInfo("token_sim", "similarity", "per_image", "all", False, (),
                   "mean_{i≠j} cos(z_i, z_j) over patch tokens = (‖Σ_i z_i/‖z_i‖‖² − P) / (P(P−1)) (our definition)",
                   "1: all patch tokens point the same way (over-smoothing); 0: unrelated directions"),
        MetricInfo("token_sim_centered", "similarity", "per_image", "all", False, (),
                   "token_sim after subtracting the image's mean patch token (our definition)",
                   "similarity beyond the shared mean component; near −1/(P−1) when tokens are spread evenly"),
        MetricInfo("cls_patch_sim", "similarity", "per_image", "tokens", True, (),
                   "mean_i cos(c, z_i), c the [CLS] token (our definition)",
                   "how much the [CLS] token resembles the patches it summarises"),
        MetricInfo("isi_attn", "isi", "per_image", "blocks", False, (),
                   "mean_i s_i·e_i over all tokens, s_i = 1 − cos(x_in_i, x_mid_i), e_i = mean_h H(A_h[i,:]) / log T "
                   "(lightweight attention form of the paper's ISI; our definition)",
                   "high: attention both changes tokens a lot and reads widely (strong mixing); low: little mixing"),
        MetricInfo("attn_delta", "isi", "per_image", "blocks", False, (),
                   "mean_i (1 − cos(x_in_i, x_mid_i)): how much the attention sub-layer changed each token",
                   "0: attention leaves tokens unchanged; larger: attention rewrites the residual stream"),
        MetricInfo("attn_entropy", "isi", "per_image", "blocks", False, (),
                   "mean_i mean_h H(A_h[i,:]) / log T: normalised entropy of attention rows",
                   "1: uniform attention over all tokens; 0: each token attends to one token"),
        MetricInfo("probe_acc", "probe", "probe", "all", False, ("cls", "mean"),
                   "test top-1 accuracy of a closed-form ridge probe on standardized features (one-hot targets, "
                   "λ chosen on the validation split); cls = [CLS] token, mean = mean of patch tokens",
                   "how linearly decodable the labels are from that layer's representation"),
        MetricInfo("probe_acc_logistic", "probe", "probe", "all", False, ("cls", "mean"),
                   "test top-1 accuracy of a softmax-regression probe on standardized features, trained for every "
                   "layer and token set at once; weight decay chosen per head on the validation split",
                   "as probe_acc; usually a little higher, closer to the paper's linear probes", groups=()),
        MetricInfo("isi_rec", "isi_rec", "split", "tokens", False, (),
                   "R²_all − R²_self: held-out R² of recovering the pre-PE patch embeddings R_out e_p from all tokens "
                   "[R_in t_1 … R_in t_T] of the layer minus from R_in z_p alone (seeded random orthonormal "
                   "projections, ridge with λ chosen on validation, R² on test)",
                   "≈ 0: each token still carries its own patch; > 0: the patch's information is spread over other "
                   "tokens (scrambled)", groups=("paper",)),
        MetricInfo("r2_self", "isi_rec", "split", "tokens", False, (),
                   "held-out R² of the self-only ridge R_in z_p → R_out e_p (shared over positions)",
                   "how well a token alone still encodes its own patch embedding", groups=("paper",)),
        MetricInfo("r2_all", "isi_rec", "split", "tokens", False, (),
                   "held-out R² of the all-to-all ridge [R_in t_1 … R_in t_T] → [R_out e_1 … R_out e_P]",
                   "how well all tokens together still encode every patch embedding", groups=("paper",)),
        MetricInfo("cls_centrality", "attention", "per_image", "blocks", True, (),
                   "CCC: mean over heads and patch queries of the attention mass given to the [CLS] key "
                   "(our definition)", "high: patches read the [CLS] token; low: [CLS] is ignored",
                   groups=("paper",)),
        MetricInfo("cls_self", "attention", "per_image", "blocks", True, (),
                   "attention of the [CLS] query to itself, averaged over heads",
                   "high: [CLS] keeps its own content; low: [CLS] gathers from patches", groups=("paper",)),
        MetricInfo("attn_consensus", "attention", "per_image", "blocks", False, (),
                   "ACI: 1 − mean over patch queries of JS(A_q ‖ Ā)/ln 2 per head (Ā = mean patch-query row), "
                   "averaged over heads (our definition)",
                   "1: every patch reads the same tokens (consensus); 0: patches read disjoint tokens",
                   groups=("paper",)),
        MetricInfo("attn_distance", "attention", "per_image", "blocks", False, (),
                   "mean over heads and patch queries of Σ_k A_qk ‖pos(q) − pos(k)‖ / Σ_k A_qk over patch keys "
                   "(in patches; prefix keys excluded)",
                   "large: global attention; small: local attention", groups=("paper",)),
        MetricInfo("nc1", "collapse", "split", "all", False, ("cls", "mean"),
                   "Tr(Σ_W Σ_B†)/C on the test split (Σ_W pooled within-class covariance, Σ_B covariance of the "
                   "class means about their mean)", "→ 0: within-class variability collapses onto the class means",
                   groups=("paper",)),
        MetricInfo("nc2_norm", "collapse", "split", "all", False, ("cls", "mean"),
                   "coefficient of variation of ‖μ_c − μ_G‖ over classes", "→ 0: class means equinorm",
                   groups=("paper",)),
        MetricInfo("nc2_angle", "collapse", "split", "all", False, ("cls", "mean"),
                   "mean over c≠c' of |cos(μ_c − μ_G, μ_c' − μ_G) + 1/(C−1)|",
                   "→ 0: class means form a simplex equiangular tight frame", groups=("paper",)),
        MetricInfo("nc3", "collapse", "split", "all", False, ("cls", "mean"),
                   "‖W/‖W‖_F − M/‖M‖_F‖_F, W the ridge probe weights, M the centred class means",
                   "→ 0: the classifier aligns with the class means (self-duality)", groups=("paper",)),
        MetricInfo("nc4", "collapse", "split", "all", False, ("cls", "mean"),
                   "fraction of test images where the ridge probe and the nearest class mean disagree",
                   "→ 0: the classifier acts as a nearest-class-centre rule", groups=("paper",)),
        MetricInfo("lens_acc", "lens", "per_image", "tokens", False, (),
                   "top-1 accuracy of the model's own readout (final norm, pooling, head) applied to layer ℓ's tokens",
                   "how much of the final decision is already readable at layer ℓ through the model's own head; "
                   "equals the model's accuracy at the last layer", groups=()),
        MetricInfo("lens_kl", "lens", "per_image", "tokens", False, (),
                   "KL(p_final ‖ p_ℓ) in nats, p_ℓ = softmax of the model's own readout applied to layer ℓ",
                   "0: layer ℓ already yields the final output distribution; large: the decision forms later",
                   groups=()),
        MetricInfo("cls_swap_acc", "intervention", "per_image", "tokens", True, (),
                   "top-1 on the image's own label after replacing its [CLS] token at layer ℓ by the [CLS] of a "
                   "donor image of another class (same batch, seeded)",
                   "low: the output still depends on what [CLS] carries at ℓ; back at clean accuracy: [CLS] at ℓ "
                   "no longer matters (it is rebuilt from the patches)", groups=("interventions",)),
        MetricInfo("cls_swap_follow", "intervention", "per_image", "tokens", True, (),
                   "fraction of images whose prediction after the [CLS] swap at layer ℓ equals the donor's clean "
                   "prediction (images whose donor predicts their own class left out)",
                   "1: the [CLS] token at ℓ decides the output; 0: the patches override it", groups=("interventions",)),
        MetricInfo("patch_swap_acc", "intervention", "per_image", "tokens", True, (),
                   "control for cls_swap_acc: the same swap on one random patch position per image",
                   "the cost of swapping any one token; a [CLS] effect is the gap to cls_swap_acc",
                   groups=("interventions",)),
        MetricInfo("patch_swap_follow", "intervention", "per_image", "tokens", True, (),
                   "control for cls_swap_follow: the same swap on one random patch position per image",
                   "how often one swapped patch token carries the donor's class", groups=("interventions",)),
        MetricInfo("cls_knockout_kl", "intervention", "per_image", "tokens", True, (),
                   "KL(p_clean ‖ p_knocked) in nats, patch queries barred from the [CLS] key (−inf score) in blocks "
                   "ℓ..L−1 of the model's own attention (0 at ℓ = L: nothing masked)",
                   "large: patches still read [CLS] from ℓ on and the output depends on it; ≈ 0: [CLS] is not read",
                   groups=("interventions",)),
        MetricInfo("cls_knockout_acc", "intervention", "per_image", "tokens", True, (),
                   "top-1 of the model on the labels with the [CLS] knock-out from block ℓ on",
                   "the accuracy that survives when patches cannot read [CLS] from layer ℓ on",
                   groups=("interventions",)),
        MetricInfo("cls_knockout_probe_acc", "intervention", "probe", "tokens", True, ("cls",),
                   "test accuracy of the final-layer [CLS] ridge probe (fitted on clean features) on the final [CLS] "
                   "features of the forward with the knock-out from block ℓ on",
                   "as cls_knockout_acc, through a linear probe instead of the head (models without a head)",
                   groups=("interventions",)),
    )
}

_PAPER = "arXiv 2511.21635"
_CAUSAL = (f"causal test of {_PAPER}'s [CLS] marginalisation: activation patching and attention knock-out "
           "(Meng et al. 2022, arXiv 2202.05262; Geva et al. 2023, arXiv 2304.14767); our definition")
_OURS = f"{_PAPER} (exact formula not public; our definition)"
_DETAILS = {
    "token_sim": ("O(P·d) per image via the norm of the summed unit vectors; no P×P matrix", _OURS),
    "token_sim_centered": ("O(P·d) per image", _OURS),
    "cls_patch_sim": ("O(P·d) per image", _OURS),
    "isi_attn": ("attention recomputed from the model's q, k a few images at a time (its softmax also yields "
                 "attn_entropy) plus O(T·d)", f"{_PAPER}, lightweight attention form (our definition)"),
    "attn_delta": ("O(T·d) per image", "factor of isi_attn (our definition)"),
    "attn_entropy": ("from the softmax of the recomputed attention, H = log Z − Σ p·(s − max s): no extra pass",
                     "factor of isi_attn; attention entropy as in "
                     "Zhai et al. 2023 (normalised by log T)"),
    "probe_acc": ("after the pass: one d×d Gram per layer and token set, one eigendecomposition serves every λ",
                  f"linear probing (Alain & Bengio 2016), as in {_PAPER}"),
    "probe_acc_logistic": ("after the pass: one L-BFGS run over many layers × token sets × weight decays at once, "
                           "features read from the cache in head groups of at most 256 MiB",
                           "linear evaluation as in DINO / MAE linear probing"),
    "isi_rec": ("per layer and split a (T·k_in)² Gram (≤ 1024²) and a (T·k_in)×(P·k) cross-moment in float64 (a "
                "split of at most T·k_in images keeps its projected rows there instead); after the pass one "
                "eigendecomposition per layer, (T·k_in)³ or n³ for n ≤ T·k_in train images",
                f"{_PAPER} (ISI); projections and regressor are our definition"),
    "r2_self": ("part of isi_rec", "part of isi_rec (our definition)"),
    "r2_all": ("part of isi_rec", "part of isi_rec (our definition)"),
    "cls_centrality": ("O(H·P) per image from the attention", _OURS),
    "cls_self": ("O(H) per image", _OURS),
    "attn_consensus": ("one log pass over the B×H×P×T mixtures with the mean row (row entropies are shared with "
                       "attn_entropy)", _OURS),
    "attn_distance": ("one batched matmul of the attention with the P×P distance matrix",
                      "mean attention distance, Dosovitskiy et al. 2021 (ICLR), Fig. 7"),
    "nc1": ("after the pass, from the cached test features: d×d moments and a pseudo-inverse",
            "Papyan, Han & Donoho 2020 (PNAS)"),
    "nc2_norm": ("from the class means", "Papyan, Han & Donoho 2020"),
    "nc2_angle": ("from the class means", "Papyan, Han & Donoho 2020"),
    "nc3": ("from the class means and the ridge probe weights", "Papyan, Han & Donoho 2020"),
    "nc4": ("one more pass over the cached test features", "Papyan, Han & Donoho 2020"),
    "lens_acc": ("one head evaluation per layer on its tokens (B × d × classes)",
                 "logit lens (nostalgebraist 2020), tuned lens (Belrose et al. 2023, arXiv 2303.08112)"),
    "lens_kl": ("part of lens_acc", "logit lens (nostalgebraist 2020)"),
    "cls_swap_acc": ("2 extra forwards per layer and batch (the [CLS] swap and its patch control)", _CAUSAL),
    "cls_swap_follow": ("part of cls_swap_acc", _CAUSAL),
    "patch_swap_acc": ("part of cls_swap_acc", _CAUSAL),
    "patch_swap_follow": ("part of cls_swap_acc", _CAUSAL),
    "cls_knockout_kl": ("1 extra forward per block and batch", _CAUSAL),
    "cls_knockout_acc": ("part of cls_knockout_kl", _CAUSAL),
    "cls_knockout_probe_acc": ("the knock-out forwards, plus (L+1) × N × d fp16 cached features", _CAUSAL),
}
for _id, (_cost, _source) in _DETAILS.items():
    METRICS[_id] = replace(METRICS[_id], cost=_cost, source=_source)

FAMILIES: dict[str, str] = {
    "similarity": "Token similarity",
    "isi": "Information scrambling (attention form)",
    "isi_rec": "Information scrambling (reconstruction form)",
    "attention": "Attention graph",
    "probe": "Linear probes",
    "collapse": "Neural collapse",
    "lens": "Head lens",
    "intervention": "Causal [CLS] interventions",
}

GROUPS = ("core", "paper", "all", "interventions")
#: groups whose ids ``all`` leaves out: they cost extra forwards (asked for by name or ``--interventions cls``)
OPT_IN_GROUPS = frozenset({"interventions"})
#: ids in ``all`` but not in the default selection: their cost does not shrink with the data (the logistic probe's
#: L-BFGS over every layer x token set x weight decay takes seconds even at 2,000 images, about as long as the whole
#: pass of a small model), and the paper's probe is the ridge one, which is always on. ``--metrics all`` or
#: ``--probe logistic`` turns them on.
NOT_BY_DEFAULT = frozenset({"probe_acc_logistic"})


def list_metrics(family: str | None = None) -> list[str]:
    """Metric ids, optionally of one family, in catalogue order."""
    return [m.id for m in METRICS.values() if family is None or m.family == family]


def resolve_metrics(spec: str | None) -> frozenset[str]:
    """Metric ids selected by ``--metrics``: groups ``core``, ``paper``, ``all`` and single ids, comma-separated.

    ``None`` (no ``--metrics``) means ``all`` without :data:`NOT_BY_DEFAULT` (the logistic probe). ``core`` is the
    single-pass set of the first release (similarity, attention-form ISI, ridge probes); ``paper`` adds everything
    the paper measures; ``all`` adds the logistic probe and the head lens. ``interventions`` (the causal [CLS]
    tests, 2–3 extra forwards per layer) is never part of ``all``: name it.
    """
    import difflib

    from .._errors import VitdepthError

    if spec is None or not spec.strip():
        return resolve_metrics("all") - NOT_BY_DEFAULT
    chosen: set[str] = set()
    for part in (p.strip() for p in spec.split(",")):
        if part == "all":
            chosen |= {m.id for m in METRICS.values() if not OPT_IN_GROUPS & set(m.groups)}
        elif part in ("core", "paper", "interventions"):
            chosen |= {m.id for m in METRICS.values() if part in m.groups}
        elif part in METRICS:
            chosen.add(part)
        else:
            close = difflib.get_close_matches(part, [*GROUPS, *METRICS], n=2)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise VitdepthError(f"unknown metric {part!r} in --metrics{hint} (groups: {', '.join(GROUPS)}; ids: see "
                                "docs/metrics.md)")
    return frozenset(chosen)
