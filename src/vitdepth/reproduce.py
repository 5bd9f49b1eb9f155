"""``vitdepth reproduce paper``: the paper (arXiv 2511.21635) in one command.

Analyzes ViT-S/16, ViT-B/16 and ViT-L/16 through the ordinary pretrained path (``timm:NAME`` specs; ``--weights
DIR`` for offline copies) on the ImageNet validation folder with the paper's settings (:data:`PAPER_SETTINGS`),
compares them (:func:`vitdepth.compare.compare_runs`), and checks each quantitative claim of the paper that we know
(:data:`CLAIMS`) against the measured values: one verdict per claim, ``reproduced``, ``not reproduced`` or
``not measured``.

Layout of ``--out DIR`` (docs/reproduce.md)::

    DIR/.vitdepth-output.json   marker: kind "reproduce", the top-level files it wrote
    DIR/S  DIR/B  DIR/L         run directories (vitdepth analyze), each written atomically
    DIR/compare                 the comparison (vitdepth compare)
    DIR/claims.json             settings, runs, one entry per claim with its verdict
    DIR/claims.csv              the claims as a table
    DIR/report.html             self-contained report

Resuming: a second command on the same ``DIR`` reuses every finished run made with the same settings (its
``run.json`` exists and its marker says it was committed), continues a run interrupted with a checkpoint, and
redoes the comparison and the claims (cheap). Nothing vitdepth did not write is ever replaced.

Claims are data (:class:`Claim`); each names one evaluation rule (:data:`RULES`), a function of the loaded
results that returns the verdict, the measured values and a one-line detail.
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import Interrupted, VitdepthError
from .outputs import MARKER, OutputLock, has_checkpoint, partial_dir, read_marker

PAPER = {"arxiv": "2511.21635", "title": "Mechanisms of Non-Monotonic Scaling in Vision Transformers",
         "url": "https://arxiv.org/abs/2511.21635", "html": "https://arxiv.org/html/2511.21635"}
_EMERGENT_TOPIC = "https://www.emergentmind.com/topics/non-monotonic-scaling-consistency"
_EMERGENT_ISI = "https://www.emergentmind.com/open-problems/theoretical-justification-optimal-scrambling-range"

SIZES = ("S", "B", "L")
REPRODUCED, NOT_REPRODUCED, NOT_MEASURED = "reproduced", "not reproduced", "not measured"
KIND = "reproduce"
OWN_FILES = ("claims.json", "claims.csv", "report.html")

#: The paper's settings, one entry each: the value and where it comes from. Quotes are from the paper's HTML
#: (PAPER["html"]); what the stored text we could read does not state is marked "our choice".
PAPER_SETTINGS: dict[str, dict[str, Any]] = {
    "models": {
        "value": {"S": "vit_small_patch16_224.augreg_in21k_ft_in1k",
                  "B": "vit_base_patch16_224.augreg2_in21k_ft_in1k",
                  "L": "vit_large_patch16_224.augreg_in21k_ft_in1k"},
        "source": "Abstract: 'ViT-S, ViT-B, and ViT-L on ImageNet'; §1: 'ViT-B/16 ... ViT-L/16'. The checkpoint tags "
                  "are not stated in the text we could read: our choice is timm's default ImageNet-1k weights of "
                  "vit_small/base/large_patch16_224 (augreg ImageNet-21k pretraining, ImageNet-1k fine-tuning).",
    },
    "data": {
        "value": "ImageNet-1k validation set (folder:PATH, PATH/<class>/<image>, or PATH/val/<class>/<image>)",
        "source": "Abstract: 'a systematic empirical analysis of ViT-S, ViT-B, and ViT-L on ImageNet'. Which split is "
                  "not stated in the text we could read: our choice is the validation set, which the checkpoints "
                  "were not trained on.",
    },
    "samples": {
        "value": None,
        "source": "The number of images is not stated in the text we could read: our choice is every image of the "
                  "validation set (50,000; 35 train / 5 val / 10 test per class for the probes, vitdepth's 70/10/20 "
                  "split). --samples N takes a class-stratified subset.",
    },
    "image_size": {
        "value": None,
        "source": "The checkpoints' own resolution (224 px, 14x14 patches of 16 px: the '/16' of §1) and their own "
                  "timm preprocessing.",
    },
    "metrics": {
        "value": "paper",
        "source": "vitdepth's 'paper' metric group: centered and plain token similarity (the Cliff-Plateau-Climb "
                  "curves), the Information Scrambling Index (isi_rec, the reconstruction form of the paper's "
                  "definition), the Attention Consensus Index (attn_consensus) and CLS Centrality (cls_centrality), "
                  "linear probes on [CLS] and mean-pooled patch tokens, Neural Collapse (nc1-nc4). Named in the "
                  "abstract and in the summaries cited with each claim; the formulas are ours (docs/metrics.md).",
    },
    "probe": {
        "value": "logistic",
        "source": "The paper reports linear probes; vitdepth's softmax-regression probe is the closest, reported "
                  "beside the default ridge probe (our choice).",
    },
    "interventions": {
        "value": ["cls"],
        "source": "Our addition: vitdepth's causal [CLS] tests (knock-out of the [CLS] key for patch queries, [CLS] "
                  "swaps between images) check the marginalization claim of the abstract causally. About 3 extra "
                  "forwards per layer and image; off in --quick and with --metrics.",
    },
    "intervention_samples": {
        "value": 5000,
        "source": "Our choice: the causal tests run on a stratified 5,000 of the validation images (10%), which "
                  "keeps their ~75 extra ViT-L forwards per image to about 7.5 passes over the whole set; the "
                  "per-image CIs at n = 5,000 are a few tenths of a percent wide.",
    },
    "n_boot": {"value": 1000, "source": "vitdepth default: 95% bootstrap CIs of per-image metrics (ours)."},
    "n_boot_phases": {"value": 200, "source": "vitdepth default: bootstrap CIs of phase boundaries (ours)."},
    "seed": {"value": 0, "source": "vitdepth default (ours)."},
}

#: ``--quick``: a smoke run that shows every verdict line in minutes; its values are not evidence.
QUICK_SETTINGS: dict[str, Any] = {"samples": 500, "n_boot": 100, "n_boot_phases": 20, "probe": None,
                                  "interventions": []}


# ---------------------------------------------------------------------------------------------------------------
# Claims
# ---------------------------------------------------------------------------------------------------------------


#: The abstract's sentence behind the [CLS] / patch-consensus claims (several claims test it, each its own way).
MARGINALIZATION = ("better performance is associated with progressive marginalization of the [CLS] token, originally "
                   "designed as a global aggregation hub, in favor of distributed consensus among patch tokens")


@dataclass(frozen=True)
class Claim:
    """One quantitative claim of the paper and how we check it.

    Attributes:
        id: short stable id.
        title: what the claim is about, in a few words.
        statement: the claim, quoted exactly from ``source``.
        location: where in the paper (or which summary of it) the quote is.
        source: address of the quoted text.
        rule: name of the evaluation rule in :data:`RULES`.
        params: the rule's parameters (metric ids, models, expected values, tolerances).
        how: how we measure it and when it counts as reproduced, in one or two sentences.
    """

    id: str
    title: str
    statement: str
    location: str
    source: str
    rule: str
    params: dict = field(default_factory=dict)
    how: str = ""


@dataclass
class Outcome:
    """The result of evaluating one claim."""

    verdict: str
    measured: dict
    detail: str


CLAIMS: tuple[Claim, ...] = (
    Claim(
        id="cliff_at_pe", title="Cliff: token similarity drops when positional encodings are added",
        statement="Cliff (layers 0–1): Sharp similarity drop immediately after positional encoding insertion (e.g., "
                  "ViT-S from 0.020 at to –0.002 at +PE; ViT-L from 0.021→–0.005).",
        location="Emergent Mind summary of the paper's Cliff analysis (the paper's own numbers could not be read "
                 "from the stored copy of its HTML)",
        source=_EMERGENT_TOPIC, rule="drop_at_pe",
        params={"metric": "token_sim_centered", "before": "pre", "after": "0", "tolerance": 0.01,
                "paper": {"S": [0.020, -0.002], "L": [0.021, -0.005]}},
        how="token_sim_centered at layer pre (patch embeddings before PE) and layer 0 (with PE), per model. "
            "Reproduced when it falls from pre to 0 in every model and, where the paper gives numbers (S, L), both "
            "values lie within ±0.01 (absolute) of them."),
    Claim(
        id="phase_shape", title="Cliff-Plateau-Climb in every size",
        statement="we identify a consistent three-phase Cliff-Plateau-Climb pattern that governs how representations "
                  "evolve with depth",
        location="Abstract", source=PAPER["html"], rule="phase_shape",
        params={"metric": "token_sim_centered", "fallback": "token_sim", "expected": "cliff-plateau-climb",
                "models": list(SIZES)},
        how="Best continuous three-segment fit of centered token similarity over layers pre..L (vitdepth.phases, "
            "default thresholds), per model. Reproduced when the fit is labelled cliff-plateau-climb for S, B and L."),
    Claim(
        id="cls_marginalization", title="[CLS] is marginalized with depth (CLS Centrality falls)",
        statement=MARGINALIZATION,
        location="Abstract", source=PAPER["html"], rule="trend_with_depth",
        params={"metric": "cls_centrality", "direction": "falls", "models": list(SIZES)},
        how="cls_centrality (attention patches pay to [CLS]) averaged over the last third of the blocks against the "
            "first third, per model. Reproduced when it is lower in the last third for S, B and L."),
    Claim(
        id="patch_consensus", title="Patch tokens reach consensus with depth (ACI rises)",
        statement=MARGINALIZATION,
        location="Abstract", source=PAPER["html"], rule="trend_with_depth",
        params={"metric": "attn_consensus", "direction": "rises", "models": list(SIZES)},
        how="attn_consensus (Attention Consensus Index) averaged over the last third of the blocks against the first "
            "third, per model. Reproduced when it is higher in the last third for S, B and L."),
    Claim(
        id="mean_probe_vs_cls", title="Mean-pooled patch tokens carry the class as well as [CLS]",
        statement=MARGINALIZATION,
        location="Abstract", source=PAPER["html"], rule="final_probe_margin",
        params={"metric": "probe_acc", "token_set": "mean", "against": "cls", "tolerance": 0.01,
                "models": list(SIZES)},
        how="Ridge probe accuracy at the last layer on mean-pooled patch tokens against [CLS], per model. "
            "Reproduced when the mean-pooled probe is at most 1 point (0.01) below the [CLS] probe in S, B and L."),
    Claim(
        id="cls_causal", title="Patches no longer need [CLS] late in the network (causal knock-out)",
        statement=MARGINALIZATION,
        location="Abstract", source=PAPER["html"], rule="knockout_cost",
        params={"metric": "cls_knockout_acc", "from_fraction": 2 / 3, "tolerance": 0.01, "models": list(SIZES),
                "also": ["cls_knockout_kl", "cls_swap_follow"]},
        how="cls_knockout_acc: the model's top-1 when patch queries cannot read the [CLS] key from block ℓ on. Per "
            "model, its cost at the first block of the last third (ℓ = ⌈2L/3⌉) against the clean accuracy (ℓ = L, "
            "nothing masked). Reproduced when it costs at most 1 point (0.01) in S, B and L; cls_knockout_kl and "
            "cls_swap_follow at that block are reported beside it. Not measured when the runs have no intervention "
            "metrics (vitdepth without AnalyzeConfig.interventions, --metrics without them, a model without a "
            "verified head)."),
    Claim(
        id="isi_band_B", title="ViT-B's ISI lies in a low positive band",
        statement="the authors report an empirically observed low-positive band of the Scrambling Index in ViT-B "
                  "(approximately 0.004 to 0.009, under their normalization) that aligns with better geometry and "
                  "performance",
        location="Emergent Mind summary of the paper's ISI section (open problem 'optimal scrambling range')",
        source=_EMERGENT_ISI, rule="median_in_band",
        params={"metric": "isi_rec", "model": "B", "band": [0.004, 0.009], "tolerance": 0.005},
        how="Median of isi_rec over ViT-B's blocks 1..L. Reproduced when it lies in [0.004, 0.009] widened by "
            "±0.005 (about the band's width: our normalization is not the paper's)."),
    Claim(
        id="tradeoff_shift_L_vs_B", title="ViT-L's trade-off onset is about 10 layers later than ViT-B's",
        statement="in ViT-L the information-task tradeoff emerges roughly 10 layers later than in ViT-B",
        location="Abstract", source=PAPER["html"], rule="shift_within",
        params={"what": "trade-off onset", "from": "B", "to": "L", "layers": 10, "tolerance": 3},
        how="compare.json shift 'trade-off onset' from ViT-B to ViT-L (first layer whose mean-token probe reaches 99% "
            "of its best). Reproduced when it is 10 ± 3 layers later."),
    Claim(
        id="diffusion_after_onset_L", title="ViT-L's extra layers add diffusion, not accuracy",
        statement="these additional layers correlate with increased information diffusion rather than improved task "
                  "performance",
        location="Abstract", source=PAPER["html"], rule="isi_rises_after_onset",
        params={"model": "L"},
        how="phases.json trade-off onset of ViT-L: after the onset the probe gains under 1% by construction; "
            "reproduced when the ISI still rises after it (isi_rise_after > 0)."),
    Claim(
        id="geometry_B_vs_L", title="ViT-B has better final-layer geometry than ViT-L",
        statement="ViT-B/16 achieves superior geometric quality compared to the much deeper ViT-L/16",
        location="§1 Introduction", source=PAPER["html"], rule="final_less_than",
        params={"metric": "nc1", "token_set": "cls", "smaller": "B", "larger": "L"},
        how="Neural Collapse nc1 (within-class over between-class scatter) of [CLS] at the last layer. Reproduced "
            "when ViT-B's is lower than ViT-L's."),
)


# ---------------------------------------------------------------------------------------------------------------
# Evidence: the loaded results the rules read
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class Evidence:
    """What the rules read: per size the loaded run and its phases, and the comparison."""

    runs: dict[str, Any]  # size -> RunResults
    phases: dict[str, dict | None]
    compare: dict | None = None

    def curve(self, size: str, metric: str, token_set: str = "") -> dict[str, float]:
        """``{layer: value}`` of one curve (finite values only); empty when the run lacks it."""
        res = self.runs.get(size)
        if res is None:
            return {}
        try:
            c = res.curve(metric, token_set)
        except VitdepthError:
            return {}
        return {str(layer): float(v) for layer, v in zip(c.layers, c.values, strict=True) if math.isfinite(v)}

    def depth(self, size: str) -> int:
        return int(self.runs[size].run["model"]["depth"])


def _name(size: str) -> str:
    return f"ViT-{size}"


def _missing(what: str) -> Outcome:
    return Outcome(NOT_MEASURED, {}, what)


def _blocks(values: dict[str, float]) -> list[tuple[int, float]]:
    """``(block, value)`` for layers 1..L, in order."""
    return sorted((int(k), v) for k, v in values.items() if k not in ("pre", "0"))


def _combine(checks: dict[str, tuple[bool, dict, str]], measured_extra: dict | None = None) -> Outcome:
    """One verdict from per-model checks ``{size: (ok, measured, text)}``: reproduced only when all pass."""
    measured = {_name(s): m for s, (_, m, _) in checks.items()} | (measured_extra or {})
    ok = all(c[0] for c in checks.values())
    detail = "; ".join(f"{_name(s)} {t}" for s, (_, _, t) in checks.items())
    return Outcome(REPRODUCED if ok else NOT_REPRODUCED, measured, detail)


def rule_drop_at_pe(claim: Claim, ev: Evidence) -> Outcome:
    """The metric falls from ``before`` to ``after`` in every model; paper values (if any) within ``tolerance``."""
    p = claim.params
    checks = {}
    for size in SIZES:
        values = ev.curve(size, p["metric"])
        if p["before"] not in values or p["after"] not in values:
            return _missing(f"{_name(size)} has no {p['metric']} at layers {p['before']} and {p['after']}")
        a, b = values[p["before"]], values[p["after"]]
        ok, text = b < a, f"{a:.4f} → {b:.4f}"
        paper = p.get("paper", {}).get(size)
        if paper is not None:
            close = abs(a - paper[0]) <= p["tolerance"] and abs(b - paper[1]) <= p["tolerance"]
            ok = ok and close
            text += f" (paper {paper[0]:.3f} → {paper[1]:.3f}: {'within' if close else 'outside'} ±{p['tolerance']})"
        checks[size] = (ok, {p["before"]: a, p["after"]: b}, text + ("" if b < a else ", no drop"))
    return _combine(checks)


def rule_phase_shape(claim: Claim, ev: Evidence) -> Outcome:
    """A three-segment fit of the metric (or its fallback) is labelled ``expected`` in every model."""
    from .phases import fit_three_segments
    from .results import layer_order

    p = claim.params
    checks = {}
    for size in p["models"]:
        metric = p["metric"]
        values = ev.curve(size, metric)
        if len(values) < 5 and p.get("fallback"):
            metric, values = p["fallback"], ev.curve(size, p["fallback"])
        if len(values) < 5:
            return _missing(f"{_name(size)} has no {p['metric']} curve to fit")
        layers = sorted(values, key=layer_order)
        fit = fit_three_segments(np.array([layer_order(x) for x in layers], dtype=float),
                                 np.array([values[x] for x in layers]), ev.depth(size))
        b1, b2 = (("pre" if k < 0 else str(int(k))) for k in fit.breakpoints)
        checks[size] = (fit.label == p["expected"],
                        {"metric": metric, "label": fit.label, "breakpoints": [b1, b2], "r2": round(fit.r2, 4)},
                        f"{fit.label} (boundaries {b1}, {b2})")
    return _combine(checks)


def rule_trend_with_depth(claim: Claim, ev: Evidence) -> Outcome:
    """Mean over the last third of the blocks is below (``falls``) / above (``rises``) the first third's."""
    p = claim.params
    checks = {}
    also = {}
    for size in p["models"]:
        blocks = _blocks(ev.curve(size, p["metric"]))
        if len(blocks) < 3:
            return _missing(f"{_name(size)} has no {p['metric']} (not computed in these runs)")
        third = max(1, len(blocks) // 3)
        first = float(np.mean([v for _, v in blocks[:third]]))
        last = float(np.mean([v for _, v in blocks[-third:]]))
        ok = last < first if p["direction"] == "falls" else last > first
        checks[size] = (ok, {"first_third": first, "last_third": last},
                        f"{first:.4f} → {last:.4f} ({'falls' if last < first else 'rises'})")
        for metric in p.get("also", ()):
            extra = _blocks(ev.curve(size, metric))
            if extra:
                also.setdefault(metric, {})[_name(size)] = {str(k): v for k, v in extra}
    return _combine(checks, also)


def rule_knockout_cost(claim: Claim, ev: Evidence) -> Outcome:
    """Accuracy lost when [CLS] is knocked out from the block at ``from_fraction`` of the depth on: <= tolerance."""
    p = claim.params
    checks = {}
    for size in p["models"]:
        depth = ev.depth(size)
        start = str(math.ceil(p["from_fraction"] * depth - 1e-9))
        values = ev.curve(size, p["metric"])
        if start not in values or str(depth) not in values:
            return _missing(f"{_name(size)} has no {p['metric']} (the runs have no [CLS] interventions)")
        cost = values[str(depth)] - values[start]
        measured = {"from_block": start, "clean": values[str(depth)], "knocked_out": values[start], "cost": cost}
        for metric in p.get("also", ()):
            measured[metric] = ev.curve(size, metric).get(start)
        checks[size] = (cost <= p["tolerance"], measured, f"from block {start}: {values[start]:.3f} vs clean "
                        f"{values[str(depth)]:.3f} (cost {cost:+.3f})")
    return _combine(checks)


def rule_final_probe_margin(claim: Claim, ev: Evidence) -> Outcome:
    """At the last layer, ``token_set``'s probe is at most ``tolerance`` below ``against``'s."""
    p = claim.params
    checks = {}
    for size in p["models"]:
        last = str(ev.depth(size))
        a = ev.curve(size, p["metric"], p["token_set"]).get(last)
        b = ev.curve(size, p["metric"], p["against"]).get(last)
        if a is None or b is None:
            return _missing(f"{_name(size)} has no {p['metric']} for {p['token_set']} and {p['against']} at its last "
                            "layer")
        checks[size] = (a >= b - p["tolerance"], {p["token_set"]: a, p["against"]: b},
                        f"{p['token_set']} {a:.3f} vs {p['against']} {b:.3f}")
    return _combine(checks)


def rule_median_in_band(claim: Claim, ev: Evidence) -> Outcome:
    """The median over blocks 1..L lies in ``band`` widened by ``tolerance``."""
    p = claim.params
    blocks = _blocks(ev.curve(p["model"], p["metric"]))
    if not blocks:
        return _missing(f"{_name(p['model'])} has no {p['metric']} (not computed in these runs)")
    values = [v for _, v in blocks]
    median = float(np.median(values))
    lo, hi = p["band"]
    inside = sum(lo <= v <= hi for v in values)
    ok = lo - p["tolerance"] <= median <= hi + p["tolerance"]
    return Outcome(REPRODUCED if ok else NOT_REPRODUCED,
                   {_name(p["model"]): {"median": median, "layers_in_band": inside, "layers": len(values)}},
                   f"{_name(p['model'])} median {median:.4f} ({inside}/{len(values)} blocks inside {lo}–{hi})")


def rule_shift_within(claim: Claim, ev: Evidence) -> Outcome:
    """compare.json's shift ``what`` from ``from`` to ``to`` is ``layers`` ± ``tolerance``."""
    p = claim.params
    if ev.compare is None:
        return _missing("no comparison")
    src, dst = _name(p["from"]), _name(p["to"])
    shift = next((s for s in ev.compare.get("shifts", []) if s.get("what") == p["what"] and s.get("from") == src
                  and s.get("to") == dst), None)
    if shift is None or shift.get("layers") is None:
        return _missing(f"compare.json has no '{p['what']}' shift from {src} to {dst} (no saturation: probes missing)")
    layers = float(shift["layers"])
    ok = abs(layers - p["layers"]) <= p["tolerance"]
    return Outcome(REPRODUCED if ok else NOT_REPRODUCED,
                   {"layers": layers, "relative_depth": shift.get("relative_depth"), "sentence": shift.get("sentence")},
                   f"{dst} is {layers:+g} layers from {src} (expected {p['layers']:+g} ± {p['tolerance']})")


def rule_isi_rises_after_onset(claim: Claim, ev: Evidence) -> Outcome:
    """phases.json's trade-off onset of ``model`` has ``isi_rise_after`` > 0."""
    size = claim.params["model"]
    onset = (ev.phases.get(size) or {}).get("tradeoff_onset") or {}
    rise = onset.get("isi_rise_after")
    if rise is None:
        return _missing(f"{_name(size)} has no trade-off onset with an ISI value in phases.json")
    return Outcome(REPRODUCED if rise > 0 else NOT_REPRODUCED,
                   {_name(size): {"onset_layer": onset.get("layer"), "isi_metric": onset.get("isi_metric"),
                                  "isi_rise_after": rise}},
                   f"{_name(size)}: onset at layer {onset.get('layer')}, {onset.get('isi_metric')} changes by "
                   f"{rise:+.4f} after it")


def rule_final_less_than(claim: Claim, ev: Evidence) -> Outcome:
    """The metric at the last layer of ``smaller`` is below that of ``larger``."""
    p = claim.params
    vals = {}
    for size in (p["smaller"], p["larger"]):
        v = ev.curve(size, p["metric"], p["token_set"]).get(str(ev.depth(size)))
        if v is None:
            return _missing(f"{_name(size)} has no {p['metric']} ({p['token_set']}) at its last layer")
        vals[size] = v
    a, b = vals[p["smaller"]], vals[p["larger"]]
    return Outcome(REPRODUCED if a < b else NOT_REPRODUCED, {_name(k): v for k, v in vals.items()},
                   f"{_name(p['smaller'])} {a:.4f} vs {_name(p['larger'])} {b:.4f}")


#: Evaluation rules by name: ``rule(claim, evidence) -> Outcome``.
RULES = {
    "drop_at_pe": rule_drop_at_pe,
    "phase_shape": rule_phase_shape,
    "trend_with_depth": rule_trend_with_depth,
    "final_probe_margin": rule_final_probe_margin,
    "knockout_cost": rule_knockout_cost,
    "median_in_band": rule_median_in_band,
    "shift_within": rule_shift_within,
    "isi_rises_after_onset": rule_isi_rises_after_onset,
    "final_less_than": rule_final_less_than,
}


def evaluate(claim: Claim, ev: Evidence) -> Outcome:
    """Evaluate one claim; a rule that cannot read what it needs gives ``not measured``, never an error."""
    try:
        return RULES[claim.rule](claim, ev)
    except (KeyError, ValueError, VitdepthError) as e:
        return _missing(f"could not be evaluated: {e}")


def load_evidence(run_dirs: dict[str, Path], compare_dir: Path | None) -> Evidence:
    """Load the runs, their phases and the comparison from disk."""
    from .results import load_phases, load_run

    runs = {size: load_run(d) for size, d in run_dirs.items()}
    phases = {}
    for size, res in runs.items():
        try:
            phases[size] = load_phases(res)
        except VitdepthError:
            phases[size] = None
    cmp = None
    if compare_dir is not None and (compare_dir / "compare.json").is_file():
        cmp = json.loads((compare_dir / "compare.json").read_text())
    return Evidence(runs, phases, cmp)


def evaluate_all(ev: Evidence, claims: tuple[Claim, ...] = CLAIMS) -> list[dict]:
    """Every claim with its outcome, as JSON-ready dicts."""
    out = []
    for c in claims:
        o = evaluate(c, ev)
        out.append({"id": c.id, "title": c.title, "verdict": o.verdict, "statement": c.statement,
                    "location": c.location, "source": c.source, "rule": c.rule, "params": c.params, "how": c.how,
                    "measured": o.measured, "detail": o.detail})
    return out


# ---------------------------------------------------------------------------------------------------------------
# Options, checks, runs
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class ReproduceOptions:
    """Everything ``vitdepth reproduce paper`` takes (see :func:`add_parser` for the meaning of each)."""

    imagenet: str
    out: str
    weights: str | None = None
    quick: bool = False
    random_init: bool = False
    device: str = "cpu"
    batch_size: int = 32
    samples: int | None = None
    image_size: int | None = None
    metrics: str | None = None
    figures: bool = True
    overwrite: bool = False
    quiet: bool = False
    command_line: tuple[str, ...] = ()


def settings(opts: ReproduceOptions) -> dict[str, Any]:
    """The settings this command runs with: the paper's, then ``--quick``'s, then explicit options."""
    s = {k: v["value"] for k, v in PAPER_SETTINGS.items()}
    if opts.quick:
        s.update(QUICK_SETTINGS)
    if opts.samples is not None:
        s["samples"] = opts.samples
    if opts.image_size is not None:
        s["image_size"] = opts.image_size
    if opts.metrics is not None:
        s["metrics"] = opts.metrics
    return s


def weight_files(weights: Path, name: str) -> list[Path]:
    """Where ``--weights DIR`` may hold a model's file: ``ARCH.safetensors``, or ``ARCH.TAG.safetensors``."""
    arch = name.partition(".")[0]
    return [weights / f"{arch}.safetensors", weights / f"{name}.safetensors"]


def _imagenet_spec(path: str, out: Path) -> str:
    """The ``folder:`` spec of the ImageNet validation folder, checked before any model loads."""
    from .data import create_source

    root = Path(os.path.abspath(os.path.expanduser(path)))
    fix = ("pass the ImageNet validation folder laid out as PATH/<class>/<image> (e.g. n01440764/...JPEG), or a "
           "root holding val/<class>/<image>")
    if ":" in str(root):
        raise VitdepthError(f"--imagenet {path}: the path contains ':', which data specs cannot hold; link it "
                            "somewhere without one")
    if not root.is_dir():
        raise VitdepthError(f"--imagenet {path} is not a folder; {fix}")
    subdirs = [e for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")]
    if not subdirs:
        raise VitdepthError(f"--imagenet {path} has no class subfolders; {fix}")
    names = {e.name for e in subdirs}
    split = next((s for s in ("val", "validation") if s in names and (root / s).is_dir()), None)
    spec = f"folder:{root}:split={split}" if split and names & {"train", "test", "val", "validation"} == names \
        else f"folder:{root}"
    source = create_source(spec, exclude=[out])
    if not getattr(source, "labelled", True) or len(getattr(source, "class_names", [])) < 2:
        raise VitdepthError(f"--imagenet {path} is not a folder of class subfolders with images (found "
                            f"{len(getattr(source, 'class_names', []))} classes); {fix}")
    return spec


def _model_plan(opts: ReproduceOptions, sett: dict) -> dict[str, dict]:
    """Per size: the model spec and its checkpoint (``--weights``), checked before any model loads."""
    if opts.weights and opts.random_init:
        raise VitdepthError("--weights and --random-init contradict each other; pass one of them")
    plan = {}
    weights = Path(opts.weights).expanduser() if opts.weights else None
    if weights is not None and not weights.is_dir():
        raise VitdepthError(f"--weights {opts.weights} is not a folder; pass the folder holding "
                            f"{', '.join(n.partition('.')[0] + '.safetensors' for n in sett['models'].values())}")
    for size in SIZES:
        name = sett["models"][size]
        checkpoint = None
        if weights is not None:
            found = next((f for f in weight_files(weights, name) if f.is_file()), None)
            if found is None:
                expected = weight_files(weights, name)[0]
                raise VitdepthError(f"--weights {opts.weights} has no {expected.name} (the weights of {_name(size)}, "
                                    f"timm:{name}); save them there as safetensors (docs/reproduce.md shows how) or "
                                    "leave out --weights to use timm's cache")
            checkpoint = str(found)
        # random init: the architecture only (a tag names pretrained weights)
        spec = f"timm:{name.partition('.')[0] if opts.random_init else name}"
        plan[size] = {"model": spec, "checkpoint": checkpoint}
    return plan


def _check_device(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise VitdepthError(f"--device {device} was asked for but CUDA is not available here; use --device cpu")
    elif device != "cpu":
        raise VitdepthError(f"--device {device!r} is not understood; use cpu or cuda[:N]")


def _run_key(plan: dict, data: str, sett: dict, opts: ReproduceOptions, interventions: bool) -> dict:
    """What a finished run must share with this command to be reused (recorded in its run.json)."""
    return {"target": "paper", "model": plan["model"], "checkpoint": plan["checkpoint"],
            "random_init": opts.random_init, "data": data, "samples": sett["samples"],
            "image_size": sett["image_size"], "metrics": sett["metrics"], "probe": sett["probe"],
            "n_boot": sett["n_boot"], "n_boot_phases": sett["n_boot_phases"], "seed": sett["seed"],
            "interventions": interventions,
            "intervention_samples": sett["intervention_samples"] if interventions else None}


def _finished_key(run_dir: Path) -> dict | None:
    """The reproduce key of a finished (committed) run directory, ``{}`` for a run without one, None if unfinished."""
    marker = read_marker(run_dir)
    if not marker or marker.get("kind") != "run" or not marker.get("complete") or not (run_dir / "run.json").is_file():
        return None
    try:
        return json.loads((run_dir / "run.json").read_text()).get("config", {}).get("reproduce") or {}
    except (OSError, ValueError):
        return None


def _differences(a: dict, b: dict) -> str:
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return ", ".join(f"{k} {a.get(k)!r} vs {b.get(k)!r}" for k in keys[:3]) or "unknown settings"


class _ReproduceDir:
    """``--out DIR``: created or adopted (empty, or an earlier reproduce's), locked, marked, never a user's folder."""

    def __init__(self, out: str) -> None:
        self.given = Path(out)
        self.path = Path(os.path.abspath(self.given))
        self.lock = OutputLock(self.path)

    def check(self) -> None:
        p = self.path
        if self.given.is_symlink() or (p.exists() and not p.is_dir()):
            raise VitdepthError(f"--out {self.given} is not a directory; choose a new directory for --out")
        cwd = Path.cwd().resolve()
        if p.exists() and (p.resolve() == cwd or p.resolve() in cwd.parents):
            raise VitdepthError(f"--out {self.given} is the current directory or one of its parents; choose a new "
                                "directory")
        if p.is_dir() and any(p.iterdir()):
            marker = read_marker(p)
            if not marker or marker.get("kind") != KIND:
                raise VitdepthError(f"--out {self.given} exists and was not written by vitdepth reproduce; choose a "
                                    "new directory (vitdepth never writes into folders it did not create)")

    def __enter__(self) -> _ReproduceDir:
        self.check()
        self.lock.__enter__()
        try:
            self.check()
            self.path.mkdir(parents=True, exist_ok=True)
            marker = read_marker(self.path) or {}
            self.files = list(marker.get("files", []))
            for name in OWN_FILES:  # never replace a file of the user's that happens to carry one of our names
                if (self.path / name).exists() and name not in self.files:
                    raise VitdepthError(f"--out {self.given} holds {name}, which vitdepth did not write; move it "
                                        "out or choose another directory")
            self._write_marker(complete=False)
        except BaseException:
            self.lock.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.lock.__exit__(None, None, None)

    def _write_marker(self, complete: bool) -> None:
        from . import __version__

        data = {"kind": KIND, "target": "paper", "complete": complete, "vitdepth_version": __version__,
                "updated": time.strftime("%Y-%m-%d %H:%M:%S"), "files": sorted(set(self.files))}
        _atomic_write(self.path / MARKER, json.dumps(data, indent=2))

    def write(self, name: str, text: str) -> Path:
        """Write one of our top-level files atomically and record it in the marker."""
        if name not in self.files:
            self.files.append(name)
            self._write_marker(complete=False)
        _atomic_write(self.path / name, text)
        return self.path / name

    def done(self) -> None:
        self._write_marker(complete=True)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _say(opts: ReproduceOptions, text: str) -> None:
    if not opts.quiet:
        print(text, flush=True)


def _analyze_one(size: str, plan: dict, key: dict, data: str, sett: dict, opts: ReproduceOptions, root: Path,
                 interventions: bool, step: str) -> tuple[Path, str]:
    """Run (or reuse, or resume) one size; returns its directory and what was done."""
    from .analysis.run import AnalyzeConfig, analyze

    run_dir = root / size
    finished = _finished_key(run_dir) if run_dir.exists() else None
    if finished is not None and finished == key and not opts.overwrite:
        _say(opts, f"{step} {_name(size)}: reusing the finished run {run_dir}")
        return run_dir, "reused"
    if finished is not None and finished != key and not opts.overwrite:
        raise VitdepthError(f"{run_dir} was analyzed with other settings ({_differences(finished, key)}); pass "
                            "--overwrite to redo it, or choose another --out")
    if run_dir.exists() and finished is None:
        raise VitdepthError(f"{run_dir} is not a finished vitdepth run; move it out of {root} or choose another --out")
    resume = not opts.overwrite and has_checkpoint(partial_dir(run_dir))
    intervention = ({"interventions": ("cls",), "intervention_samples": sett["intervention_samples"]}
                    if interventions else {})
    cfg = AnalyzeConfig(model=plan["model"], checkpoint=plan["checkpoint"], random_init=opts.random_init, data=data,
                        out=str(run_dir), name=_name(size), samples=sett["samples"], batch_size=opts.batch_size,
                        device=opts.device, seed=sett["seed"], metrics=sett["metrics"], probe=sett["probe"],
                        n_boot=sett["n_boot"], n_boot_phases=sett["n_boot_phases"], image_size=sett["image_size"],
                        quiet=opts.quiet, overwrite=opts.overwrite, resume=resume,
                        figures=opts.figures, report=opts.figures, command_line=opts.command_line,
                        extra={"reproduce": key}, **intervention)
    how = "resuming the interrupted run" if resume else "analyzing"
    _say(opts, f"{step} {_name(size)}: {how} {plan['model']}"
               f"{' (' + plan['checkpoint'] + ')' if plan['checkpoint'] else ''} on "
               f"{'all' if sett['samples'] is None else sett['samples']} images of {data}")
    t = time.perf_counter()
    try:
        analyze(cfg)
    except Interrupted as e:
        raise Interrupted(f"{e}. To continue, run the same `vitdepth reproduce paper` command again: finished runs "
                          "are reused and this one resumes from its checkpoint", e.exit_code - 128) from None
    _say(opts, f"{step} {_name(size)}: done in {time.perf_counter() - t:.1f}s")
    return run_dir, "resumed" if resume else "analyzed"


def reproduce_paper(opts: ReproduceOptions) -> dict:
    """Run the three sizes, compare them, evaluate the claims and write ``claims.json``, ``claims.csv`` and
    ``report.html`` into ``opts.out``; returns the claims record (also written as ``claims.json``).

    Raises:
        VitdepthError: bad input, found before any model loads (one line naming the problem and the fix).
        Interrupted: a run was stopped; its checkpoint is kept and the same command continues it.
    """
    from .compare import compare_runs

    t0 = time.perf_counter()
    sett = settings(opts)
    if opts.batch_size < 1:
        raise VitdepthError(f"--batch-size must be >= 1, got {opts.batch_size}")
    if sett["samples"] is not None and sett["samples"] < 2:
        raise VitdepthError(f"--samples must be at least 2 images, got {sett['samples']}")
    _check_device(opts.device)
    out = _ReproduceDir(opts.out)
    out.check()
    plan = _model_plan(opts, sett)
    data = _imagenet_spec(opts.imagenet, out.path)
    # the causal tests cost about 3 extra forwards per layer and image: run with the paper's metric set, not with an
    # explicit --metrics, and not in --quick (on a CPU they would make the smoke run take hours)
    interventions = bool(sett["interventions"]) and opts.metrics is None
    notes = []
    if not interventions:
        why = "--quick" if opts.quick else "--metrics given"
        notes.append(f"{why}: the causal [CLS] interventions were not run (cls_causal is not measured).")
    if opts.random_init:
        notes.append("--random-init: untrained models; the verdicts test the mechanics, not the paper.")
    if opts.quick:
        notes.append("--quick: a small subset and few bootstrap resamples; the values are not evidence.")
    with out:
        runs, actions = {}, {}
        for i, size in enumerate(SIZES):
            key = _run_key(plan[size], data, sett, opts, interventions)
            runs[size], actions[size] = _analyze_one(size, plan[size], key, data, sett, opts, out.path,
                                                     interventions, f"[{i + 1}/{len(SIZES)}]")
        cmp_dir = out.path / "compare"
        _say(opts, f"comparing and aligning {', '.join(_name(s) for s in SIZES)}")
        compare_runs([runs[s] for s in SIZES], cmp_dir, overwrite=cmp_dir.exists(), figures=opts.figures, align=True)
        ev = load_evidence(runs, cmp_dir)
        claims = evaluate_all(ev)
        record = {
            "paper": PAPER, "target": "paper", "quick": opts.quick, "random_init": opts.random_init,
            "settings": {k: {"value": sett.get(k, v["value"]), "source": v["source"]}
                         for k, v in PAPER_SETTINGS.items()} | {
                "interventions": {"value": ["cls"] if interventions else [],
                                  "source": PAPER_SETTINGS["interventions"]["source"]}},
            "quick_settings": QUICK_SETTINGS if opts.quick else None,
            "data": data, "device": opts.device, "batch_size": opts.batch_size,
            "runs": {_name(s): {"dir": s, "model": plan[s]["model"], "checkpoint": plan[s]["checkpoint"],
                                "action": actions[s]} for s in SIZES},
            "compare": "compare", "align": True, "interventions": interventions, "notes": notes,
            "summary": {v: sum(c["verdict"] == v for c in claims) for v in (REPRODUCED, NOT_REPRODUCED, NOT_MEASURED)},
            "claims": claims, "seconds": round(time.perf_counter() - t0, 1),
        }
        out.write("claims.json", json.dumps(record, indent=2, default=_json_default))
        out.write("claims.csv", claims_csv(claims))
        out.write("report.html", report_html(record))
        out.done()
    return record


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    return str(o)


# ---------------------------------------------------------------------------------------------------------------
# Output: terminal table, CSV, HTML
# ---------------------------------------------------------------------------------------------------------------

CSV_COLUMNS = ("id", "verdict", "title", "statement", "location", "source", "rule", "how", "measured", "detail")


def claims_csv(claims: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS)
    for c in claims:
        w.writerow([json.dumps(c[k], default=_json_default) if k == "measured" else c[k] for k in CSV_COLUMNS])
    return buf.getvalue()


def verdict_line(c: dict) -> str:
    """``[reproduced]      cliff_at_pe: detail`` — the line printed per claim."""
    return f"{'[' + c['verdict'] + ']':<17} {c['id']}: {c['detail']}"


def terminal_table(record: dict) -> str:
    lines = [f"Reproducing {PAPER['title']} (arXiv {PAPER['arxiv']})"]
    lines += [f"note: {n}" for n in record["notes"]]
    for c in record["claims"]:
        lines.append(verdict_line(c))
        lines.append(f"{'':<17} paper ({c['location'].split(' (')[0]}): \"{_short(c['statement'])}\"")
    s = record["summary"]
    lines.append(f"{s[REPRODUCED]} reproduced, {s[NOT_REPRODUCED]} not reproduced, {s[NOT_MEASURED]} not measured "
                 f"({record['seconds']:.0f}s)")
    return "\n".join(lines)


def _short(text: str, n: int = 110) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"


_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;width:100%;margin:1em 0}td,th{border:1px solid #ccc;padding:.4em;vertical-align:top;
text-align:left;font-size:.9em}th{background:#f4f4f4}.v-reproduced{background:#dff5df}
.v-not-reproduced{background:#fbe0e0}.v-not-measured{background:#eee}code{font-size:.9em}blockquote{margin:0;
color:#444;font-style:italic}.note{background:#fff8dc;padding:.5em;border-left:4px solid #e0c050}"""


def report_html(record: dict) -> str:
    """A self-contained page: verdicts, the quoted claims, rules, measured values, settings with sources, links."""
    e = html.escape
    s = record["summary"]
    rows = []
    for c in record["claims"]:
        cls = "v-" + c["verdict"].replace(" ", "-")
        rows.append(f"<tr><td><b>{e(c['id'])}</b><br>{e(c['title'])}</td><td class='{cls}'><b>{e(c['verdict'])}</b>"
                    f"</td><td><blockquote>“{e(c['statement'])}”</blockquote><small>{e(c['location'])}, "
                    f"<a href='{e(c['source'])}'>{e(c['source'])}</a></small></td><td>{e(c['how'])}</td>"
                    f"<td>{e(c['detail'])}<details><summary>values</summary><pre>"
                    f"{e(json.dumps(c['measured'], indent=1, default=_json_default))}</pre></details></td></tr>")
    settings_rows = "".join(
        f"<tr><td><code>{e(k)}</code></td><td>{e(json.dumps(v['value'], default=_json_default))}</td>"
        f"<td>{e(v['source'])}</td></tr>" for k, v in record["settings"].items())
    runs = "".join(f"<li>{e(n)}: <code>{e(r['model'])}</code>{' from ' + e(r['checkpoint']) if r['checkpoint'] else ''}"
                   f" ({e(r['action'])}) — <a href='{e(r['dir'])}/report.html'>{e(r['dir'])}/report.html</a></li>"
                   for n, r in record["runs"].items())
    notes = "".join(f"<p class='note'>{e(n)}</p>" for n in record["notes"])
    body = (f"<h1>Reproducing “{e(PAPER['title'])}”</h1><p>arXiv <a href='{e(PAPER['url'])}'>{e(PAPER['arxiv'])}</a>"
            f" — {s[REPRODUCED]} reproduced, {s[NOT_REPRODUCED]} not reproduced, {s[NOT_MEASURED]} not measured; "
            f"data <code>{e(record['data'])}</code>, device {e(record['device'])}, {record['seconds']:.0f}s.</p>"
            f"{notes}<h2>Claims</h2><table><tr><th>claim</th><th>verdict</th><th>paper</th><th>how we measure it</th>"
            f"<th>measured</th></tr>{''.join(rows)}</table><p>“Reproduced” means the rule in the fourth column holds "
            "on our measurements; the formulas of token similarity, ISI, ACI and CCC are vitdepth's own "
            "(docs/metrics.md), so absolute values may differ from the paper's while the shapes agree.</p>"
            f"<h2>Runs</h2><ul>{runs}<li>comparison — <a href='compare/report.html'>compare/report.html</a></li></ul>"
            f"<h2>Settings</h2><table><tr><th>setting</th><th>value</th><th>source</th></tr>{settings_rows}</table>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>vitdepth reproduce paper</title>"
            f"<style>{_STYLE}</style></head><body>{body}</body></html>")


# ---------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------

def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``reproduce`` subcommand to an argparse ``subparsers`` object; its handler is ``args.handler``."""
    p = subparsers.add_parser(
        "reproduce", help="reproduce a paper's results in one command (target: paper = arXiv 2511.21635)",
        description="Analyze ViT-S/16, ViT-B/16 and ViT-L/16 on the ImageNet validation set with the paper's "
                    "settings, compare them, and check each of the paper's quantitative claims against the measured "
                    "values (reproduced / not reproduced / not measured). Resumable: run the same command again to "
                    "continue; finished runs are reused. See docs/reproduce.md.",
        epilog="examples:\n  vitdepth reproduce paper --imagenet /data/imagenet/val --out repro --device cuda "
               "--batch-size 256\n  vitdepth reproduce paper --imagenet /data/imagenet --weights weights/ --out repro\n"
               "  vitdepth reproduce paper --imagenet /data/imagenet/val --out repro-quick --quick",
        formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("target", choices=("paper",), help="what to reproduce: paper = arXiv 2511.21635")
    p.add_argument("--imagenet", required=True, metavar="PATH",
                   help="ImageNet validation folder (PATH/<class>/<image>), or a root holding val/<class>/<image>")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (three runs, comparison, claims)")
    p.add_argument("--weights", default=None, metavar="DIR",
                   help="offline weights: DIR/vit_small_patch16_224.safetensors, DIR/vit_base_patch16_224.safetensors, "
                        "DIR/vit_large_patch16_224.safetensors (default: timm's pretrained weights via its cache)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: {QUICK_SETTINGS['samples']} images, {QUICK_SETTINGS['n_boot']} bootstrap "
                        "resamples, no logistic probe, no [CLS] interventions (every verdict line appears; the values "
                        "are not evidence)")
    p.add_argument("--random-init", action="store_true", help="untrained models of the same architectures (tests)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward (default: 32)")
    p.add_argument("--samples", type=int, default=None,
                   help="analyze a class-stratified subset of N images (default: all; --quick: "
                        f"{QUICK_SETTINGS['samples']})")
    p.add_argument("--image-size", type=int, default=None,
                   help="run the models at this input size (default: their own, 224); small sizes for smoke tests")
    p.add_argument("--metrics", default=None,
                   help="metric ids or groups instead of the paper's set; the causal [CLS] interventions are then "
                        "not run (claims whose metrics are left out are 'not measured')")
    p.add_argument("--no-figures", action="store_true",
                   help="skip the per-run figures and HTML reports (faster; claims and report.html are written)")
    p.add_argument("--overwrite", action="store_true",
                   help="redo every run and the comparison instead of reusing finished runs")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted reproduce (what the command always does: finished runs are reused)")
    p.add_argument("--quiet", action="store_true", help="no progress and no table")
    p.set_defaults(handler=_handle)
    return p


def _handle(args: argparse.Namespace) -> int:
    opts = ReproduceOptions(imagenet=args.imagenet, out=args.out, weights=args.weights, quick=args.quick,
                            random_init=args.random_init, device=args.device, batch_size=args.batch_size,
                            samples=args.samples, image_size=args.image_size, metrics=args.metrics,
                            figures=not args.no_figures, overwrite=args.overwrite, quiet=args.quiet,
                            command_line=("vitdepth", *getattr(args, "argv", [])))
    record = reproduce_paper(opts)
    if not args.quiet:
        print(terminal_table(record))
        print(f"claims: {Path(args.out) / 'claims.json'}, {Path(args.out) / 'claims.csv'}")
        print(f"report: {Path(args.out) / 'report.html'}")
    return 0
