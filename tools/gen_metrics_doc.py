"""Write docs/metrics.md from the metric catalogue (tests check the file is current).

Usage: .venv/bin/python tools/gen_metrics_doc.py
"""

from __future__ import annotations

from pathlib import Path

from vitdepth.metrics.catalog import FAMILIES, GROUPS, METRICS, OPT_IN_GROUPS

HEADER = """# Metrics

Every metric id of the results table (`layers.csv`, column `metric`), generated from
`src/vitdepth/metrics/catalog.py` by `tools/gen_metrics_doc.py`. Notation: for one image at
layer ℓ, patch tokens z_1..z_P (width d), prefix tokens with [CLS] token c, T tokens in all,
H heads, attention rows A_h[i, :]; `pre` is the patch projection before position embedding.

The paper (*Mechanisms of Non-Monotonic Scaling in Vision Transformers*, arXiv 2511.21635)
does not publish exact formulas for the attention consensus (ACI), CLS centrality (CCC), the
centring in token similarity, or its ISI regressor and projections: those definitions are
**ours**, written out below and in the code.

**Selecting metrics**: `vitdepth analyze ... --metrics GROUPS_OR_IDS` with groups {groups}
and single ids, comma-separated. The default is every metric the model supports except the logistic
probe (its L-BFGS fits cost seconds whatever the data size; the paper's probe is the ridge one, always on):
`--metrics all` includes it, and `--probe logistic` adds it to any selection. The causal [CLS] tests (group
`interventions`) cost about three extra forwards per layer and are never part of `all`: ask for
them with `--interventions cls` (optionally on a subset: `--intervention-samples N`) or by id.
The head lens and the interventions need the model's own classification head, found and verified
against the model's output on the first images (`causal.readout` in run.json); a model without one
reports the reason instead. A model without a [CLS]
token gets no rows for the CLS metrics (listed under `metrics.not_applicable` in run.json),
never zeros.

**Confidence intervals**: per-image metrics: 95% percentile bootstrap over images (1,000
resamples); probe accuracies: Wilson 95% interval on the test split; split statistics (ISI
reconstruction form, neural collapse) are statistics of the whole test split and carry no CI
(empty `ci_low` / `ci_high`).

**Conventions**: per-image metrics are means over every analyzed image (all splits). ISI
reconstruction form: fixed random orthonormal projections R_in (d → k_in) and R_out (d → k)
drawn from the run's seed (recorded in run.json), k = 8, k_in = min(32, 1024 // T); ridge with
intercept, λ chosen on the validation split, R² on the test split pooled over all target
dimensions (1 − ΣSSE/ΣSST, SST about the test means). Neural collapse: on the test split,
centred by the mean of the class means, Σ_W pooled over samples (1/N), Σ_B over classes (1/C),
NC1 divides by the number of classes C present; NC3 and NC4 use the ridge probe.

"""

PRECISION = """## Precision

The per-image metrics above are reduced per image in float64 on CPU and in float32 on CUDA; the
big-tensor work (normalising tokens, the softmax, row entropies, the distance mat-vec) runs in
float32 on both (bf16/fp16 taps are upcast first). On CUDA the pass sets
`vitdepth.metrics.functional.reduction_dtype(torch.float32)`, since float64 runs at a small fraction
of the float32 rate on most GPUs, and keeps float64 only for the running sums: the `isi_rec` Gram
matrices and moments, the host-side per-image arrays (images × layers) and the bootstrap. MPS
reduces in float32 (it has no float64).

**Bound**: every per-image metric agrees with the float64 path within |a − b| ≤ 1e-5 · max(|b|, s),
s the metric's own scale: 1/(P−1) for `token_sim` and `token_sim_centered` (the bound of their
range, down to which ‖Σ n_i‖² − P cancels); 1/P for `cls_patch_sim` (one patch's weight in a mean
of cosines that can cancel to 0); 1/T for `cls_centrality` and `cls_self` (uniform attention;
far smaller probabilities underflow float32); 1 for `attn_consensus` (a difference of row
entropies of order log T, so its rounding is absolute); 0, i.e. relative to the value itself, for
`isi_attn`, `attn_delta`, `attn_entropy` and `attn_distance`. `attn_delta` takes 1 − cos from
x_mid − x_in, not from a rounded cosine, which would be off by 0.5 to 5,000 relative for the 1e-7
to 1e-11 values of a residual stream with a large shared offset. TF32 matmuls would void the
bound: leave `torch.backends.cuda.matmul.allow_tf32` off (the default).

**Test**: `tests/test_precision.py` (`.venv/bin/python -m pytest tests/test_precision.py -q`).
`test_float32_reductions_match_float64_on_cpu` runs the float32 code path on CPU against the
float64 one; `test_cuda_float32_matches_cpu_float64` runs it on CUDA against CPU float64 and is
skipped without CUDA. Taps: random-init `timm:vit_tiny_patch16_224` at 64 px (P = 16, T = 17,
12 blocks, 6 images) as they are ("random-init"), and "trained-looking": a shared offset of 100×
the mean token norm added to the residual stream, where float32 cancellation is worst, and
attention logits × 64 (normalised entropy 0.1–0.3).

**Measured** worst error over every layer and image, in the units of the bound (|a − b| / max(|b|, s)),
on CPU with `.venv/bin/python tests/test_precision.py`: the float32 path against the default
float64 reductions of the same float32 taps / against a float64 reference (the taps cast to
float64, so the big-tensor work runs in float64 too). Not yet measured on CUDA.

| metric | random-init: vs float64 reductions / reference | trained-looking: vs float64 reductions / reference |
| --- | --- | --- |
| `token_sim` | 1.3e-07 / 2.0e-07 | 1.5e-07 / 2.1e-07 |
| `token_sim_centered` | 7.7e-08 / 8.0e-08 | 7.6e-08 / 5.5e-07 |
| `cls_patch_sim` | 1.5e-07 / 1.8e-07 | 1.4e-07 / 1.9e-07 |
| `isi_attn` | 2.3e-07 / 4.3e-07 | 1.5e-07 / 3.6e-07 |
| `attn_delta` | 2.1e-07 / 6.7e-07 | 1.7e-07 / 1.8e-07 |
| `attn_entropy` | 1.3e-07 / 1.3e-07 | 2.0e-07 / 2.1e-07 |
| `cls_centrality` | 1.2e-07 / 1.3e-07 | 9.1e-08 / 5.5e-07 |
| `cls_self` | 8.4e-08 / 1.1e-07 | 1.0e-07 / 1.9e-06 |
| `attn_consensus` | 4.2e-07 / 3.9e-07 | 2.4e-07 / 3.0e-07 |
| `attn_distance` | 1.9e-07 / 2.1e-07 | 2.0e-07 / 2.3e-07 |
"""


def render() -> str:
    out = [HEADER.format(groups=", ".join(f"`{g}`" for g in GROUPS))]
    for family, title in FAMILIES.items():
        members = [m for m in METRICS.values() if m.family == family]
        if not members:
            continue
        out.append(f"## {title}\n")
        for m in members:
            groups = ", ".join(m.groups if OPT_IN_GROUPS & set(m.groups) else m.groups + ("all",))
            sets = f" Token sets: {', '.join(m.token_sets)}." if m.token_sets else ""
            layers = {"all": "pre, 0..L", "tokens": "0..L", "blocks": "1..L (blocks)"}[m.layers]
            cls = " Needs a [CLS] token." if m.requires_cls else ""
            out.append(f"### `{m.id}`\n")
            out.append(f"- **Formula**: {m.formula}")
            out.append(f"- **Reading**: {m.reading}")
            out.append(f"- **Cost**: {m.cost}")
            out.append(f"- **Source**: {m.source}")
            out.append(f"- **Layers**: {layers}.{sets}{cls} Groups: {groups}.\n")
    out.append(PRECISION)
    return "\n".join(out)


def main() -> None:
    path = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"
    path.write_text(render())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
