"""HTML reports: self-contained (no network), every figure embedded, data escaped, graceful without phases."""

from __future__ import annotations

import base64
import csv
import html
import json
import re
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest

from vitdepth._errors import VitdepthError
from vitdepth.metrics.catalog import FAMILIES, METRICS
from vitdepth.report.html import write_compare_report, write_run_report
from vitdepth.results import ROW_FIELDS, layer_depth

EVIL = "<script>alert(1)</script>"
EVIL_ESC = "&lt;script&gt;alert(1)&lt;/script&gt;"
URL = "https://evil.example/pixel.png"
PNG_URI = "data:image/png;base64,"
DEPTH = 4
LAYERS = ["pre", *map(str, range(DEPTH + 1))]


def _png(path: Path, color=(200, 30, 30)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 4), color).save(path, format="PNG")


def _rows(model: str) -> list[dict]:
    """A small results table: two similarity metrics, ISI, both probes and a whole-split (no CI) metric."""
    rows = []

    def add(metric, token_set, layers, base, ci=True):
        for i, layer in enumerate(layers):
            v = base + 0.01 * i
            rows.append({"model": model, "layer": layer, "depth": layer_depth(layer, DEPTH), "metric": metric,
                         "token_set": token_set, "value": v, "ci_low": v - 0.005 if ci else "",
                         "ci_high": v + 0.005 if ci else "", "n": 100})

    add("token_sim", "", LAYERS, 0.5)
    add("token_sim_centered", "", LAYERS, 0.2)
    add("isi_attn", "", LAYERS[2:], 0.1)
    add("probe_acc", "cls", LAYERS[1:], 0.6)
    add("probe_acc", "mean", LAYERS, 0.123456)
    add("nc1", "mean", LAYERS, 3.0, ci=False)
    return rows


def _run_json(model: str, class_name: str, path: str, warning: str) -> dict:
    return {
        "vitdepth_version": "0.1.0",
        "command": "analyze",
        "config": {"model": f"file:{path}", "data": "digits", "out": path, "samples": 100, "seed": 0,
                   "batch_size": 32, "device": "cpu", "strict": False, "split_fractions": [0.7, 0.1, 0.2]},
        "model": {"name": model, "class": "timm.VisionTransformer", "spec": f"file:{path}", "adapter": "file",
                  "weights": {"source": "file", "path": path, "sha256": "ab" * 32}, "parameters": 12345,
                  "depth": DEPTH, "num_heads": 2, "embed_dim": 32, "prefix_tokens": ["cls"], "has_cls": True,
                  "site_warnings": [], "layers": LAYERS},
        "data": {"spec": f"folder:{path}", "kind": "folder", "n": 120, "num_classes": 3,
                 "class_names": ["cat", class_name, "dog"], "content_hash": "cd" * 32, "analyzed": 100,
                 "selected": 100, "splits": {"train": 70, "val": 10, "test": 20}, "skipped": [f"{path}/bad.png"]},
        "seed": 0,
        "versions": {"vitdepth": "0.1.0", "python": "3.11", "torch": "2.4", "numpy": "2.0"},
        "timings": {"pass_s": 1.5, "probes_s": 0.1, "total_s": 2.0},
        "warnings": [warning],
    }


PHASES = {
    "fits": {
        "token_sim": {"token_set": "", "breakpoints": [1.0, 3.0], "breakpoints_layer": ["1", "3"],
                      "breakpoints_ci": [[0.0, 2.0], [2.0, 4.0]], "slopes": [-1.2, 0.05, 0.8], "r2": 0.97,
                      "label": "cliff-plateau-climb", "label_agreement": 0.93},
        "probe_acc/mean": {"token_set": "mean", "breakpoints": [0.0, 2.0], "breakpoints_layer": ["0", "2"],
                           "slopes": [0.1, 2.0, 0.0], "r2": 0.99, "label": "plateau-climb-plateau"},
    },
    "saturation": {"mean": {"layer": "3", "relative_depth": 0.75, "value": 0.97, "best": 0.98, "best_layer": "4"},
                   "cls": {"layer": "2", "relative_depth": 0.5, "value": 0.96, "best": 0.97, "best_layer": "4"}},
    "useful_depth": 0.75,
    "tradeoff_onset": {"layer": "3", "relative_depth": 0.75, "isi_metric": "isi_attn", "isi_rise_after": 0.012},
    "truncation": {"layer": "3", "flops_fraction_saved": 0.41, "latency_fraction_saved": 0.38,
                   "probe_acc_lost": 0.004, "token_set": "mean"},
    "recommendations": ["Freeze layers 0–2 when fine-tuning (before the plateau ends).",
                        f"Truncate after block 3 {EVIL}."],
}


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A hand-made run directory whose model, class, path and warning hold a script tag (and a URL)."""
    d = tmp_path / "run"
    path = str(tmp_path / EVIL)  # a path holding the tag: it is shown in the spec, config and provenance
    (d / "figures").mkdir(parents=True)
    with open(d / "layers.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=ROW_FIELDS)
        w.writeheader()
        w.writerows(_rows(EVIL))
    (d / "run.json").write_text(json.dumps(_run_json(EVIL, EVIL, path, f"odd image {EVIL} from {URL}")))
    (d / "phases.json").write_text(json.dumps(PHASES))
    for i, fam in enumerate(("similarity", "isi", "probe", "collapse", "extra_plot")):
        _png(d / "figures" / f"{fam}.png", (40 * i, 100, 200))
    (d / "figures" / "similarity.pdf").write_bytes(b"%PDF-1.4 not embedded")
    return d


def _assert_self_contained(text: str, inline_script: bool = False) -> None:
    """No external reference: no URL, link, import or fetch; with ``inline_script``, inline JS (no src) is allowed."""
    low = text.lower()
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", low, flags=re.S)
    if inline_script:
        for attrs, body in scripts:
            assert "src" not in attrs, attrs
            for bad in ("fetch(", "xmlhttprequest", "import(", "import ", "websocket", "document.write", "eval("):
                assert bad not in body, bad
        low = re.sub(r"<script>.*?</script>", "", low, flags=re.S)
    for bad in ("http://", "https://", 'src="http', "<link", "<script", "@import", "url("):
        assert bad not in low, bad
    # the only resources are inline PNGs, the only links in-page anchors
    for src in re.findall(r'\bsrc="([^"]*)"', text):
        assert src.startswith(PNG_URI), src[:60]
    for href in re.findall(r'\bhref="([^"]*)"', text):
        assert href.startswith("#"), href


def _embedded_pngs(text: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)]


def _section(text: str, sid: str) -> str:
    start = text.index(f'<section id="{sid}"')
    return text[start:text.index("</section>", start)]


def test_run_report_embeds_every_figure(run_dir):
    out = write_run_report(run_dir)
    assert out == run_dir / "report.html"
    text = out.read_text()
    pngs = sorted((run_dir / "figures").glob("*.png"))
    assert text.count(PNG_URI) == len(pngs) == 5
    assert sorted(_embedded_pngs(text)) == sorted(p.read_bytes() for p in pngs)
    # each family figure sits in its own family's section; the unknown one is still embedded
    sim = (run_dir / "figures" / "similarity.png").read_bytes()
    assert base64.b64encode(sim).decode() in _section(text, "family-similarity")
    assert "extra_plot" in text


def test_run_report_is_self_contained(run_dir):
    text = write_run_report(run_dir).read_text()
    _assert_self_contained(text)
    assert "<style>" in text
    # the URL in the warning is shown, but not as a URL
    assert "evil.example/pixel.png" in text


def test_run_report_escapes_data(run_dir):
    text = write_run_report(run_dir).read_text()
    assert EVIL not in text
    assert "<script" not in text.lower()
    assert EVIL_ESC in text
    summary = _section(text, "summary")
    assert EVIL_ESC in summary.split("<h3>")[0]  # model name, class names, spec path: in the summary header
    assert f"odd image {EVIL_ESC}" in summary  # the warning
    assert f"Truncate after block 3 {EVIL_ESC}" in summary  # a recommendation from phases.json
    assert EVIL_ESC in _section(text, "provenance")  # paths in the config
    assert text.count(EVIL_ESC) >= 6


def test_run_report_summary_first_then_families_in_catalogue_order(run_dir):
    text = write_run_report(run_dir).read_text()
    positions = [text.index(f'<section id="family-{f}"') for f in FAMILIES if f'id="family-{f}"' in text]
    assert [f for f in FAMILIES if f'id="family-{f}"' in text] == ["similarity", "isi", "probe", "collapse"]
    assert positions == sorted(positions)
    assert text.index('<section id="summary"') < positions[0]
    assert positions[-1] < text.index('<section id="provenance"')
    summary = _section(text, "summary")
    for expected in ("cliff-plateau-climb", "plateau-climb-plateau", "layer 1", "layer 3", "93.0%",
                     "Useful depth", "0.75", "Trade-off onset", "isi_attn still rises by 0.012",
                     "41.0%", "38.0%", "probe accuracy lost 0.004", "Freeze layers 0–2", "Warnings",
                     "Images analyzed", "100 of 120"):
        assert expected in summary, expected
    # provenance is collapsed
    prov = _section(text, "provenance")
    assert "<details>" in prov and "cd" * 32 in prov and "Timings" in prov and "Versions" in prov


def test_run_report_metric_formulas_and_values(run_dir):
    text = write_run_report(run_dir).read_text()
    present = {r["metric"] for r in _rows("m")}
    for mid in present:
        info = METRICS[mid]
        section = _section(text, f"family-{info.family}")
        assert f'id="metric-{mid}"' in section, mid
        assert html.escape(info.formula) in section, mid
        assert html.escape(info.reading) in section, mid
        assert html.escape(info.source) in section, mid
    # metrics not in layers.csv get no section
    assert 'id="metric-cls_patch_sim"' not in text and 'id="family-attention"' not in text
    probe = _section(text, "family-probe")
    assert "probe_acc/mean" in probe and "probe_acc/cls" in probe
    assert "0.1235" in probe and "0.1185" in probe  # value 0.123456 at pre and its CI low
    collapse = _section(text, "family-collapse")
    assert ">3<" in collapse.replace(' class="num"', "") and "[" not in collapse.split("<tbody>")[1]  # no CI


def test_run_report_without_phases(run_dir):
    (run_dir / "phases.json").unlink()
    text = write_run_report(run_dir).read_text()
    summary = _section(text, "summary")
    assert "phases.json is missing" in summary
    assert "Recommendations" not in summary and "cliff-plateau-climb" not in text
    assert text.count(PNG_URI) == 5
    assert 'id="family-probe"' in text
    _assert_self_contained(text)


@pytest.mark.parametrize("content", ["{not json", "[]", json.dumps({"fits": {"token_sim": {"label": "odd"}},
                                                                     "saturation": {"mean": None},
                                                                     "truncation": {"layer": "2"}})])
def test_run_report_with_broken_or_partial_phases(run_dir, content):
    (run_dir / "phases.json").write_text(content)
    text = write_run_report(run_dir).read_text()
    assert 'id="family-similarity"' in text
    if content.startswith("{not"):
        assert "phases.json is unreadable" in text
    _assert_self_contained(text)


def test_run_report_needs_a_run_directory(tmp_path):
    with pytest.raises(VitdepthError, match="not a vitdepth run directory"):
        write_run_report(tmp_path)


def test_report_module_imports_no_heavy_library():
    code = ("import sys, vitdepth.report.html; "
            "print(sorted(m for m in ('torch', 'timm', 'transformers', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------------------------
# compare report
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def compare_dir(tmp_path, run_dir) -> Path:
    d = tmp_path / "cmp"
    for stem in ("probe_acc_mean", "token_sim", "isi_attn"):  # compare writes one overlay per curve
        _png(d / "figures" / f"{stem}.png", (10, 200, 10))
    shifts = [{"from": "B", "to": EVIL, "what": "trade-off onset", "layers": 10, "relative_depth": 0.02,
               "sentence": f"{EVIL} reaches the trade-off 10 layers later than B"},
              {"from": "S", "to": "B", "what": "saturation", "layers": 0, "relative_depth": 0.0,
               "sentence": "B saturates at the same layer as S"}]
    models = [
        {"name": "B", "run_dir": str(run_dir), "depth": 12, "data_hash": "cd" * 32, "saturation_layer": "7",
         "useful_depth": 0.58, "tradeoff_onset_layer": "7", "tradeoff_onset_depth": 0.58, "best_probe": 0.98,
         "phases": {"token_sim": {"label": "cliff-plateau-climb", "breakpoints_layer": ["2", "9"],
                                  "breakpoints_depth": [0.17, 0.75], "breakpoints_ci": [[1.0, 3.0], [8.0, 10.0]]}},
         "truncation": {"layer": "7", "flops_fraction_saved": 0.41, "latency_fraction_saved": 0.38,
                        "probe_acc_lost": 0.004}},
        {"name": EVIL, "run_dir": f"/runs/{EVIL}", "depth": 24, "data_hash": "cd" * 32, "saturation_layer": "17",
         "useful_depth": 0.71, "tradeoff_onset_layer": "17", "tradeoff_onset_depth": 0.71, "best_probe": 0.99,
         "phases": {"token_sim": {"label": "cliff-climb", "breakpoints_layer": ["3", "20"],
                                  "breakpoints_depth": [0.125, 0.833]}}},
    ]
    cmp = {"models": models, "shifts": shifts, "allow_mixed_data": False,
           "recommendations": [f"Freeze layers 0–9 of B; truncating {EVIL} after block 17 saves 29% FLOPs.",
                               f"See {URL}"]}
    (d / "compare.json").write_text(json.dumps(cmp))
    return d


def test_compare_report(compare_dir, run_dir):
    out = write_compare_report(compare_dir)
    assert out == compare_dir / "report.html"
    text = out.read_text()
    _assert_self_contained(text, inline_script=True)
    pngs = sorted((compare_dir / "figures").glob("*.png"))
    assert text.count(PNG_URI) == len(pngs) == 3
    assert sorted(_embedded_pngs(text)) == sorted(p.read_bytes() for p in pngs)
    assert EVIL not in text and EVIL_ESC in text
    summary = _section(text, "summary")
    assert f"{EVIL_ESC} reaches the trade-off 10 layers later than B" in summary
    # a zero shift is a table row, not a sentence (only the top shifts and the trade-off onset are written out)
    assert "B saturates at the same layer as S" not in summary
    assert re.search(r"<td>saturation</td><td>S</td><td>B</td><td[^>]*>0</td>", summary)
    assert "Freeze layers 0–9 of B" in summary
    for expected in ("cliff-plateau-climb", "cliff-climb", "0.58", "0.71", "17", "0.12, 0.83", "2, 9", "3, 20",
                     "[1, 3], [8, 10]", "41.0%", "38.0%", "0.004"):
        assert expected in summary, expected
    figures = _section(text, "figures")  # in catalogue order, captioned by curve
    assert figures.index("token_sim") < figures.index("isi_attn") < figures.index("probe_acc/mean")
    order = [text.index(f'<section id="{s}"') for s in ("summary", "figures", "provenance")]
    assert order == sorted(order)
    prov = _section(text, "provenance")
    assert html.escape(str(run_dir)) in prov and "cd" * 32 in prov and "same data" in prov
    assert "folder:" in prov  # data identity read from the run directory's run.json


def test_compare_report_mixed_data_and_minimal(tmp_path, compare_dir):
    cmp = json.loads((compare_dir / "compare.json").read_text())
    cmp["allow_mixed_data"] = cmp["mixed_data"] = True
    cmp["models"][1]["data_hash"] = "ef" * 32
    (compare_dir / "compare.json").write_text(json.dumps(cmp))
    text = write_compare_report(compare_dir).read_text()
    assert "allow-mixed-data" in text and "different data" in _section(text, "provenance")

    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "compare.json").write_text("{}")
    text = write_compare_report(bare).read_text()
    assert "No figures" in text and PNG_URI not in text
    _assert_self_contained(text, inline_script=True)
    with pytest.raises(VitdepthError, match="compare.json"):
        write_compare_report(tmp_path / "nowhere")


# ----------------------------------------------------------------------------------------------
# a real run directory
# ----------------------------------------------------------------------------------------------


def test_report_of_a_real_run(tmp_path):
    from vitdepth.analysis.run import AnalyzeConfig, analyze

    model = files("vitdepth") / "demo_models" / "S"
    # core metrics and fewer bootstrap resamples keep this well under 30 s; the report does not depend on them
    run = analyze(AnalyzeConfig(model=f"file:{model}", data="digits", samples=200, out=str(tmp_path / "S"),
                                quiet=True, metrics="core", n_boot=200, n_boot_phases=50))
    run = Path(run)
    out = write_run_report(run)
    text = out.read_text()
    _assert_self_contained(text)
    pngs = sorted((run / "figures").glob("*.png"))
    assert pngs and text.count(PNG_URI) == len(pngs)
    present = {r["metric"] for r in csv.DictReader(open(run / "layers.csv"))}
    for mid in present & set(METRICS):
        assert f'id="metric-{mid}"' in text and html.escape(METRICS[mid].formula) in text
    if (run / "phases.json").is_file():
        assert "Phases" in _section(text, "summary")
    assert text.index('id="summary"') < text.index('id="family-') < text.index('id="provenance"')


# ----------------------------------------------------------------------------------------------
# issue 13 item 3: the report, tightened
# ----------------------------------------------------------------------------------------------


def _png_stems(text: str, fig_dir: Path) -> list[str]:
    """Stems of the PNGs in ``fig_dir`` that the report embeds as ``<img>``, in page order."""
    by_bytes = {p.read_bytes(): p.stem for p in fig_dir.glob("*.png")}
    imgs = re.findall(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    return [by_bytes[base64.b64decode(b)] for b in imgs]


def _check_axes(fig, what: str) -> None:
    """Every visible panel has a y label (with units or range) and an x label; the title fits the figure."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert visible, what
    for ax in visible:
        ylabel = ax.get_ylabel()
        assert ylabel and ylabel != ax.get_title(), (what, ax.get_title())
        assert "(" in ylabel, (what, ylabel)  # units or range in brackets
        assert ax.get_xlabel(), what
    fig_box = fig.bbox
    title = fig._suptitle
    assert title is not None and title.get_text(), what
    box = title.get_window_extent(renderer)
    assert box.x0 >= fig_box.x0 - 1 and box.x1 <= fig_box.x1 + 1, (what, title.get_text())
    for ax in visible:  # panel titles too: no clipping at the figure's edges
        b = ax.title.get_window_extent(renderer)
        assert b.x0 >= fig_box.x0 - 1 and b.x1 <= fig_box.x1 + 1, (what, ax.get_title())


def test_every_embedded_run_figure_has_y_labels(run_dir):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from vitdepth.report.figures import MAX_COLS, run_figures, write_run_figures
    from vitdepth.results import load_run

    fig_dir = run_dir / "figures"
    for p in fig_dir.iterdir():  # drop the hand-made placeholders: only real figures
        p.unlink()
    res = load_run(run_dir)
    write_run_figures(run_dir, res.rows, res.model, formats=("png",), phases=PHASES)
    text = write_run_report(run_dir).read_text()
    stems = _png_stems(text, fig_dir)
    assert stems and text.count("<img ") == len(stems) == len(list(fig_dir.glob("*.png")))
    figs = run_figures(res.rows, res.model, PHASES)
    try:
        assert set(stems) == set(figs)  # every embedded image is one of the inspected figures
        for stem in stems:
            _check_axes(figs[stem], stem)
            grid = figs[stem].axes[0].get_subplotspec().get_gridspec()
            assert grid.ncols <= MAX_COLS
        # five collapse metrics: a grid of rows of at most three panels, not one long strip
        many = [{**r, "metric": m} for r in res.rows if r["metric"] == "nc1"
                for m in ("nc1", "nc2_norm", "nc2_angle", "nc3", "nc4")]
        collapse = run_figures(many, "m")["collapse"]
        shape = collapse.axes[0].get_subplotspec().get_gridspec().get_geometry()
        assert shape == (2, 3) and sum(ax.get_visible() for ax in collapse.axes) == 5
        _check_axes(collapse, "collapse")
        plt.close(collapse)
    finally:
        for f in figs.values():
            plt.close(f)


def test_compare_figures_have_y_labels(run_dir, tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from vitdepth.compare import OVERLAY
    from vitdepth.report.figures import compare_figures
    from vitdepth.results import load_run

    runs = [load_run(run_dir), load_run(run_dir)]
    figs = compare_figures(runs, [PHASES, PHASES], ["A", "B"], OVERLAY)
    try:
        assert {"token_sim", "probe_acc/mean", "isi_attn"} <= set(figs)
        for key, fig in figs.items():
            _check_axes(fig, key)
    finally:
        for f in figs.values():
            plt.close(f)


def test_run_report_opens_with_a_verdict(run_dir):
    text = write_run_report(run_dir).read_text()
    header = text[text.index("<header>"):text.index("</header>")]
    verdicts = re.findall(r'<p class="verdict">(.*?)</p>', header)
    assert len(verdicts) == 1 and text.count('class="verdict"') == 1
    v = verdicts[0]
    for expected in ("token_sim cliff-plateau-climb", "probe_acc/mean plateau-climb-plateau",
                     "effective depth: layer 3 of 4", "useful depth 0.75", "main recommendation: freeze layers 0–2"):
        assert expected in v, expected
    (run_dir / "phases.json").unlink()
    text = write_run_report(run_dir).read_text()
    assert "no phase fits" in re.findall(r'<p class="verdict">(.*?)</p>', text)[0]


def test_run_report_collapses_formulas_and_tables(run_dir):
    text = write_run_report(run_dir).read_text()
    for fam in ("similarity", "isi", "probe", "collapse"):
        section = _section(text, f"family-{fam}")
        # every formula and every table of a family sits inside a closed <details>
        outside = re.sub(r"<details>.*?</details>", "", section, flags=re.S)
        assert "<table" not in outside and "Formula:" not in outside, fam
        assert "<details open" not in section
        assert section.count("<details>") == 2, fam


def _shift(i: int, layers: float, what: str = "boundary") -> dict:
    return {"from": f"M{i}", "to": f"M{i + 1}", "what": what, "layers": layers, "relative_depth": layers / 12,
            "sentence": f"M{i + 1} reaches the {what} {abs(layers):g} layers {'later' if layers > 0 else 'earlier'}"}


def test_compare_report_one_sorted_shift_table_and_few_sentences(compare_dir):
    cmp = json.loads((compare_dir / "compare.json").read_text())
    shifts = [_shift(i, v) for i, v in enumerate((1, -9, 3, 0.5, 4, -2, 7, 0))]
    shifts.append(_shift(8, 2, "trade-off onset"))
    cmp["shifts"] = shifts
    (compare_dir / "compare.json").write_text(json.dumps(cmp))
    text = write_compare_report(compare_dir).read_text()
    _assert_self_contained(text, inline_script=True)
    summary = _section(text, "summary")
    # exactly one table of shifts, holding every shift once
    assert summary.count('<table class="sortable"') == 1 and text.count('id="shifts"') == 1
    table = summary[summary.index('id="shifts"'):]
    table = table[:table.index("</table>")]
    body = re.findall(r"<tr>(.*?)</tr>", table)[1:]
    assert len(body) == len(shifts)
    # sorted by magnitude, largest first; the sort keys are the magnitudes
    keys = [float(re.findall(r'data-v="([^"]*)"', row)[0]) for row in body]
    assert keys == sorted(keys, reverse=True) == [9, 7, 4, 3, 2, 2, 1, 0.5, 0]
    # the full list of sentences is not repeated: the top three shifts and the trade-off onset only
    sentences = re.findall(r"<li>(.*?)</li>", summary.split('id="shifts"')[0].split("Shifts between models")[1])
    assert sentences == [s["sentence"] for s in (shifts[1], shifts[6], shifts[4], shifts[8])]
    for s in shifts:
        assert summary.count(html.escape(s["sentence"])) <= 1
    # the header sort is inline script only: no src, no network
    assert re.search(r"<script>[^<]*addEventListener", text) and "<script src" not in text


def test_key_shift_sentences_edge_cases():
    from vitdepth.report.html import key_shift_sentences

    assert key_shift_sentences([]) == []
    zero = [_shift(0, 0), {"what": "x", "layers": None}]
    assert key_shift_sentences(zero) == []  # zero or unknown shifts make no sentence
    onset = _shift(0, 0, "trade-off onset")
    assert key_shift_sentences([onset]) == [onset["sentence"]]  # the onset is always said


# recommendation wording per fit shape (phases.freeze_recommendation / recommendations)

def _fit(label: str, breakpoints, slopes, depth: int = 12) -> dict:
    return {"label": label, "breakpoints": list(breakpoints), "slopes": list(slopes), "depth": depth,
            "x": [-1.0, *map(float, range(depth + 1))]}


@pytest.mark.parametrize("fit, must, must_not", [
    # the user's case: a rise-plateau whose plateau starts at layer 1 (R 0 0): the plateau is the tail
    (_fit("rise-plateau", (1, 5), (9.0, 0.05, 0.0)), ["Freeze layers 0–1 ", "levels off at layer 1",
                                                       "flat to the last layer"], ["end of the plateau"]),
    (_fit("rise-plateau", (1, 4), (9.0, 2.0, 0.1)), ["Freeze layers 0–4 ", "levels off at layer 4"],
     ["end of the plateau"]),
    (_fit("plateau-climb-plateau", (0, 1), (0.0, 10.0, 0.1)), ["Freeze layers 0–1 ", "levels off at layer 1"],
     ["end of the plateau"]),
    (_fit("cliff-plateau", (2, 6), (-5.0, -4.0, 0.0)), ["Freeze layers 0–6 ", "levels off at layer 6"],
     ["end of the plateau"]),
    # a middle plateau ends where the curve moves again: there "before the end of the plateau" is right
    (_fit("cliff-plateau-climb", (2, 8), (-3.0, 0.0, 1.5)), ["Freeze layers 0–8 ", "before the end of the plateau",
                                                             "from layer 2 to layer 8"], ["levels off"]),
    (_fit("plateau-climb", (3, 6), (0.0, 0.1, 2.0)), ["Freeze layers 0–6 ", "flat up to layer 6"],
     ["levels off"]),
    (_fit("rise-plateau", (0, 5), (9.0, 0.0, 0.0)), ["Freeze layer 0 ", "levels off at layer 0"],
     ["end of the plateau", "0–0"]),
])
def test_freeze_recommendation_wording_per_shape(fit, must, must_not):
    from vitdepth.phases import freeze_recommendation, label_shape

    assert label_shape(fit["slopes"]) == fit["label"]
    rec = freeze_recommendation(fit, "probe_acc/mean")
    for text in must:
        assert text in rec, (text, rec)
    for text in must_not:
        assert text not in rec, (text, rec)


def test_freeze_recommendation_without_a_plateau_uses_saturation():
    from vitdepth.phases import freeze_recommendation

    fit = _fit("monotone-rise", (3, 8), (1.0, 0.8, 0.5))
    assert freeze_recommendation(fit, "probe_acc/mean") is None  # no plateau, no saturation: nothing to say
    rec = freeze_recommendation(fit, "probe_acc/mean", {"layer": "6", "fraction": 0.99})
    assert rec.startswith("Freeze layers 0–6 ") and "no plateau" in rec and "99%" in rec
    assert "plateau (" not in rec and "end of the plateau" not in rec
    flat = freeze_recommendation(_fit("flat", (3, 8), (0.0, 0.0, 0.0)), "token_sim")
    assert flat is None
    assert "Freeze" not in freeze_recommendation(_fit("flat", (3, 8), (0.0, 0.0, 0.0)), "token_sim", {"layer": "2"})


def test_recommendations_from_a_real_fit_of_a_rise_plateau_curve():
    """fit_three_segments on a curve that rises for one layer, then stays flat: the user's report."""
    import numpy as np

    from vitdepth.phases import fit_three_segments, recommendations

    depth = 12
    x = np.arange(-1, depth + 1, dtype=float)
    y = np.where(x < 1, 0.3 + 0.3 * (x + 1), 0.9) + 0.002 * np.sin(x)
    fit = fit_three_segments(x, y, depth)
    assert fit.label == "rise-plateau"
    phases = {"fits": {"probe_acc/mean": {**fit.to_dict(), "x": x.tolist()}},
              "saturation": {"mean": {"layer": "1", "fraction": 0.99}},
              "truncation": {"layer": "1", "flops_fraction_saved": 0.9, "latency_fraction_saved": 0.85,
                             "probe_acc_lost": 0.001},
              "tradeoff_onset": {"layer": "1", "isi_metric": "isi_attn", "isi_rise_after": 0.02}}
    recs = recommendations(phases, depth)
    assert len(recs) == 3
    assert recs[0].startswith("Freeze layers 0–1 ") and "end of the plateau" not in recs[0]
    assert "levels off at layer 1" in recs[0]
    assert recs[1].startswith("Truncating after block 1 of 12 saves 90%")
    assert "isi_attn still rises by 0.0200" in recs[2]


def test_phase_summary_text(run_dir):
    from vitdepth.report.summary import phase_summary

    text = phase_summary(run_dir)
    lines = text.splitlines()
    assert lines[1].startswith("  verdict: token_sim cliff-plateau-climb")
    assert "effective depth: mean probe reaches 99%" in text and "trade-off onset: layer 3" in text
    recs = [ln for ln in lines if ln.startswith("  recommendation: ")]
    assert [r.removeprefix("  recommendation: ") for r in recs] == PHASES["recommendations"]
    (run_dir / "phases.json").unlink()
    assert phase_summary(run_dir).endswith("no phases.json")
