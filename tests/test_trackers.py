"""Tracker sinks (TensorBoard, W&B offline, MLflow file store), the monitor's one-chart-per-metric logging,
``vitdepth export`` and the Lightning callback, each read back from what the tracker wrote on disk."""

from __future__ import annotations

import argparse
import glob
import json
import math
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vitdepth import VitdepthError
from vitdepth.results import layer_order, load_phases, load_run

sys.path.insert(0, str(Path(__file__).parent))
from conftest import tiny_timm_vit  # noqa: E402

pytest.importorskip("tensorboard")
pytest.importorskip("wandb")
pytest.importorskip("mlflow")


@pytest.fixture(autouse=True)
def _offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    import vitdepth

    out = tmp_path_factory.mktemp("export") / "tiny_run"
    return vitdepth.analyze(model=tiny_timm_vit(num_classes=10), data="digits", samples=120, out=out, quiet=True,
                            metrics="core", n_boot=50, n_boot_phases=20)  # core metrics, few resamples: ~8 s


# --- reading back what each tracker wrote --------------------------------------------------------------------------

def tensorboard_scalars(logdir: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """``{run: {tag: [(step, value)]}}`` from the event files under ``logdir``."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    mux = EventMultiplexer().AddRunsFromDirectory(str(logdir))
    mux.Reload()
    return {run: {tag: [(e.step, e.value) for e in mux.Scalars(run, tag)] for tag in tags["scalars"]}
            for run, tags in mux.Runs().items() if tags["scalars"]}


def wandb_history(run_root: Path) -> list[dict]:
    """The history rows of an offline W&B run file (``run-*.wandb``: a LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (file,) = glob.glob(str(run_root / "wandb" / "offline-run-*" / "run-*.wandb"))
    data, pos, buf, rows, block = Path(file).read_bytes(), 7, b"", [], 32768
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # block trailer / padding
            pos += left
            continue
        buf += data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):  # FULL or LAST chunk: a whole record
            rec = pb.Record()
            rec.ParseFromString(buf)
            buf = b""
            if rec.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
    return rows


def _mlflow_client(tmp_path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"file://{tmp_path / 'mlruns'}")


# --- sinks -----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend,modules", [("tensorboard", ["torch.utils.tensorboard"]), ("wandb", ["wandb"]),
                                             ("mlflow", ["mlflow"])])
def test_missing_package_names_the_extra(backend, modules, monkeypatch, tmp_path):
    from vitdepth.trackers import create_sink

    for mod in list(sys.modules):
        if any(mod == m or mod.startswith(m + ".") for m in modules):
            monkeypatch.setitem(sys.modules, mod, None)
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)
    with pytest.raises(VitdepthError, match=rf"pip install 'vitdepth\[{backend}\]'") as e:
        create_sink(backend, **({"logdir": tmp_path} if backend == "tensorboard" else {}))
    assert "\n" not in str(e.value)


def test_sinks_satisfy_the_protocol_and_unknown_backend_is_named(tmp_path):
    from vitdepth.trackers import Sink, TensorBoardSink, create_sink

    sink = TensorBoardSink(tmp_path / "tb")
    assert isinstance(sink, Sink)
    sink.close()
    with pytest.raises(VitdepthError, match="unknown tracker 'neptune'; choose one of tensorboard, wandb, mlflow"):
        create_sink("neptune")


# --- the ISI monitor: one chart per metric ---------------------------------------------------------------------------

def test_monitor_logs_one_chart_per_metric_to_all_three(tmp_path):
    from vitdepth.trackers import MlflowSink, WandbSink, layer_series
    from vitdepth.train.monitor import MONITOR_METRICS, ISIMonitor

    model = tiny_timm_vit(depth=4)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    mlflow_sink = MlflowSink(tracking_uri=f"file://{tmp_path / 'mlruns'}", run_name="monitor")
    wandb_sink = WandbSink(project="vitdepth-test", dir=str(tmp_path), mode="offline")
    monitor = ISIMonitor(model, images, every=2, out_dir=tmp_path / "mon", log=None, tensorboard=True,
                         sinks=[mlflow_sink, wandb_sink])
    for step in range(5):
        monitor(step, 1.0 - 0.1 * step)
    run_id = mlflow_sink.run_id
    monitor.close()
    steps = [h["step"] for h in monitor.history]
    assert steps == [0, 2, 4]
    layers = sorted(monitor.history[0]["isi_attn"], key=int)
    assert len(layers) >= 4

    # TensorBoard: one tag (chart) per metric, one run (series) per layer — not metrics x layers charts
    tb = tensorboard_scalars(tmp_path / "mon" / "tensorboard")
    tags = {tag for per in tb.values() for tag in per}
    assert tags == set(MONITOR_METRICS)
    for metric in MONITOR_METRICS:  # the series of a metric's chart are its layers
        assert {run for run, per in tb.items() if metric in per} == {layer_series(k) for k in
                                                                     monitor.history[0][metric]}
        for k in monitor.history[0][metric]:
            got = tb[layer_series(k)][metric]
            assert [s for s, _ in got] == steps
            assert [v for _, v in got] == pytest.approx([h[metric][k] for h in monitor.history], rel=1e-5)

    # MLflow: keys metric/layer_kk (one section per metric) and one chart per metric with every layer
    client = _mlflow_client(tmp_path)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert {key.split("/")[0] for key in run.data.metrics} == set(MONITOR_METRICS)
    assert len(run.data.metrics) == sum(len(monitor.history[0][m]) for m in MONITOR_METRICS)
    hist = client.get_metric_history(run_id, f"isi_attn/layer_{int(layers[-1]):02d}")
    assert [(m.step, m.value) for m in hist] == [(h["step"], pytest.approx(h["isi_attn"][layers[-1]]))
                                                 for h in monitor.history]
    assert sorted(a.path for a in client.list_artifacts(run_id, "charts")) == sorted(
        f"charts/{m}.png" for m in MONITOR_METRICS)

    # W&B (offline run file): the same keys at the same steps, plus one line_series chart table per metric
    rows = wandb_history(tmp_path)
    logged = [r for r in rows if "isi_attn/layer_01" in r]
    assert [r["_step"] for r in logged] == steps
    assert logged[-1]["token_sim/layer_01"] == pytest.approx(monitor.history[-1]["token_sim"][layers[0]])
    charts = {k.split("/")[0] for r in rows for k in r if k.endswith("/chart_table/_type")}
    assert charts == set(MONITOR_METRICS)


def test_monitor_tensorboard_true_without_the_package_is_an_error(tmp_path, monkeypatch):
    from vitdepth.train.monitor import ISIMonitor

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    model, images = tiny_timm_vit(), torch.zeros(2, 3, 32, 32)
    with pytest.raises(VitdepthError, match=r"vitdepth\[tensorboard\]"):
        ISIMonitor(model, images, out_dir=tmp_path, tensorboard=True, log=None)
    monitor = ISIMonitor(model, images, out_dir=tmp_path, log=None)  # None: TensorBoard when available
    assert monitor.sinks == [] and (tmp_path / "monitor.csv").is_file()
    monitor.close()


# --- vitdepth export -------------------------------------------------------------------------------------------------

def _curves(run_dir):
    res = load_run(run_dir)
    curves = {}
    for r in res.rows:
        key = r["metric"] + (f".{r['token_set']}" if r["token_set"] else "")
        if not isinstance(r["value"], float) or not math.isfinite(r["value"]):
            continue  # e.g. nc1 at a layer with too few images per class: not logged
        curves.setdefault(key, []).append((layer_order(r["layer"]), r["value"]))
    return {k: sorted(v) for k, v in curves.items()}, load_phases(res)


def test_export_tensorboard(run_dir, tmp_path):
    from vitdepth.export import run_export

    summary = run_export(run_dir, "tensorboard", logdir=tmp_path / "tb")
    assert summary.startswith("exported VisionTransformer (") and "\n" not in summary
    curves, phases = _curves(run_dir)
    tb = tensorboard_scalars(tmp_path / "tb" / "tiny_run")
    assert set(tb["value"]) == set(curves)  # one chart per curve; value / ci_low / ci_high are its series
    assert {"ci_low", "ci_high"} <= set(tb)
    for key, want in curves.items():
        got = tb["value"][key]
        assert [s for s, _ in got] == [s for s, _ in want]  # step = layer index (pre = -1)
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-5)
    assert (tmp_path / "tb" / "tiny_run" / "report.html").is_file()
    assert f"{len(phases['fits'])} phase fits" in summary


def test_export_mlflow(run_dir, tmp_path):
    from vitdepth.export import run_export

    summary = run_export(run_dir, "mlflow", tracking_uri=f"file://{tmp_path / 'mlruns'}", experiment="depth")
    curves, phases = _curves(run_dir)
    client = _mlflow_client(tmp_path)
    (run,) = client.search_runs([client.get_experiment_by_name("depth").experiment_id])
    assert run.info.run_id in summary and run.info.run_name == "tiny_run" and run.info.status == "FINISHED"
    assert run.data.params["model"] == "VisionTransformer" and run.data.params["depth"] == "3"
    hist = client.get_metric_history(run.info.run_id, "isi_attn/value")
    assert [(m.step, m.value) for m in hist] == [(s, pytest.approx(v)) for s, v in curves["isi_attn"]]
    assert {k.rsplit("/", 1)[0] for k in run.data.metrics} == set(curves)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.html", "phases.json", "charts"} <= artifacts
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "phases.json", str(tmp_path))).read_text())
    assert len(table["data"]) == len(phases["fits"]) and table["columns"][:2] == ["curve", "label"]


def test_export_wandb_offline(run_dir, tmp_path):
    from vitdepth.export import run_export

    summary = run_export(run_dir, "wandb", project="depth", dir=str(tmp_path))
    assert "offline" in summary
    curves, _ = _curves(run_dir)
    rows = [r for r in wandb_history(tmp_path) if "isi_attn/value" in r]
    assert [(r["layer"], r["isi_attn/value"]) for r in rows] == [(s, pytest.approx(v)) for s, v in curves["isi_attn"]]
    files = Path(glob.glob(str(tmp_path / "wandb" / "offline-run-*"))[0]) / "files" / "media"
    assert glob.glob(str(files / "html" / "report_*.html")) and glob.glob(str(files / "table" / "phases_*.json"))


def test_export_refuses_an_incomplete_run_before_touching_the_tracker(run_dir, tmp_path):
    from vitdepth.export import run_export
    from vitdepth.outputs import MARKER

    partial = tmp_path / "partial"
    shutil.copytree(run_dir, partial)
    marker = json.loads((partial / MARKER).read_text()) if (partial / MARKER).is_file() else {}
    (partial / MARKER).write_text(json.dumps({**marker, "complete": False}))
    with pytest.raises(VitdepthError, match="incomplete vitdepth run"):
        run_export(partial, "tensorboard", logdir=tmp_path / "tb")
    assert not (tmp_path / "tb").exists()
    with pytest.raises(VitdepthError, match="unknown tracker 'neptune'"):
        run_export(run_dir, "neptune")


def test_export_subcommand(run_dir, tmp_path, capsys):
    from vitdepth.export import add_parser

    parser = argparse.ArgumentParser(prog="vitdepth")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["export", str(run_dir), "--to", "tensorboard", "--logdir", str(tmp_path / "tb"),
                              "--name", "cli"])
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("exported VisionTransformer")
    assert (tmp_path / "tb" / "cli" / "value").is_dir()
    with pytest.raises(SystemExit):
        parser.parse_args(["export", str(run_dir), "--to", "neptune"])


# --- the Lightning callback ------------------------------------------------------------------------------------------

class _FakeTrainer:
    """The two trainer attributes the callback reads."""

    def __init__(self):
        self.is_global_zero, self.global_step = True, 0


def test_callback_hooks_with_a_fake_trainer(tmp_path):
    """The hook logic without Lightning: one evaluation per optimizer step (gradient accumulation), resume state."""
    from vitdepth.train.monitor import ISICallbackHooks

    module = torch.nn.Module()
    module.model = tiny_timm_vit()
    images = torch.randn(2, 3, 32, 32)
    cb, trainer = ISICallbackHooks(images, every=2, out_dir=tmp_path, log=None), _FakeTrainer()
    cb.on_train_start(trainer, module)
    for batch in range(8):  # 2 micro-batches per optimizer step
        if batch % 2 == 1:
            trainer.global_step += 1
        cb.on_train_batch_end(trainer, module, {"loss": torch.tensor(1.0 - 0.05 * batch)}, None, batch)
    assert [h["step"] for h in cb.monitor.history] == [0, 2]
    assert cb.monitor.losses == pytest.approx([0.95, 0.85, 0.75, 0.65])
    state = cb.state_dict()
    cb.on_fit_end(trainer, module)
    assert cb.monitor is None and cb.state_dict() == state

    rank1 = ISICallbackHooks(images, every=2, out_dir=tmp_path / "r1", log=None)
    trainer.is_global_zero = False
    rank1.on_train_start(trainer, module)
    rank1.on_train_batch_end(trainer, module, {"loss": torch.tensor(1.0)}, None, 0)
    assert rank1.monitor is None and not (tmp_path / "r1").exists()


def _LitViT():  # noqa: N802 - a LightningModule class, built when lightning is importable
    import lightning.pytorch as pl

    class LitViT(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = tiny_timm_vit(num_classes=3).train()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.model(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return LitViT()


def test_lightning_callback_in_a_real_fit(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from vitdepth.train.monitor import ISIMonitorCallback

    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 3, (16,)))
    cb = ISIMonitorCallback(torch.randn(4, 3, 32, 32, generator=g), every=2, out_dir=tmp_path, log=None)
    assert isinstance(cb, pl.Callback)
    trainer = pl.Trainer(max_steps=5, callbacks=[cb], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(_LitViT(), torch.utils.data.DataLoader(data, batch_size=2))
    rows = (tmp_path / "monitor.csv").read_text().splitlines()
    assert sorted({int(r.split(",")[0]) for r in rows[1:]}) == [0, 2, 4]
    assert set(tensorboard_scalars(tmp_path / "tensorboard")["layer_01"]) == {"isi_attn", "token_sim",
                                                                             "attn_entropy"}
    assert cb.monitor is None and len(cb.state_dict()["losses"]) == 4  # closed at fit end; the last 2*every losses


def test_lightning_callback_resumes_from_a_checkpoint(tmp_path):
    """A fit resumed from a step-3 checkpoint drops the step-4 rows the first fit wrote after it, then redoes them."""
    pl = pytest.importorskip("lightning.pytorch")
    from vitdepth.train.monitor import ISIMonitorCallback

    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 3, (16,)))
    images = torch.randn(4, 3, 32, 32, generator=g)

    def fit(ckpt_path=None):
        cb = ISIMonitorCallback(images, every=2, out_dir=tmp_path / "mon", log=None, tensorboard=False)
        saver = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1)
        trainer = pl.Trainer(max_steps=5, callbacks=[cb, saver], logger=False, enable_progress_bar=False,
                             enable_model_summary=False, accelerator="cpu", devices=1)
        trainer.fit(_LitViT(), torch.utils.data.DataLoader(data, batch_size=2), ckpt_path=ckpt_path)
        return [r.split(",") for r in (tmp_path / "mon" / "monitor.csv").read_text().splitlines()[1:]]

    first = fit()
    (ckpt,) = glob.glob(str(tmp_path / "ckpt" / "*step=3.ckpt"))
    assert torch.load(ckpt, weights_only=False)["callbacks"]  # the monitor's state rides in the checkpoint
    resumed = fit(ckpt)
    per_step = lambda rows: {s: sum(r[0] == s for r in rows) for s in {r[0] for r in rows}}  # noqa: E731
    assert per_step(first) == per_step(resumed)  # step 4 was dropped and logged again, not appended twice
    assert sorted(per_step(resumed)) == ["0", "2", "4"]


def test_callback_without_lightning_names_the_extra(monkeypatch):
    import vitdepth.train.monitor as monitor_module

    monkeypatch.delattr(monitor_module, "ISIMonitorCallback", raising=False)
    for mod in list(sys.modules):
        if mod.split(".")[0] in ("lightning", "pytorch_lightning"):
            monkeypatch.setitem(sys.modules, mod, None)
    monkeypatch.setitem(sys.modules, "lightning", None)
    monkeypatch.setitem(sys.modules, "pytorch_lightning", None)
    with pytest.raises(VitdepthError, match=r"pip install 'vitdepth\[lightning\]'"):
        monitor_module.ISIMonitorCallback  # noqa: B018


def test_importing_vitdepth_imports_no_tracker():
    code = ("import sys, vitdepth, vitdepth.trackers, vitdepth.export, vitdepth.train.monitor; "
            "print(sorted(m for m in ('wandb', 'mlflow', 'tensorboard', 'lightning', 'pytorch_lightning', "
            "'torch.utils.tensorboard') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
