"""compare on run directories written by the test, and the demo end to end."""

from __future__ import annotations

import json
import re

import pytest

from vitdepth import VitdepthError
from vitdepth.analysis.run import AnalyzeConfig, analyze
from vitdepth.cli import main
from vitdepth.compare import compare_runs
from vitdepth.demo import demo_models_dir


@pytest.fixture(scope="module")
def family_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    runs = []
    for size in ("S", "L"):
        runs.append(analyze(AnalyzeConfig(model=f"file:{demo_models_dir() / size}", data="digits", samples=300,
                                          out=str(root / size), name=f"ViT-{size}", quiet=True, metrics="core",
                                          n_boot=200, n_boot_phases=50)))
    other = analyze(AnalyzeConfig(model=f"file:{demo_models_dir() / 'S'}", data="synthetic:size=16", samples=100,
                                  out=str(root / "other"), quiet=True, metrics="core", figures=False))
    return runs, other


def test_compare_tables_shifts_and_report(family_runs, tmp_path):
    runs, _ = family_runs
    out = compare_runs(runs, tmp_path / "cmp")
    result = json.loads((out / "compare.json").read_text())
    names = [m["name"] for m in result["models"]]
    assert names == ["ViT-S", "ViT-L"]
    depths = {m["name"]: m["depth"] for m in result["models"]}
    assert depths == {"ViT-S": 12, "ViT-L": 24}
    onset = [s for s in result["shifts"] if s["what"] == "trade-off onset"]
    assert len(onset) == 1
    s = onset[0]
    la = next(m for m in result["models"] if m["name"] == "ViT-S")["tradeoff_onset_layer"]
    lb = next(m for m in result["models"] if m["name"] == "ViT-L")["tradeoff_onset_layer"]
    assert s["layers"] == int(lb) - int(la)
    assert re.match(r"ViT-L reaches the trade-off onset (\d+ layers (later|earlier) than|at the same layer as) ViT-S",
                    s["sentence"])
    assert any("Freeze layers" in r for r in result["recommendations"])
    html = (out / "report.html").read_text()
    pngs = list((out / "figures").glob("*.png"))
    assert pngs and html.count("data:image/png;base64,") >= len(pngs)
    assert "http://" not in html and "https://" not in html


def test_compare_refuses_mixed_data_and_bad_input(family_runs, tmp_path, capsys):
    runs, other = family_runs
    with pytest.raises(VitdepthError, match="different data"):
        compare_runs([runs[0], other], tmp_path / "mixed")
    assert not (tmp_path / "mixed").exists()
    out = compare_runs([runs[0], other], tmp_path / "mixed", allow_mixed_data=True, figures=False)
    assert json.loads((out / "compare.json").read_text())["mixed_data"] is True
    assert main(["compare", str(runs[0]), "--out", str(tmp_path / "one")]) == 2
    assert "at least two" in capsys.readouterr().err
    assert main(["compare", str(runs[0]), str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "not a vitdepth run directory" in capsys.readouterr().err


def test_demo_end_to_end(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    stdout = capsys.readouterr().out
    assert "comparison report:" in stdout and "demo finished in" in stdout
    for size in ("S", "B", "L"):
        run = tmp_path / "demo" / size
        assert (run / "report.html").is_file() and (run / "phases.json").is_file()
        assert json.loads((run / "run.json").read_text())["data"]["analyzed"] == 1797
    cmp = tmp_path / "demo" / "compare"
    result = json.loads((cmp / "compare.json").read_text())
    assert [m["name"] for m in result["models"]] == ["ViT-S", "ViT-B", "ViT-L"]
    assert (cmp / "figures" / "probe_acc_mean.png").is_file()
    assert not list(tmp_path.glob("demo/**/*.pdf"))  # PNG only unless --figure-format asks for more
