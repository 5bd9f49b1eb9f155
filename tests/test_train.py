"""Training: loss falls, exact resume, DDP equals one process, the monitor equals analyze,
recipe and checkpoint errors, the DeiT recipe runs, the shipped demo family fits its recipe."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vitdepth.cli import main
from vitdepth.models.checkpoint import load_state_dict
from vitdepth.train.loop import TrainConfig, train
from vitdepth.train.recipe import load_recipe

TINY_SIZES = {"S": {"embed_dim": 16, "depth": 2, "num_heads": 2}, "B": {"embed_dim": 24, "depth": 2, "num_heads": 2}}


def _recipe(tmp_path: Path, augment: bool = True, **overrides) -> Path:
    r = load_recipe("digits")
    r.update({"name": "tiny-test", "sizes": TINY_SIZES, "epochs": 3, "batch_size": 32})
    r["schedule"]["warmup_epochs"] = 0
    r["optimizer"]["lr"] = 0.005  # tiny models, few steps: a larger step so the loss visibly falls
    r["monitor"]["every"] = 5
    if not augment:
        r["augment"].update({"scale": [1.0, 1.0], "ratio": [1.0, 1.0]})
    r.update(overrides)
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(r))
    return path


def _weights(d: Path) -> dict[str, torch.Tensor]:
    return load_state_dict(d / "model.safetensors")


def test_loss_decreases_and_checkpoint_is_complete(tmp_path):
    out = tmp_path / "fam"
    res = train(TrainConfig(recipe=str(_recipe(tmp_path)), out=str(out), sizes=["S"], samples=600, quiet=True,
                            epochs=4))
    cfg = json.loads((res["S"] / "config.json").read_text())
    losses = [h["train_loss"] for h in cfg["history"]]
    assert losses[-1] < losses[0] - 0.015 and losses[-1] == min(losses), losses
    assert cfg["complete"] and 0 <= cfg["test_acc"] <= 1 and cfg["test_n"] > 0
    assert cfg["recipe"]["name"] == "tiny-test" and len(cfg["recipe_hash"]) == 64
    assert cfg["data"]["spec"] == "digits" and cfg["model_args"]["embed_dim"] == 16
    assert (res["S"] / "last" / "train_state.pt").is_file()
    rows = list(csv.DictReader(open(res["S"] / "monitor.csv")))
    assert {r["metric"] for r in rows} == {"isi_attn", "token_sim", "attn_entropy"}
    assert json.loads((out / "family.json").read_text())["test_acc"]["S"] == cfg["test_acc"]
    # vitdepth analyze reads the result
    assert main(["analyze", f"file:{res['S']}", "--data", "digits", "--samples", "100", "--out",
                 str(tmp_path / "a"), "--quiet"]) == 0


def test_resume_continues_exactly(tmp_path):
    recipe = str(_recipe(tmp_path))
    full = train(TrainConfig(recipe=recipe, out=str(tmp_path / "full"), sizes=["S"], samples=300, quiet=True))

    def interrupt(rec):
        if rec["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(recipe=recipe, out=str(tmp_path / "cut"), sizes=["S"], samples=300, quiet=True,
                          callbacks=[interrupt]))
    assert not (tmp_path / "cut" / "S" / "config.json").exists()
    assert json.loads((tmp_path / "cut" / "S" / "last" / "config.json").read_text())["epoch"] == 1
    resumed = train(TrainConfig(recipe=recipe, out=str(tmp_path / "cut"), sizes=["S"], samples=300, quiet=True,
                                resume=True))
    a, b = _weights(full["S"]), _weights(resumed["S"])
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    hist_a = json.loads((full["S"] / "config.json").read_text())["history"]
    hist_b = json.loads((resumed["S"] / "config.json").read_text())["history"]
    assert [h["train_loss"] for h in hist_a] == [h["train_loss"] for h in hist_b]


def test_existing_output_needs_resume_or_overwrite(tmp_path, capsys):
    recipe = str(_recipe(tmp_path))
    args = ["train", "--recipe", recipe, "--sizes", "S", "--out", str(tmp_path / "o"), "--samples", "200",
            "--epochs", "1", "--quiet"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0  # complete sizes are skipped


def test_two_process_ddp_equals_one_process(tmp_path):
    recipe = str(_recipe(tmp_path, augment=False))
    common = ["train", "--recipe", recipe, "--sizes", "S", "--samples", "300", "--epochs", "2", "--batch-size", "32",
              "--no-monitor", "--quiet"]
    single = tmp_path / "single"
    assert main([*common, "--out", str(single)]) == 0
    ddp = tmp_path / "ddp"
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "vitdepth", *common, "--out", str(ddp)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = _weights(single / "S"), _weights(ddp / "S")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4, msg=k)
    la = json.loads((single / "S" / "config.json").read_text())["history"]
    lb = json.loads((ddp / "S" / "config.json").read_text())["history"]
    np.testing.assert_allclose([h["train_loss"] for h in la], [h["train_loss"] for h in lb], rtol=1e-4)


def test_monitor_equals_analyze_on_the_same_batch(tmp_path):
    from vitdepth.analysis.run import AnalyzeConfig, analyze
    from vitdepth.data import build_transform, create_source, stratified_subset
    from vitdepth.models import create_model
    from vitdepth.train.monitor import ISIMonitor

    res = train(TrainConfig(recipe=str(_recipe(tmp_path)), out=str(tmp_path / "fam"), sizes=["B"], samples=200,
                            epochs=1, quiet=True))
    tm = create_model(f"file:{res['B']}")
    source = create_source("digits")
    idx = stratified_subset(np.asarray(source.labels), 60, 0)
    tf = build_transform(tm.preprocess)
    images = torch.stack([tf(source.load(int(i))) for i in idx])
    monitor = ISIMonitor(tm.model, images, every=1, log=None)
    values = monitor(0, 1.0)
    run = analyze(AnalyzeConfig(model=f"file:{res['B']}", data="digits", samples=60, out=str(tmp_path / "an"),
                                quiet=True, figures=False, batch_size=17, metrics="core"))
    rows = {(r["metric"], r["layer"]): float(r["value"]) for r in csv.DictReader(open(run / "layers.csv"))}
    compared = 0
    for metric, per_layer in values.items():
        for layer, v in per_layer.items():
            assert v == pytest.approx(rows[(metric, layer)], rel=1e-5, abs=1e-7), (metric, layer)
            compared += 1
    assert compared == 2 + 2 + 4  # isi_attn, attn_entropy on blocks 1..2; token_sim on pre, 0, 1, 2


def test_monitor_warns_once_when_late_layers_flat_and_loss_falls():
    from vitdepth.train.monitor import ISIMonitor, LateLayersFlatWarning

    flat = {str(i): v for i, v in enumerate([0.5, 0.3, 0.2, 0.1, 0.1, 0.1], start=1)}
    rising = {str(i): v for i, v in enumerate([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], start=1)}
    m = ISIMonitor.__new__(ISIMonitor)
    m.flat_tol, m.loss_drop, m.every = 0.1, 0.01, 2
    assert m.late_layers_flat(flat) and not m.late_layers_flat(rising)
    # per-layer noise in a flat tail: the raw last third spans 0.07 > 10% of the range, its phase fit does not
    noisy = {str(i): v for i, v in enumerate([0.5, 0.3, 0.2, 0.1, 0.12, 0.10, 0.16, 0.09, 0.12], start=1)}
    tail = [noisy[k] for k in ("7", "8", "9")]
    assert max(tail) - min(tail) > 0.1 * (0.5 - 0.09) and m.late_layers_flat(noisy)
    m.losses = [1.0, 1.0, 0.9, 0.9]
    assert m.loss_falling()
    m.losses = [1.0, 1.0, 1.0, 1.0]
    assert not m.loss_falling()

    class Fake(ISIMonitor):
        def compute(self):
            return {"isi_attn": flat, "token_sim": flat, "attn_entropy": flat}

    f = Fake.__new__(Fake)
    f.__dict__.update(dict(every=2, log=None, flat_tol=0.1, loss_drop=0.01, losses=[], warned=False, history=[],
                           out_dir=None, _csv=None, _tb=None, patience=2, warmup_steps=0, _streak=0))
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step, loss in enumerate([1.0, 1.0, 0.8, 0.8, 0.6, 0.6, 0.4, 0.4, 0.2, 0.2]):
            f(step, loss)
    flat_warnings = [w for w in caught if issubclass(w.category, LateLayersFlatWarning)]
    assert len(flat_warnings) == 1 and f.warned  # once, after `patience` consecutive flat evaluations
    g = Fake.__new__(Fake)
    g.__dict__.update({**f.__dict__, "warned": False, "losses": [], "_streak": 0, "patience": 2})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(10):
            g(step, 1.0)  # flat, but the loss does not fall: no warning
    assert not [w for w in caught if issubclass(w.category, LateLayersFlatWarning)]


def test_bad_recipe_field_is_named(tmp_path, capsys):
    good = load_recipe("digits")
    cases = [({"optimizer": {**good["optimizer"], "lr": -1}}, "'optimizer.lr'"),
             ({"epochz": 3}, "'epochz'"),
             ({"sizes": {"S": {"embed_dim": 30, "depth": 2, "num_heads": 4}}}, "'sizes.S'")]
    for i, (change, name) in enumerate(cases):
        r = {**good, **change}
        p = tmp_path / f"bad{i}.json"
        p.write_text(json.dumps(r))
        code = main(["train", "--recipe", str(p), "--out", str(tmp_path / f"o{i}"), "--quiet"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and name in err[0], err
    assert main(["train", "--recipe", "digitz", "--out", str(tmp_path / "x")]) == 2
    assert "did you mean digits" in capsys.readouterr().err


def test_checkpoint_of_another_size_is_refused(tmp_path, capsys):
    res = train(TrainConfig(recipe=str(_recipe(tmp_path)), out=str(tmp_path / "fam"), sizes=["S", "B"],
                            samples=200, epochs=1, quiet=True, monitor=False))
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "config.json").write_text((res["B"] / "config.json").read_text())
    (wrong / "model.safetensors").write_bytes((res["S"] / "model.safetensors").read_bytes())
    code = main(["analyze", f"file:{wrong}", "--data", "digits", "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "does not fit" in err and "shape mismatch" in err


def test_imagenet_deit_recipe_runs_a_few_steps(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(14):
            Image.fromarray((rng.random((40, 48, 3)) * 255).astype(np.uint8)).save(tmp_path / "data" / c / f"{i}.png")
    recipe = load_recipe("imagenet-deit")
    assert recipe["augment"]["randaugment"] and recipe["augment"]["mixup"] > 0 and recipe["epochs"] == 300
    res = train(TrainConfig(recipe="imagenet-deit", out=str(tmp_path / "deit"), sizes=["S"],
                            data=f"folder:{tmp_path / 'data'}", batch_size=4, max_steps=2, quiet=True))
    cfg = json.loads((res["S"] / "config.json").read_text())
    assert cfg["model_args"]["embed_dim"] == 384 and cfg["model_args"]["depth"] == 12
    assert cfg["complete"] is False and cfg["history"][0]["step"] == 2


def test_shipped_demo_family_matches_recipe():
    from importlib import resources

    from vitdepth.train.recipe import model_args, recipe_hash

    recipe = load_recipe("digits")
    root = resources.files("vitdepth").joinpath("demo_models")
    for size in ("S", "B", "L"):
        cfg = json.loads(root.joinpath(size, "config.json").read_text())
        assert cfg["model_args"] == model_args(recipe, size, 10)
        assert cfg["recipe_hash"] == recipe_hash(recipe) and cfg["size"] == size
        assert cfg["test_acc"] >= 0.95
        sd = load_state_dict(Path(str(root.joinpath(size, "model.safetensors"))))
        assert sd["blocks.0.attn.qkv.weight"].shape[1] == recipe["sizes"][size]["embed_dim"]
        assert sum(1 for k in sd if k.endswith("attn.qkv.weight")) == recipe["sizes"][size]["depth"]
