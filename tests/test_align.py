"""vitdepth align / compare --align / cka_self.json on small real runs of the shipped demo models."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from vitdepth import VitdepthError
from vitdepth.align import align_runs, write_self_alignment
from vitdepth.analysis.run import AnalyzeConfig, analyze
from vitdepth.cli import main
from vitdepth.demo import demo_models_dir
from vitdepth.report.html import write_run_report

SENTENCE = re.compile(r"layer (pre|\d+) of (.+) ≈ layer (pre|\d+) of (.+) \(CKA -?\d\.\d\d \[-?\d\.\d\d, -?\d\.\d\d\]; "
                      r"95% CI of the match: layers? (pre|\d+)(–(\d+))?\)")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("align-runs")
    out = {}
    for size in ("S", "B"):
        out[size] = analyze(AnalyzeConfig(model="file:" + str(demo_models_dir() / size), data="digits", samples=160,
                                          out=str(root / size), name=f"ViT-{size}", quiet=True, metrics="core",
                                          figures=False, n_boot=100, n_boot_phases=20, self_check=False))
    return out


def _copy(run, dst):
    shutil.copytree(run, dst)
    return dst


def test_align_end_to_end(runs, tmp_path):
    out = align_runs(runs["S"], runs["B"], tmp_path / "sb", samples=120, n_boot=40, seed=1)
    r = json.loads((out / "align.json").read_text())
    la, lb = r["a"]["layers"], r["b"]["layers"]
    assert r["a"]["name"] == "ViT-S" and r["b"]["name"] == "ViT-B" and la[0] == "pre" and la[-1] == "12"
    assert r["n_images"] == 120 and r["n_boot"] == 40 and r["token_set"] == "mean"
    cka, lo, hi = (np.array(r[k], dtype=float) for k in ("cka", "cka_ci_low", "cka_ci_high"))
    assert cka.shape == lo.shape == hi.shape == (len(la), len(lb))
    assert np.isfinite(cka).all() and (cka <= 1 + 1e-9).all() and (cka > -0.3).all()
    assert (lo <= hi).all() and ((lo <= cka + 1e-9) & (cka <= hi + 1e-9)).mean() > 0.9
    assert cka[la.index("pre"), lb.index("pre")] > 0.9  # patch embeddings of the same images: close
    # mean tokens at `pre` and `0` differ by the mean position embedding, a constant CKA ignores: a tie that goes to
    # the layer at the same relative depth
    assert abs(cka[0, 0] - cka[0, 1]) < 1e-4 and r["best_match"][0]["layer_b"] == "pre"
    for i, m in enumerate(r["best_match"]):
        j = lb.index(m["layer_b"])
        assert m["layer_a"] == la[i] and cka[i, j] >= cka[i].max() - 1e-4 and m["cka"] == cka[i, j]
        pos = [-1 if x == "pre" else int(x) for x in (m["layer_b_ci"][0], m["layer_b"], m["layer_b_ci"][1])]
        assert pos[0] <= pos[2]
    assert 2 <= len(r["sentences"]) <= 6 and all(SENTENCE.fullmatch(s) for s in r["sentences"])
    assert "ViT-S" in r["summary"] and "ViT-B" in r["summary"] and "relative depth" in r["summary"]
    rows = (out / "cka.csv").read_text().splitlines()
    assert rows[0] == "layer_a,layer_b,cka,ci_low,ci_high" and len(rows) == 1 + len(la) * len(lb)
    assert (out / "figures" / "cka.png").is_file() and not (out / "figures" / "cka.pdf").exists()
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "http://" not in html and "https://" not in html
    assert r["sentences"][0].replace("≈", "&#8776;") in html or r["sentences"][0] in html
    # deterministic for a seed; another seed draws another subset
    again = align_runs(runs["S"], runs["B"], tmp_path / "sb2", samples=120, n_boot=40, seed=1, figures=False)
    assert json.loads((again / "align.json").read_text())["cka_ci_low"] == r["cka_ci_low"]
    other = align_runs(runs["S"], runs["B"], tmp_path / "sb3", samples=120, n_boot=40, seed=2, figures=False)
    assert json.loads((other / "align.json").read_text())["cka"] != r["cka"]


def test_model_with_itself_matches_the_same_layer(runs, tmp_path):
    out = align_runs(runs["S"], runs["S"], tmp_path / "ss", n_boot=20, figures=False, token_set="cls")
    r = json.loads((out / "align.json").read_text())
    assert r["a"]["layers"][0] == "0" and r["a"]["layers"][-1] == "12"  # the cls set starts at layer 0
    # [CLS] at layer 0 (before any block) is the same vector for every image: CKA is undefined there, not 0
    assert r["cka"][0] == [None] * 13 and r["best_match"][0]["layer_b"] is None
    cka = np.array([row for row in r["cka"][1:]], dtype=float)[:, 1:]
    assert np.allclose(np.diag(cka), 1.0, atol=1e-12) and (cka[~np.eye(12, dtype=bool)] < 1 - 1e-6).all()
    assert [m["layer_b"] for m in r["best_match"][1:]] == r["a"]["layers"][1:]
    assert all(m["layer_b_ci"] == [m["layer_a"]] * 2 for m in r["best_match"][1:])
    assert r["a"]["name"] != r["b"]["name"]  # same model: told apart in sentences
    assert not any(s.startswith("layer 0 ") for s in r["sentences"])


def test_self_alignment_and_run_report(runs, tmp_path):
    run = _copy(runs["S"], tmp_path / "S")
    (run / "cka_self.json").unlink()  # analyze wrote one: start from a run without it
    write_run_report(run)
    assert "Layer×layer similarity within the model (CKA)" not in (run / "report.html").read_text()
    res = write_self_alignment(run, token_set="mean", samples=100, n_boot=30, seed=0)
    saved = json.loads((run / "cka_self.json").read_text())
    assert saved == json.loads(json.dumps(res))
    m = np.array(saved["cka"])
    assert m.shape == (14, 14) and (np.diag(m) == 1.0).all() and np.allclose(m, m.T)
    assert saved["n_images"] == 100 and saved["summary"]
    for b in saved["blocks"]:
        i, j = saved["layers"].index(b["first"]), saved["layers"].index(b["last"])
        assert j - i + 1 == b["n_layers"] >= 3 and m[i:j + 1, i:j + 1].min() >= saved["block_threshold"]
    assert (run / "figures" / "cka_self.png").is_file()
    html = write_run_report(run).read_text()
    assert "Layer×layer similarity within the model (CKA)" in html and html.count("data:image/png;base64,") == 1
    (run / "figures" / "cka_self.png").unlink()  # no figure file: the heat map is drawn from cka_self.json
    assert write_run_report(run).read_text().count("data:image/png;base64,") == 1
    assert write_self_alignment(run, token_set="cls", samples=120, n_boot=5, seed=0) is not None
    shutil.rmtree(run / "cache")
    assert write_self_alignment(run, token_set="mean", samples=120, n_boot=5, seed=0) is None


def test_refusals_are_one_line_and_write_nothing(runs, tmp_path, capsys):
    s, b = runs["S"], runs["B"]
    other = _copy(s, tmp_path / "other")
    run = json.loads((other / "run.json").read_text())
    run["data"]["content_hash"] = "0" * 64
    (other / "run.json").write_text(json.dumps(run))
    with pytest.raises(VitdepthError, match="not made on the same images"):
        align_runs(s, other, tmp_path / "x1")
    nocache = _copy(b, tmp_path / "nocache")
    shutil.rmtree(nocache / "cache")
    with pytest.raises(VitdepthError, match="no feature cache"):
        align_runs(s, nocache, tmp_path / "x2")
    nocls = _copy(b, tmp_path / "nocls")
    meta = json.loads((nocls / "cache" / "meta.json").read_text())
    del meta["layers"]["cls"]
    (nocls / "cache" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(VitdepthError, match="no 'cls' token set.*--token-set mean"):
        align_runs(s, nocls, tmp_path / "x3", token_set="cls")
    disjoint = _copy(b, tmp_path / "disjoint")
    with np.load(disjoint / "per_image.npz") as z:
        arrays = dict(z)
    arrays["dataset_index"] = arrays["dataset_index"] + 100_000
    np.savez(disjoint / "per_image.npz", **arrays)
    with pytest.raises(VitdepthError, match="share 0 analyzed images"):
        align_runs(s, disjoint, tmp_path / "x4")
    assert not any((tmp_path / f"x{i}").exists() for i in range(1, 5))
    capsys.readouterr()
    assert main(["align", str(s), str(nocache), "--out", str(tmp_path / "x5")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vitdepth: error:") and "no feature cache" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x5").exists()
    user = tmp_path / "mine"  # a folder vitdepth did not write is never replaced, --overwrite or not
    user.mkdir()
    (user / "notes.md").write_text("mine")
    for extra in ([], ["--overwrite"]):
        assert main(["align", str(s), str(b), "--out", str(user), *extra]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert [p.name for p in user.iterdir()] == ["notes.md"] and (user / "notes.md").read_text() == "mine"


def test_cli_align_and_compare_align(runs, tmp_path, capsys):
    s, b = runs["S"], runs["B"]
    assert main(["align", str(s), str(b), "--out", str(tmp_path / "a"), "--samples", "80", "--boot", "20"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert SENTENCE.fullmatch(printed[0]) and printed[-1].startswith("alignment report:")
    assert main(["align", str(s), str(b), "--out", str(tmp_path / "a"), "--quiet"]) == 2  # exists: no overwrite
    assert "already exists" in capsys.readouterr().err
    assert main(["align", str(s), str(b), "--out", str(tmp_path / "a"), "--quiet", "--overwrite", "--boot",
                 "10"]) == 0
    assert capsys.readouterr().out == ""

    assert main(["compare", str(s), str(b), "--out", str(tmp_path / "cmp"), "--align"]) == 0
    stdout = capsys.readouterr().out
    cmp = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    (al,) = cmp["alignments"]
    assert al["from"] == "ViT-S" and al["to"] == "ViT-B" and al["summary"] in stdout
    assert (tmp_path / "cmp" / al["dir"] / "figures" / "cka.png").is_file()
    assert (tmp_path / "cmp" / al["dir"] / "align.json").is_file()
    html = (tmp_path / "cmp" / "report.html").read_text()
    assert "Layer alignment (CKA)" in html
    section = html[html.index('<section id="alignment">'):]
    section = section[:section.index("</section>")]
    assert section.count("data:image/png;base64,") == 1 and "ViT-S → ViT-B" in section
    assert all(sentence.split(" (CKA")[0] in section for sentence in al["sentences"])
