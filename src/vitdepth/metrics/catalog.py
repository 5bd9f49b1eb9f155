"""The catalogue of metric ids: what each one measures, its formula and its family.

The ids are the ``metric`` column of ``layers.csv`` (design §4). The paper (arXiv 2511.21635)
does not publish exact formulas for token similarity, ACI, CCC or its ISI regressor; where a
definition below is ours it says so.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricInfo:
    """One metric id.

    Attributes:
        id: the metric id in the results table.
        family: figure / report group.
        kind: ``"per_image"`` (a scalar per image, bootstrap CI) or ``"probe"`` (accuracy, Wilson CI).
        layers: ``"all"`` (pre, 0..L), ``"tokens"`` (0..L: needs prefix tokens) or ``"blocks"`` (1..L).
        requires_cls: not applicable to models without a [CLS] token.
        token_sets: token sets the metric is reported for (probes), else empty.
        formula: the formula as implemented.
        reading: what high and low values mean.
    """

    id: str
    family: str
    kind: str
    layers: str
    requires_cls: bool
    token_sets: tuple[str, ...]
    formula: str
    reading: str


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
    )
}

FAMILIES: dict[str, str] = {
    "similarity": "Token similarity",
    "isi": "Information scrambling (attention form)",
    "probe": "Linear probes",
}


def list_metrics(family: str | None = None) -> list[str]:
    """Metric ids, optionally of one family, in catalogue order."""
    return [m.id for m in METRICS.values() if family is None or m.family == family]
