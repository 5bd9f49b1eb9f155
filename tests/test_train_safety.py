"""Training safety: ``--resume`` continues only the run it recorded (and its monitor.csv equals an uninterrupted
run's), an unwritable ``--out`` fails before any work, bad augmentation fields in a recipe are named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vitdepth._errors import VitdepthError
from vitdepth.cli import main
from vitdepth.models.checkpoint import load_state_dict
from vitdepth.train import loop
from vitdepth.train.loop import TrainConfig, train
from vitdepth.train.monitor import ISIMonitor
from vitdepth.train.recipe import load_recipe

SIZES = {"S": {"embed_dim": 16, "depth": 2, "num_heads": 2}}


def _recipe(tmp_path: Path, filename: str = "tiny.json", **changes) -> Path:
    """The digits recipe at test size: 300 samples -> 210 train images -> 6 steps of 32 per epoch."""
    r = load_recipe("digits")
    r.update({"name": "tiny-safety", "sizes": SIZES, "epochs": 2, "batch_size": 32})
    r["schedule"]["warmup_epochs"] = 0
    r["monitor"].update({"every": 4, "images": 16})  # evaluations at steps 0, 4, 8: step 8's window straddles 6
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            r[section][field] = value
        else:
            r[key] = value
    path = tmp_path / filename
    path.write_text(json.dumps(r))
    return path


def _stop_after_epoch_1(rec):
    if rec["epoch"] == 1:
        raise KeyboardInterrupt


def _interrupted(recipe: Path, out: Path, **kw) -> None:
    """Train 2 epochs of S but stop (as Ctrl-C would) after the epoch-1 checkpoint."""
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(recipe=str(recipe), out=str(out), sizes=["S"], samples=300, quiet=True,
                          callbacks=[_stop_after_epoch_1], **kw))


# -- 6: resume -------------------------------------------------------------------------------------------------------

def test_resumed_monitor_csv_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    recipe = _recipe(tmp_path)
    full = train(TrainConfig(recipe=str(recipe), out=str(tmp_path / "full"), sizes=["S"], samples=300, quiet=True))
    expected = (full["S"] / "monitor.csv").read_text()
    assert "\n8," in expected  # the evaluation whose loss window reaches back before the resume point (step 6)

    # stopped at the epoch boundary: the monitor's loss window (steps 5..8 at step 8) must come back with the run
    _interrupted(recipe, tmp_path / "cut")
    cut = train(TrainConfig(recipe=str(recipe), out=str(tmp_path / "cut"), sizes=["S"], samples=300, quiet=True,
                            resume=True))
    # Exact equality: same process, same CPU kernels, weights resumed bit for bit (tests/test_train.py), so the
    # monitor's numbers are the same floats; no tolerance is needed and none is allowed.
    assert (cut["S"] / "monitor.csv").read_text() == expected

    # killed inside epoch 2, after the monitor wrote step 8 but before the epoch-2 checkpoint: those rows are redone
    class KilledAtStep8(ISIMonitor):
        def __call__(self, step, loss=None):
            out = super().__call__(step, loss)
            if step == 8:
                raise KeyboardInterrupt
            return out

    with monkeypatch.context() as m:
        m.setattr(loop, "ISIMonitor", KilledAtStep8)
        with pytest.raises(KeyboardInterrupt):
            train(TrainConfig(recipe=str(recipe), out=str(tmp_path / "killed"), sizes=["S"], samples=300, quiet=True))
    assert "\n8," in (tmp_path / "killed" / "S" / "monitor.csv").read_text()
    killed = train(TrainConfig(recipe=str(recipe), out=str(tmp_path / "killed"), sizes=["S"], samples=300,
                               quiet=True, resume=True))
    assert (killed["S"] / "monitor.csv").read_text() == expected
    a, b = load_state_dict(full["S"] / "model.safetensors"), load_state_dict(killed["S"] / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_other_settings_naming_each(tmp_path, capsys):
    recipe = _recipe(tmp_path)
    out = tmp_path / "run"
    _interrupted(recipe, out, monitor=False)
    last = out / "S" / "last"
    before = {p.name: p.stat().st_mtime_ns for p in last.iterdir()}
    base = ["train", "--recipe", str(recipe), "--sizes", "S", "--out", str(out), "--samples", "300", "--no-monitor",
            "--quiet", "--resume"]
    other_lr = _recipe(tmp_path, "lr.json", optimizer__lr=0.01)
    renamed = _recipe(tmp_path, "renamed.json", name="tiny-other")
    cases = [
        (["--seed", "1"], ["--seed 1 differs from the checkpoint's 0"]),
        (["--seed", "1", "--batch-size", "16"], ["--seed 1 differs from the checkpoint's 0",
                                                 "--batch-size 16 differs from the checkpoint's 32"]),
        (["--data", "synthetic:n=300"], ["--data synthetic:n=300 differs from the checkpoint's digits"]),
        (["--samples", "200"], ["--samples 200 differs from the checkpoint's 300"]),
        (["--epochs", "3"], ["--epochs 3 differs from the checkpoint's 2"]),
        (["--recipe", str(other_lr)], ["'optimizer.lr' 0.01 (checkpoint: 0.002)"]),
        (["--recipe", str(renamed)], ["recipe 'tiny-other' differs from the checkpoint's 'tiny-safety'"]),
    ]
    for extra, named in cases:
        code = main([*base, *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, (extra, err)
        assert f"cannot resume {out}" in err[0] and "start a new --out" in err[0], err
        for phrase in named:
            assert phrase in err[0], (extra, err)
    # --samples left out is a difference too (the checkpoint trained on a 300-image subset)
    assert main([a for a in base if a not in ("--samples", "300")]) == 2
    assert "--samples not given (all images) differs from the checkpoint's 300" in capsys.readouterr().err
    # nothing was touched, and no config.json claims the refused settings
    assert {p.name: p.stat().st_mtime_ns for p in last.iterdir()} == before
    assert not (out / "S" / "config.json").exists()
    # the same settings resume
    assert main(base) == 0
    assert json.loads((out / "S" / "config.json").read_text())["complete"] is True


def test_resume_refuses_changed_data_content(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    for c in ("a", "b"):
        (data / c).mkdir(parents=True)
        for i in range(10):
            Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(data / c / f"{i}.png")
    recipe = _recipe(tmp_path)
    kw = dict(recipe=str(recipe), out=str(tmp_path / "run"), sizes=["S"], data=f"folder:{data}", batch_size=4,
              quiet=True, monitor=False)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**kw, callbacks=[_stop_after_epoch_1]))
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(data / "a" / "new.png")
    with pytest.raises(VitdepthError, match=r"the data folder:\S+ has changed since the checkpoint") as e:
        train(TrainConfig(**kw, resume=True))
    assert "\n" not in str(e.value)


def test_resume_with_nothing_to_resume_is_an_error(tmp_path, capsys):
    recipe = _recipe(tmp_path)
    out = tmp_path / "never"
    args = ["train", "--recipe", str(recipe), "--sizes", "S", "--out", str(out), "--samples", "300", "--quiet",
            "--resume"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"nothing to resume in {out}" in err[0] and "drop --resume" in err[0], err
    assert not out.exists()  # not silently started
    (out / "S").mkdir(parents=True)  # a run killed in its first epoch: a directory, no checkpoint
    (out / "S" / "monitor.csv").write_text("step,layer,metric,value,loss\n0,1,isi_attn,0.1,2.3\n")
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_resume_refuses_a_checkpoint_stopped_part_way_through_an_epoch(tmp_path):
    recipe = _recipe(tmp_path)
    kw = dict(recipe=str(recipe), out=str(tmp_path / "run"), sizes=["S"], samples=300, quiet=True, monitor=False)
    train(TrainConfig(**kw, max_steps=2))  # 2 of epoch 1's 6 steps, saved as "after epoch 1"
    with pytest.raises(VitdepthError, match="part-way through epoch 1"):
        train(TrainConfig(**kw, resume=True))


def test_resume_trains_a_size_the_interrupted_family_never_reached(tmp_path):
    recipe = _recipe(tmp_path, sizes={**SIZES, "B": {"embed_dim": 16, "depth": 1, "num_heads": 2}})
    out = tmp_path / "fam"
    kw = dict(recipe=str(recipe), out=str(out), samples=300, quiet=True, monitor=False, epochs=1)
    train(TrainConfig(**kw, sizes=["S"]))
    res = train(TrainConfig(**kw, sizes=["S", "B"], resume=True))  # S complete (settings checked), B from scratch
    assert json.loads((res["B"] / "config.json").read_text())["complete"] is True
    with pytest.raises(VitdepthError, match="--seed 5 differs"):  # a complete size is checked too
        train(TrainConfig(**kw, sizes=["S", "B"], resume=True, seed=5))


# -- 16: unwritable --out --------------------------------------------------------------------------------------------

def test_unwritable_out_fails_before_any_data_or_training(tmp_path, monkeypatch, capsys):
    def reached(*a, **k):
        raise AssertionError("data loading / training was reached before the --out check")

    monkeypatch.setattr(loop, "create_source", reached)
    monkeypatch.setattr(loop, "_train_size", reached)
    recipe = _recipe(tmp_path)
    blocker = tmp_path / "file.txt"
    blocker.write_text("a regular file: nothing can be created under it, even by root")
    with pytest.raises(VitdepthError, match=r"file\.txt is not a directory; choose another --out"):
        train(TrainConfig(recipe=str(recipe), out=str(blocker / "out"), sizes=["S"], samples=300, quiet=True))
    code = main(["train", "--recipe", str(recipe), "--sizes", "S", "--out", str(blocker), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "is a file, not a directory" in err[0], err


# -- 20: augmentation fields -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, field", [
    ({"augment__randaugment": "rand-bogus"}, "'augment.randaugment'"),
    ({"augment__randaugment": "rand-m9-tbogus"}, "'augment.randaugment'"),
    ({"augment__randaugment": "rand-m9-p2"}, "'augment.randaugment'"),
    ({"augment__randaugment": "rand-m9x"}, "'augment.randaugment'"),
    ({"augment__randaugment": "augmix-m5"}, "'augment.randaugment'"),
    ({"augment__mixup": float("inf")}, "'augment.mixup'"),
    ({"augment__color_jitter": float("nan")}, "'augment.color_jitter'"),
    ({"augment__scale": [0.5, float("inf")]}, "'augment.scale'"),
])
def test_bad_augmentation_field_is_named(tmp_path, capsys, change, field):
    recipe = _recipe(tmp_path, **change)
    code = main(["train", "--recipe", str(recipe), "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and field in err[0], err
    if "randaugment" in field:
        assert "such as 'rand-m9-mstd0.5-inc1'" in err[0]
    assert not (tmp_path / "o").exists()


def test_good_randaugment_strings_pass_and_mixup_needs_an_even_batch(tmp_path, monkeypatch):
    for good in ("rand-m9-mstd0.5-inc1", "rand-m9-n3-mstd0.5", "rand-mstd1-tweights", "rand-m7-p0.3-mmax10"):
        load_recipe(str(_recipe(tmp_path, augment__randaugment=good)))
    monkeypatch.setattr(loop, "create_source", lambda *a, **k: pytest.fail("data was loaded"))
    recipe = _recipe(tmp_path, augment__mixup=0.8)
    with pytest.raises(VitdepthError, match="'augment.mixup' / 'augment.cutmix' need an even batch per process"):
        train(TrainConfig(recipe=str(recipe), out=str(tmp_path / "o"), sizes=["S"], batch_size=33, quiet=True))
