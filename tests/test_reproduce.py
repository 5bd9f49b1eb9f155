"""``vitdepth reproduce paper``: the mechanics offline, and each claim-evaluation rule on hand-made inputs.

The end-to-end test runs random-init models of the paper's timm architectures (no download: HF_HUB_OFFLINE=1) at
32 px on a small generated ImageFolder laid out like ImageNet (ROOT/val/<wnid>/<image>), with ``--quick``, a
reduced metric set (no probes, neural collapse, ISI fits or interventions: on ViT-L their cost dominates, and the
rules that read them are tested on hand-made inputs below) and no figures.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from vitdepth import reproduce as rp
from vitdepth._errors import VitdepthError
from vitdepth.cli import main

QUICK_METRICS = "token_sim,token_sim_centered,cls_centrality,attn_consensus,isi_attn"
VERDICTS = {rp.REPRODUCED, rp.NOT_REPRODUCED, rp.NOT_MEASURED}


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory):
    """ROOT/val/<wnid>/<image>: 3 classes x 6 PNGs of distinct patterns (stripes by class, shifted per image)."""
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:40, 0:40]
    for c, wnid in enumerate(("n01440764", "n01443537", "n01484850")):
        d = root / "val" / wnid
        d.mkdir(parents=True)
        for i in range(6):
            wave = np.sin((xx if c == 0 else yy if c == 1 else xx + yy) * (0.4 + 0.1 * c) + i)
            img = np.stack([wave * 100 + 120 + 30 * (k == c) for k in range(3)], -1) + rng.normal(0, 8, (40, 40, 3))
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(d / f"ILSVRC2012_val_{c}{i:04d}.png")
    return root


def _argv(data, out, *extra):
    return ["reproduce", "paper", "--imagenet", str(data), "--out", str(out), "--quick", "--random-init",
            "--image-size", "32", "--metrics", QUICK_METRICS, "--no-figures", *extra]


@pytest.mark.slow  # ViT-L dominates: its random init and its ridge probes (d = 1024, 51 fits)
def test_reproduce_quick_end_to_end_and_resume(imagenet_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "repro"
    assert main(_argv(imagenet_root, out)) == 0
    printed = capsys.readouterr().out
    for size in rp.SIZES:
        run = out / size
        assert (run / "run.json").is_file() and (run / "layers.csv").is_file()
        assert json.loads((run / ".vitdepth-output.json").read_text())["complete"] is True
        cfg = json.loads((run / "run.json").read_text())["config"]
        assert cfg["reproduce"]["model"] == f"timm:{rp.PAPER_SETTINGS['models']['value'][size].partition('.')[0]}"
        assert cfg["samples"] == rp.QUICK_SETTINGS["samples"] and cfg["n_boot"] == rp.QUICK_SETTINGS["n_boot"]
    assert (out / "compare" / "compare.json").is_file()
    record = json.loads((out / "claims.json").read_text())
    assert [c["id"] for c in record["claims"]] == [c.id for c in rp.CLAIMS]
    assert all(c["verdict"] in VERDICTS and c["statement"] and c["how"] for c in record["claims"])
    verdicts = {c["id"]: c["verdict"] for c in record["claims"]}
    assert verdicts["cls_causal"] == rp.NOT_MEASURED  # --metrics: no interventions
    assert verdicts["geometry_B_vs_L"] == rp.NOT_MEASURED  # nc1 not selected
    assert verdicts["cliff_at_pe"] != rp.NOT_MEASURED and verdicts["phase_shape"] != rp.NOT_MEASURED
    assert record["runs"]["ViT-S"]["action"] == "analyzed"
    rows = (out / "claims.csv").read_text().splitlines()
    assert rows[0].startswith("id,verdict") and len(rows) >= len(rp.CLAIMS) + 1
    page = (out / "report.html").read_text()
    assert "<script src" not in page and "stylesheet" not in page and "cliff_at_pe" in page
    for claim in record["claims"]:  # one printed verdict line per claim
        assert any(line.startswith(f"[{claim['verdict']}]") and f" {claim['id']}: " in line
                   for line in printed.splitlines()), claim["id"]
    marker = json.loads((out / ".vitdepth-output.json").read_text())
    assert marker["kind"] == "reproduce" and marker["complete"] and set(rp.OWN_FILES) <= set(marker["files"])

    # a second command reuses every finished run: nothing is recomputed
    stamps = {s: (out / s / "run.json").stat().st_mtime_ns for s in rp.SIZES}
    assert main(_argv(imagenet_root, out)) == 0
    printed = capsys.readouterr().out
    assert printed.count("reusing the finished run") == 3
    assert {s: (out / s / "run.json").stat().st_mtime_ns for s in rp.SIZES} == stamps
    assert json.loads((out / "claims.json").read_text())["runs"]["ViT-L"]["action"] == "reused"

    # other settings on the same --out: refused in one line (no silent mix of runs)
    assert main(_argv(imagenet_root, out, "--samples", "9")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "other settings" in err and "--overwrite" in err


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_refusals_before_any_model_loads(imagenet_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "repro"
    err = _one_line_error(capsys, _argv(tmp_path / "nope", out))
    assert "--imagenet" in err and "not a folder" in err and "<class>" in err
    loose = tmp_path / "loose"
    loose.mkdir()
    Image.new("RGB", (8, 8)).save(loose / "a.png")
    assert "no class subfolders" in _one_line_error(capsys, _argv(loose, out))
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "vit_small_patch16_224.safetensors").write_bytes(b"")
    (weights / "vit_base_patch16_224.safetensors").write_bytes(b"")
    argv = [a for a in _argv(imagenet_root, out) if a != "--random-init"] + ["--weights", str(weights)]
    err = _one_line_error(capsys, argv)
    assert "vit_large_patch16_224.safetensors" in err and "ViT-L" in err
    assert "contradict" in _one_line_error(capsys, _argv(imagenet_root, out, "--weights", str(weights)))
    assert not out.exists()  # nothing was written
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.md").write_text("mine")
    assert "not written by vitdepth reproduce" in _one_line_error(capsys, _argv(imagenet_root, user))
    assert (user / "notes.md").read_text() == "mine" and sorted(p.name for p in user.iterdir()) == ["notes.md"]


def test_interrupted_run_resumes_on_the_next_command(imagenet_root, tmp_path, capsys, monkeypatch):
    """A run stopped with a checkpoint: the message says to rerun the command, which then resumes it."""
    import vitdepth.analysis.run as run_module
    from vitdepth._errors import Interrupted
    from vitdepth.outputs import partial_dir

    seen = []

    def stopped(cfg):
        seen.append(cfg)
        ckpt = partial_dir(cfg.out) / "checkpoint"
        ckpt.mkdir(parents=True, exist_ok=True)
        (ckpt / "rank-0.npz").write_bytes(b"")
        raise Interrupted("interrupted (SIGINT) during the pass; the checkpoint keeps the work so far", 2)

    monkeypatch.setattr(run_module, "analyze", stopped)
    out = tmp_path / "repro"
    assert main(_argv(imagenet_root, out)) == 130
    assert "run the same `vitdepth reproduce paper` command again" in capsys.readouterr().err
    assert main(_argv(imagenet_root, out)) == 130
    assert [cfg.resume for cfg in seen] == [False, True] and seen[1].out == str(out / "S")


# ---------------------------------------------------------------------------------------------------------------
# The rules on hand-made evidence
# ---------------------------------------------------------------------------------------------------------------

class _Run:
    """Stands in for RunResults: ``curve(metric, token_set)`` and ``run['model']['depth']``."""

    def __init__(self, depth: int, curves: dict) -> None:
        self.run = {"model": {"depth": depth}}
        self.curves = curves

    def curve(self, metric, token_set=""):
        if (metric, token_set or "") not in self.curves:
            raise VitdepthError(f"unknown metric {metric}")
        d = self.curves[(metric, token_set or "")]
        return SimpleNamespace(layers=np.array(list(d), dtype=str), values=np.array(list(d.values()), dtype=float))


DEPTHS = {"S": 12, "B": 12, "L": 24}


def _layers(depth):
    return ["pre"] + [str(i) for i in range(depth + 1)]


def _cpc(depth, scale=1.0):
    """A cliff-plateau-climb curve over pre..L: falls at PE, flat, rises over the last quarter."""
    out = {}
    for k, layer in enumerate(_layers(depth)):
        x = k - 1
        out[layer] = scale * (0.02 if x < 0 else -0.002 if x < 0.75 * depth else -0.002 + 0.01 * (x - 0.75 * depth))
    return out


def _ramp(depth, start, end, blocks_only=True):
    xs = range(1, depth + 1) if blocks_only else range(-1, depth + 1)
    return {("pre" if x < 0 else str(x)): start + (end - start) * (x / depth) for x in xs}


def _evidence(per_size: dict, phases=None, compare=None) -> rp.Evidence:
    return rp.Evidence({s: _Run(DEPTHS[s], per_size.get(s, {})) for s in rp.SIZES},
                       phases or {s: None for s in rp.SIZES}, compare)


def _claim(cid: str) -> rp.Claim:
    return next(c for c in rp.CLAIMS if c.id == cid)


def _cliff(values):
    return _evidence({s: {("token_sim_centered", ""): {"pre": a, "0": b, "1": b}} for s, (a, b) in values.items()})


def _curves(metric, token_set, make):
    return _evidence({s: {(metric, token_set): make(s)} for s in rp.SIZES})


def _probes(cls_last):
    return _evidence({s: {("probe_acc", "mean"): {str(DEPTHS[s]): 0.80}, ("probe_acc", "cls"): {str(DEPTHS[s]): c}}
                      for s, c in zip(rp.SIZES, cls_last, strict=True)})


def _knockout(cost_l):
    def make(s):
        d = DEPTHS[s]
        cost = cost_l if s == "L" else 0.0
        return {**{str(i): 0.5 for i in range(1, d)}, str(-(-2 * d // 3)): 0.8 - cost, str(d): 0.8}
    return _curves("cls_knockout_acc", "", make)


def _isi(median):
    return _evidence({"B": {("isi_rec", ""): {str(i): median + 0.001 * (i - 6) for i in range(1, 13)}}})


def _shift(layers):
    return _evidence({}, compare={"shifts": [{"from": "ViT-B", "to": "ViT-L", "what": "trade-off onset",
                                              "layers": layers, "relative_depth": 0.2, "sentence": "..."}]})


def _onset(rise):
    return _evidence({}, phases={"S": None, "B": None, "L": {"tradeoff_onset": {
        "layer": "14", "isi_metric": "isi_attn", "isi_rise_after": rise}}})


def _nc1(base, large):
    return _evidence({"B": {("nc1", "cls"): {"12": base}}, "L": {("nc1", "cls"): {"24": large}}})


CASES = {  # claim id -> (evidence that reproduces it, evidence that does not)
    "cliff_at_pe": (_cliff({"S": (0.019, -0.003), "B": (0.03, 0.0), "L": (0.025, -0.006)}),
                    _cliff({"S": (0.019, -0.003), "B": (0.03, 0.0), "L": (0.06, 0.01)})),
    "phase_shape": (_curves("token_sim_centered", "", lambda s: _cpc(DEPTHS[s])),
                    _curves("token_sim_centered", "", lambda s: _cpc(DEPTHS[s]) if s != "B"
                            else _ramp(12, 0.0, 1.0, blocks_only=False))),
    "cls_marginalization": (_curves("cls_centrality", "", lambda s: _ramp(DEPTHS[s], 0.3, 0.05)),
                            _curves("cls_centrality", "", lambda s: _ramp(DEPTHS[s], 0.3, 0.05 if s != "S" else 0.5))),
    "patch_consensus": (_curves("attn_consensus", "", lambda s: _ramp(DEPTHS[s], 0.2, 0.9)),
                        _curves("attn_consensus", "", lambda s: _ramp(DEPTHS[s], 0.9, 0.2))),
    "mean_probe_vs_cls": (_probes([0.80, 0.805, 0.79]), _probes([0.80, 0.85, 0.79])),
    "cls_causal": (_knockout(0.005), _knockout(0.2)),
    "isi_band_B": (_isi(0.006), _isi(0.05)),
    "tradeoff_shift_L_vs_B": (_shift(9), _shift(2)),
    "diffusion_after_onset_L": (_onset(0.01), _onset(-0.01)),
    "geometry_B_vs_L": (_nc1(0.5, 0.9), _nc1(0.9, 0.5)),
}


def test_every_claim_is_quoted_and_has_a_rule_and_a_case():
    assert set(CASES) == {c.id for c in rp.CLAIMS}
    for c in rp.CLAIMS:
        assert c.rule in rp.RULES and c.statement and c.location and c.source.startswith("https://") and c.how


@pytest.mark.parametrize("cid", sorted(CASES))
def test_rule_reproduced_vs_not(cid):
    good, bad = CASES[cid]
    claim = _claim(cid)
    hit = rp.evaluate(claim, good)
    assert hit.verdict == rp.REPRODUCED, hit.detail
    assert hit.measured and hit.detail
    miss = rp.evaluate(claim, bad)
    assert miss.verdict == rp.NOT_REPRODUCED, miss.detail


@pytest.mark.parametrize("cid", sorted(CASES))
def test_rule_without_its_metrics_is_not_measured(cid):
    out = rp.evaluate(_claim(cid), _evidence({}))
    assert out.verdict == rp.NOT_MEASURED and out.detail


def test_settings_quick_and_overrides():
    base = rp.settings(rp.ReproduceOptions(imagenet="x", out="y"))
    assert base["samples"] is None and base["probe"] == "logistic" and base["metrics"] == "paper"
    quick = rp.settings(rp.ReproduceOptions(imagenet="x", out="y", quick=True, samples=64, image_size=32))
    assert quick["samples"] == 64 and quick["probe"] is None and quick["n_boot"] == rp.QUICK_SETTINGS["n_boot"]
    assert quick["image_size"] == 32 and quick["interventions"] == [] and base["interventions"] == ["cls"]
    assert all(v["source"] for v in rp.PAPER_SETTINGS.values())
