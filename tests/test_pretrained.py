"""Pretrained weights through the libraries' own paths, offline, from caches the tests write (issue 11 item 1).

A temporary Hugging Face cache is filled in the layout huggingface_hub reads
(``hub/models--ORG--NAME/snapshots/<commit>/FILE`` and ``refs/main``) with tiny random-init models: timm's
registered ``test_vit*.r160_in1k`` weights and a tiny transformers ViT under ``vitdepth-test/tiny-vit``. The
loads run with ``HF_HUB_OFFLINE=1``: in-process with huggingface_hub's constants pointed at the cache, and
through the real CLI in subprocesses with ``HF_HOME`` set, as a user would run it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vitdepth import VitdepthError
from vitdepth.models import create_model
from vitdepth.models.checkpoint import file_sha256

transformers = pytest.importorskip("transformers")

TIMM_NAME = "test_vit.r160_in1k"
TIMM_REPO = "timm/test_vit.r160_in1k"
HF_REPO = "vitdepth-test/tiny-vit"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class _RunsCode:
    """Pickles to ``os.system(command)``: unpickling it with plain pickle would run the command."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _snapshot(home: Path, repo: str, commit: str = COMMIT) -> Path:
    """The snapshot directory of ``repo`` at ``commit`` in the cache under ``home``, with ``refs/main``."""
    root = home / "hub" / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    return snap


def _timm_model(name: str, seed: int = 1):
    import timm

    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False).eval()


@pytest.fixture(scope="module")
def hub_home(tmp_path_factory) -> Path:
    """An HF_HOME whose hub cache holds the tiny timm and transformers models (and what they were saved from)."""
    from safetensors.torch import save_file

    home = tmp_path_factory.mktemp("hf_home")
    timm_model = _timm_model(TIMM_NAME)
    save_file({k: v.contiguous() for k, v in timm_model.state_dict().items()},
              str(_snapshot(home, TIMM_REPO) / "model.safetensors"))
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                    image_size=32, patch_size=8, num_labels=10)
    hf_model = transformers.ViTForImageClassification(config).eval()
    snap = _snapshot(home, HF_REPO)
    hf_model.save_pretrained(snap)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(snap)
    torch.save(hf_model.state_dict(), home / "hf_ref.pt")  # the weights saved, to compare the loaded model with
    return home


@pytest.fixture
def offline(monkeypatch, hub_home):
    """huggingface_hub (and through it timm and transformers) reading only the test cache, offline."""
    from huggingface_hub import constants

    for key, value in (("HF_HOME", hub_home), ("HF_HUB_CACHE", hub_home / "hub"), ("HF_HUB_OFFLINE", "1")):
        monkeypatch.setenv(key, str(value))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hub_home


def _cli_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    return {**env, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}


def _vitdepth(args: list[str], home: Path) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("vitdepth")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "vitdepth"]
    return subprocess.Popen([*cmd, *args], env=_cli_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _one_line_error(proc: subprocess.Popen) -> str:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vitdepth: error: "), err
    return lines[0]


# --- timm: ---------------------------------------------------------------------------------------------------------


def test_timm_pretrained_loads_from_the_cache_offline(offline):
    tm = create_model(f"timm:{TIMM_NAME}")
    ref = _timm_model(TIMM_NAME)
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(tm.output(x), ref(x))
    weights = tm.identity["weights"]
    file = offline / "hub" / "models--timm--test_vit.r160_in1k" / "snapshots" / COMMIT / "model.safetensors"
    assert weights == {"source": "timm-pretrained", "hub_id": TIMM_REPO, "tag": "r160_in1k", "commit": COMMIT,
                       "file": str(file), "sha256": file_sha256(file)}
    # --image-size: timm resamples the pretrained position embeddings itself
    tm = create_model(f"timm:{TIMM_NAME}", image_size=64)
    assert tm.sites.grid == (4, 4) and tm.identity["image_size"] == 64
    assert tm.identity["weights"]["source"] == "timm-pretrained"
    # --random-init and --checkpoint keep their meaning
    assert create_model(f"timm:{TIMM_NAME}", random_init=True).identity["weights"]["source"] == "random-init"


def test_timm_pickle_only_repository_is_loaded_safely(offline, tmp_path):
    """A repository with only pytorch_model.bin is loaded with weights_only=True; a code-running pickle never runs."""
    ref = _timm_model("test_vit2.r160_in1k", seed=2)
    torch.save(ref.state_dict(), _snapshot(offline, "timm/test_vit2.r160_in1k") / "pytorch_model.bin")
    tm = create_model("timm:test_vit2.r160_in1k")
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(tm.output(x), ref(x))
    assert tm.identity["weights"]["file"].endswith(f"{COMMIT}/pytorch_model.bin")
    assert tm.model.pretrained_cfg.get("state_dict") is None  # no second copy of the weights kept
    marker = tmp_path / "payload-ran"
    evil = {"cls_token": _RunsCode(f"touch {marker}")}
    torch.save(evil, _snapshot(offline, "timm/test_vit3.r160_in1k") / "pytorch_model.bin")
    with pytest.raises(VitdepthError, match="refused without running it") as err:
        create_model("timm:test_vit3.r160_in1k")
    assert "hf download timm/test_vit3.r160_in1k" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists(), "the pickle's payload ran"


def test_timm_tags_and_models_without_weights_are_one_line(offline):
    with pytest.raises(VitdepthError, match="no pretrained weights tagged 'nope'.*augreg_in21k"):
        create_model("timm:vit_tiny_patch16_224.nope")
    with pytest.raises(VitdepthError, match="has no pretrained weights in timm.*--random-init"):
        create_model("timm:vit_small_patch16_18x2_224")


@pytest.mark.parametrize("spec, fetch, extra", [
    ("timm:test_vit2.r160_in1k", "`hf download timm/test_vit2.r160_in1k model.safetensors`", "--random-init"),
    ("hf:google/vit-base-patch16-224", "`hf download google/vit-base-patch16-224`", None),
])
def test_offline_miss_is_one_line(offline, tmp_path, monkeypatch, spec, fetch, extra):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(VitdepthError) as err:
        create_model(spec)
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "empty") in msg and "HF_HUB_OFFLINE" in msg
    assert fetch in msg and (extra is None or extra in msg)


# --- hf: -----------------------------------------------------------------------------------------------------------


def test_hf_hub_id_loads_from_the_cache_offline(offline):
    tm = create_model(f"hf:{HF_REPO}")
    ref = transformers.ViTForImageClassification(transformers.ViTConfig.from_pretrained(
        _snapshot(offline, HF_REPO))).eval()
    ref.load_state_dict(torch.load(offline / "hf_ref.pt", weights_only=True))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(tm.output(x), ref(pixel_values=x).logits)
    snap = _snapshot(offline, HF_REPO)
    assert tm.identity["weights"] == {
        "source": "hf-hub", "id": HF_REPO, "commit": COMMIT,
        "files": {name: file_sha256(snap / name)
                  for name in ("config.json", "preprocessor_config.json", "model.safetensors")}}
    assert tm.transform is not None and tm.transform.to_dict()["kind"] == "hf_image_processor"
    # --image-size keeps the processor's statistics (read from the snapshot); --random-init needs only the config
    tm = create_model(f"hf:{HF_REPO}", image_size=48)
    assert tm.preprocess.input_size == (48, 48) and tm.preprocess.mean == (0.5, 0.5, 0.5) and tm.transform is None
    assert create_model(f"hf:{HF_REPO}", random_init=True).identity["weights"] == {"source": "random-init", "seed": 0}
    # a local directory keeps its own record
    assert create_model(f"hf:{snap}").identity["weights"]["source"] == "hf-directory"


def test_hf_targets_that_are_neither_directory_nor_hub_id(offline, tmp_path):
    for target in (str(tmp_path / "no" / "such" / "dir"), "not a model", "a/b/c"):
        with pytest.raises(VitdepthError, match="neither an existing directory nor a Hugging Face hub id"):
            create_model(f"hf:{target}")


# --- torchvision: torch hub's cache -------------------------------------------------------------------------------


def test_torch_hub_weights_are_loaded_weights_only(tmp_path, monkeypatch, capfd):
    from vitdepth.models.adapters.torchvision_vit import torch_hub_weights

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    url = "https://example.invalid/weights/tiny-0123abcd.pth"  # .invalid never resolves: a failed download
    with pytest.raises(VitdepthError, match="needs weights and nothing is downloaded") as err:
        torch_hub_weights(url, "torchvision:tiny")
    assert capfd.readouterr() == ("", "")  # torch hub's 'Downloading: ...' notice is not printed
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "hub" / "checkpoints") in msg and "--random-init" in msg
    assert f"curl -L --create-dirs -o {tmp_path / 'hub' / 'checkpoints' / 'tiny-0123abcd.pth'} {url}" in msg
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True, exist_ok=True)
    sd = {"w": torch.arange(3.0)}
    torch.save(sd, tmp_path / "hub" / "checkpoints" / "tiny-0123abcd.pth")
    got, path = torch_hub_weights(url, "torchvision:tiny")
    torch.testing.assert_close(got, sd)
    assert path == str(tmp_path / "hub" / "checkpoints" / "tiny-0123abcd.pth")
    marker = tmp_path / "payload-ran"
    torch.save({"w": _RunsCode(f"touch {marker}")}, path)
    with pytest.raises(VitdepthError, match="refused without running it"):
        torch_hub_weights(url, "torchvision:tiny")
    assert not marker.exists(), "the pickle's payload ran"


# --- the real CLI, offline, in subprocesses (HF_HOME and HF_HUB_OFFLINE=1 in the environment) ---------------------


def test_cli_offline_runs_record_the_weights_and_misses_are_one_line(hub_home, tmp_path):
    empty = tmp_path / "empty_home"
    empty.mkdir()
    common = ["--data", "digits", "--samples", "60", "--metrics", "core", "--quiet"]
    runs = {spec: _vitdepth(["analyze", spec, *common, "--out", str(tmp_path / spec.split(":")[0])], hub_home)
            for spec in (f"timm:{TIMM_NAME}", f"hf:{HF_REPO}")}
    misses = {spec: _vitdepth(["analyze", spec, *common, "--out", str(tmp_path / "miss")], empty)
              for spec in (f"timm:{TIMM_NAME}", f"hf:{HF_REPO}")}
    for spec, proc in runs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, (spec, err)
    timm_w = json.loads((tmp_path / "timm" / "run.json").read_text())["model"]["weights"]
    file = hub_home / "hub" / "models--timm--test_vit.r160_in1k" / "snapshots" / COMMIT / "model.safetensors"
    assert timm_w == {"source": "timm-pretrained", "hub_id": TIMM_REPO, "tag": "r160_in1k", "commit": COMMIT,
                      "file": str(file), "sha256": file_sha256(file)}
    hf_w = json.loads((tmp_path / "hf" / "run.json").read_text())["model"]["weights"]
    snap = _snapshot(hub_home, HF_REPO)
    assert hf_w["source"] == "hf-hub" and hf_w["id"] == HF_REPO and hf_w["commit"] == COMMIT
    assert hf_w["files"]["model.safetensors"] == file_sha256(snap / "model.safetensors")
    timm_line = _one_line_error(misses[f"timm:{TIMM_NAME}"])
    assert str(empty / "hub") in timm_line and f"`hf download {TIMM_REPO} model.safetensors`" in timm_line
    assert "--checkpoint" in timm_line and "--random-init" in timm_line and "HF_HUB_OFFLINE" in timm_line
    hf_line = _one_line_error(misses[f"hf:{HF_REPO}"])
    assert str(empty / "hub") in hf_line and f"`hf download {HF_REPO}`" in hf_line
    assert not (tmp_path / "miss").exists()
