"""Bad inputs through the real CLI: broken weights, configs and run directories end in one line, never a traceback.

Issue 10 items 13 (checkpoints and Hugging Face directories) and 14 (run directories given to ``compare``).
Every case asserts: a non-zero exit (2, a user error), no traceback, one line on stderr naming the file or
thing at fault. The pickle case also asserts that its payload never ran.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from vitdepth import VitdepthError
from vitdepth.analysis.run import AnalyzeConfig, analyze
from vitdepth.cli import main
from vitdepth.demo import demo_models_dir
from vitdepth.results import load_phases, load_run


def _cli(argv: list[str], capfd) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capfd.readouterr()  # file-descriptor level: also what a payload would print via os.system
    return code, out, err


def _assert_one_line_error(code: int, err: str, names: list[str]) -> str:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("vitdepth: error: ") and "unexpected" not in line, line
    for name in names:
        assert name in line, (name, line)
    return line


# --- item 13: checkpoints and Hugging Face directories --------------------------------------------------------


class _RunsCode:
    """Pickles to ``os.system(command)``: unpickling it with plain pickle would run the command."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _payload(marker: Path) -> str:
    return f"echo pwned; touch {marker}"


@pytest.fixture(scope="module")
def swin_dir(tmp_path_factory) -> Path:
    transformers = pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("swin") / "swin"
    torch.manual_seed(0)
    config = transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 1],
                                     window_size=4)
    transformers.SwinModel(config).save_pretrained(d)
    return d


def _hf_copy(request, tmp_path: Path) -> Path:
    """A copy of the tiny Hugging Face ViT of conftest's ``hf_dirs``, to damage."""
    d = tmp_path / "hfmodel"
    shutil.copytree(request.getfixturevalue("hf_dirs")["vit"], d)
    return d


def _empty_pth(tmp_path, request, marker):
    (tmp_path / "empty.pth").write_bytes(b"")
    return ["timm:vit_tiny_patch16_224", "--checkpoint", str(tmp_path / "empty.pth")]


def _malicious_pth(tmp_path, request, marker):
    torch.save({"weight": _RunsCode(_payload(marker))}, tmp_path / "evil.pth")
    return ["timm:vit_tiny_patch16_224", "--checkpoint", str(tmp_path / "evil.pth")]


def _hf_config(text: str):
    def build(tmp_path, request, marker):
        d = _hf_copy(request, tmp_path)
        (d / "config.json").write_text(text)
        return [f"hf:{d}"]

    return build


def _hf_truncated_safetensors(tmp_path, request, marker):
    d = _hf_copy(request, tmp_path)
    weights = d / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    return [f"hf:{d}"]


def _hf_malicious_bin(tmp_path, request, marker):
    d = _hf_copy(request, tmp_path)
    (d / "model.safetensors").unlink()  # transformers would read pytorch_model.bin
    torch.save({"vit.embeddings.cls_token": _RunsCode(_payload(marker))}, d / "pytorch_model.bin")
    return [f"hf:{d}"]


def _hf_swin(tmp_path, request, marker):
    return [f"hf:{request.getfixturevalue('swin_dir')}"]


MODEL_CASES = [
    pytest.param(_empty_pth, ["empty.pth", "empty (0 bytes"], id="timm-empty-checkpoint"),
    pytest.param(_malicious_pth, ["evil.pth", "refused without running it"], id="timm-malicious-pickle"),
    pytest.param(_hf_config("{not json at all"), ["config.json", "not valid JSON", "save_pretrained"],
                 id="hf-config-not-json"),
    pytest.param(_hf_config("[1, 2, 3]"), ["config.json", "not an object"], id="hf-config-list"),
    pytest.param(_hf_config('{"hidden_size": 32}'), ["config.json", "model_type"], id="hf-config-no-model-type"),
    pytest.param(_hf_config('{"model_type": "no_such_model"}'), ["config.json", "no_such_model"],
                 id="hf-config-unknown-model-type"),
    pytest.param(_hf_config('{"model_type": "vit", "hidden_size": "big"}'), ["hfmodel"],
                 id="hf-config-bad-field-type"),
    pytest.param(_hf_truncated_safetensors, ["model.safetensors", "truncated"], id="hf-truncated-safetensors"),
    pytest.param(_hf_malicious_bin, ["pytorch_model.bin", "refused without running it"], id="hf-malicious-bin"),
    pytest.param(_hf_swin, ["Swin is not a plain ViT"], id="hf-swin"),
]


@pytest.mark.parametrize(("build", "names"), MODEL_CASES)
def test_bad_model_input_is_one_line(build, names, tmp_path, request, capfd):
    marker = tmp_path / "payload-ran"
    spec = build(tmp_path, request, marker)
    capfd.readouterr()  # what building the inputs printed (save_pretrained progress bars)
    out = tmp_path / "run"
    code, stdout, stderr = _cli(["analyze", *spec, "--out", str(out), "--samples", "60", "--metrics", "core",
                                 "--quiet"], capfd)
    _assert_one_line_error(code, stderr, names)
    assert "pwned" not in stdout + stderr and not marker.exists(), "the pickle's payload ran"
    assert not out.exists()


# --- item 14: run directories given to compare -----------------------------------------------------------------


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path]:
    """Two small real runs on the same data (the shipped demo S model, 60 digits)."""
    root = tmp_path_factory.mktemp("runs")
    runs = []
    for name in ("A", "B"):
        runs.append(analyze(AnalyzeConfig(model=f"file:{demo_models_dir() / 'S'}", data="digits", samples=60,
                                          out=str(root / name), name=name, quiet=True, figures=False,
                                          metrics="core", n_boot=20, n_boot_phases=10)))
    return runs[0], runs[1]


@pytest.fixture
def run_copies(two_runs, tmp_path) -> tuple[Path, Path]:
    """Copies of the two runs the test may damage."""
    return tuple(Path(shutil.copytree(r, tmp_path / r.name)) for r in two_runs)


def _rewrite_json(file: Path, change) -> None:
    data = json.loads(file.read_text())
    change(data)
    file.write_text(json.dumps(data))


def _rewrite_layers(run: Path, change) -> None:
    """Apply ``change(header, rows)`` to layers.csv (rows as dicts of strings) and write it back."""
    with open(run / "layers.csv", newline="") as f:
        reader = csv.DictReader(f)
        header, rows = list(reader.fieldnames), list(reader)
    header, rows = change(header, rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=header, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    (run / "layers.csv").write_text(buf.getvalue())


def _set_first_layer(value: str):
    def change(header, rows):
        rows[0]["layer"] = value
        return header, rows

    return change


def _all_nan(header, rows):
    for r in rows:
        r["value"] = r["ci_low"] = r["ci_high"] = ""
    return header, rows


def _set_first_value(header, rows):
    rows[0]["value"] = "abc"
    return header, rows


def _drop_column(name: str):
    return lambda header, rows: ([c for c in header if c != name], rows)


def _no_rows(header, rows):
    return header, []


def _del_depth(run):
    del run["model"]["depth"]


def _fits_not_object(phases):
    phases["fits"] = [1, 2]


COMPARE_CASES = [
    pytest.param(lambda r: (r / "run.json").write_text("{garbage"), ["run.json", "not valid JSON"],
                 id="run-json-corrupt"),
    pytest.param(lambda r: (r / "run.json").write_text((r / "run.json").read_text()[:300]),
                 ["run.json", "truncated"], id="run-json-truncated"),
    pytest.param(lambda r: (r / "run.json").write_text(""), ["run.json", "empty"], id="run-json-empty"),
    pytest.param(lambda r: _rewrite_json(r / "run.json", _del_depth), ["run.json", "model.depth"],
                 id="run-json-no-depth"),
    pytest.param(lambda r: _rewrite_layers(r, _drop_column("value")), ["layers.csv", "column value"],
                 id="layers-missing-column"),
    pytest.param(lambda r: _rewrite_layers(r, _set_first_layer("x")), ["layers.csv", "layer 'x'"],
                 id="layers-bad-layer"),
    pytest.param(lambda r: _rewrite_layers(r, _set_first_layer("99")), ["layers.csv", "layer '99'", "depth-12"],
                 id="layers-layer-beyond-depth"),
    pytest.param(lambda r: _rewrite_layers(r, _set_first_value), ["layers.csv", "'abc' is not a number"],
                 id="layers-bad-number"),
    pytest.param(lambda r: (r / "layers.csv").write_text(""), ["layers.csv", "empty"], id="layers-empty"),
    pytest.param(lambda r: _rewrite_layers(r, _no_rows), ["layers.csv", "no result rows"], id="layers-header-only"),
]


PHASES_CASES = [
    pytest.param(lambda r: (r / "phases.json").write_text("[1, 2"), ["phases.json", "not valid JSON"],
                 id="phases-corrupt"),
    pytest.param(lambda r: _rewrite_json(r / "phases.json", _fits_not_object), ["phases.json", "fits"],
                 id="phases-wrong-shape"),
    # an all-NaN layers.csv next to the phases.json of the original results: not to be reported from
    pytest.param(lambda r: _rewrite_layers(r, _all_nan), ["phases.json", "another layers.csv"],
                 id="phases-stale-all-nan"),
]


@pytest.mark.parametrize(("damage", "names"), COMPARE_CASES + PHASES_CASES)
def test_compare_bad_run_is_one_line(damage, names, run_copies, tmp_path, capfd):
    a, b = run_copies
    damage(a)
    out = tmp_path / "cmp"
    code, _, stderr = _cli(["compare", str(a), str(b), "--out", str(out), "--quiet"], capfd)
    line = _assert_one_line_error(code, stderr, [str(a / names[0]), *names[1:]])
    assert "re-run vitdepth analyze" in line
    assert not out.exists()


def test_compare_refits_legacy_phases_instead_of_trusting_them(run_copies, tmp_path, capfd):
    """A phases.json without layers_sha256 (older vitdepth) is refitted from the (all-NaN) layers.csv."""
    a, b = run_copies
    _rewrite_json(a / "phases.json", lambda p: p.pop("layers_sha256"))
    _rewrite_layers(a, _all_nan)
    out = tmp_path / "cmp"
    code, _, stderr = _cli(["compare", str(a), str(b), "--out", str(out), "--quiet"], capfd)
    assert code == 0, stderr
    model_a = json.loads((out / "compare.json").read_text())["models"][0]
    assert model_a["saturation_layer"] is None and model_a["tradeoff_onset_layer"] is None
    assert model_a["phases"] == {}


# --- load_phases itself ------------------------------------------------------------------------------------------


def test_load_phases_checks_the_layers_hash(run_copies):
    a, _ = run_copies
    res = load_run(a)
    assert res.layers_sha256 == hashlib.sha256((a / "layers.csv").read_bytes()).hexdigest()
    phases = load_phases(res)
    assert phases is not None and phases["layers_sha256"] == res.layers_sha256 and phases["saturation"]

    _rewrite_layers(a, _all_nan)  # stale: fitted to other results
    with pytest.raises(VitdepthError, match=r"phases\.json was fitted to another layers\.csv"):
        load_phases(load_run(a))

    _rewrite_json(a / "phases.json", lambda p: p.pop("layers_sha256"))  # legacy: cannot be checked
    assert load_phases(load_run(a)) is None

    (a / "phases.json").write_text("{")
    with pytest.raises(VitdepthError, match=r"phases\.json is not valid JSON"):
        load_phases(load_run(a))

    (a / "phases.json").unlink()
    assert load_phases(load_run(a)) is None


def test_build_phases_on_all_nan_results_has_no_saturation(run_copies):
    from vitdepth.summaries import build_phases

    a, _ = run_copies
    _rewrite_layers(a, _all_nan)
    phases = build_phases(a, n_boot=5)
    assert phases["saturation"] == {} and "tradeoff_onset" not in phases and phases["fits"] == {}
    assert load_phases(load_run(a)) == json.loads((a / "phases.json").read_text())
