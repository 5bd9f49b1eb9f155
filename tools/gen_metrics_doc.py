"""Write docs/metrics.md from the metric catalogue (tests check the file is current).

Usage: .venv/bin/python tools/gen_metrics_doc.py
"""

from __future__ import annotations

from pathlib import Path

from vitdepth.metrics.catalog import FAMILIES, GROUPS, METRICS

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
and single ids, comma-separated. The default is every metric the model supports (`all`);
`--probe logistic` adds the logistic probe to a smaller selection. A model without a [CLS]
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


def render() -> str:
    out = [HEADER.format(groups=", ".join(f"`{g}`" for g in GROUPS))]
    for family, title in FAMILIES.items():
        members = [m for m in METRICS.values() if m.family == family]
        if not members:
            continue
        out.append(f"## {title}\n")
        for m in members:
            groups = ", ".join(m.groups + ("all",))
            sets = f" Token sets: {', '.join(m.token_sets)}." if m.token_sets else ""
            layers = {"all": "pre, 0..L", "tokens": "0..L", "blocks": "1..L (blocks)"}[m.layers]
            cls = " Needs a [CLS] token." if m.requires_cls else ""
            out.append(f"### `{m.id}`\n")
            out.append(f"- **Formula**: {m.formula}")
            out.append(f"- **Reading**: {m.reading}")
            out.append(f"- **Cost**: {m.cost}")
            out.append(f"- **Source**: {m.source}")
            out.append(f"- **Layers**: {layers}.{sets}{cls} Groups: {groups}.\n")
    return "\n".join(out)


def main() -> None:
    path = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"
    path.write_text(render())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
