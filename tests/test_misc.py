"""Small pieces: progress line, Hugging Face preprocessing, results round trip."""

from __future__ import annotations

import io
import json

import pytest

from vitdepth.analysis.progress import Progress, Stages


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_shows_rate_and_eta_on_a_terminal_and_lines_elsewhere():
    tty = _Tty()
    with Progress(10, "analyze", stream=tty) as p:
        p.update(10)
    text = tty.getvalue()
    assert "10/10" in text and "img/s" in text and text.endswith("\n")
    pipe = io.StringIO()  # not a terminal: plain lines (a log, CI)
    with Progress(10, "analyze", stream=pipe) as p:
        p.update(10)
    assert pipe.getvalue() == "analyze: 10/10 img (100%), " + pipe.getvalue().split("(100%), ")[1]
    assert "ETA" in pipe.getvalue() and "\r" not in pipe.getvalue()
    quiet = _Tty()
    with Progress(10, "analyze", stream=quiet, quiet=True) as p:
        p.update(10)
    assert quiet.getvalue() == ""


def test_stages_print_each_step_and_always_time_it():
    tty = _Tty()
    stages = Stages(stream=tty)
    with stages("probes_s", "ridge probes"):
        pass
    with pytest.raises(RuntimeError), stages("figures_s", "figures"):
        raise RuntimeError("boom")
    lines = tty.getvalue().splitlines()
    assert [line.split(" ...")[0] for line in lines] == ["ridge probes", "figures"]
    assert all(line.endswith("s") for line in lines) and set(stages.seconds) == {"probes_s", "figures_s"}
    pipe = io.StringIO()
    quiet = Stages(stream=pipe, quiet=True)
    with quiet("probes_s", "ridge probes"):
        pass
    assert pipe.getvalue() == "" and quiet.seconds["probes_s"] >= 0


@pytest.mark.parametrize(
    "pp, expected",
    [
        ({"size": {"height": 64, "width": 48}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "resample": 2},
         {"input_size": [64, 48], "mean": [0.5] * 3, "interpolation": "bilinear", "crop_pct": 1.0}),
        ({"size": {"shortest_edge": 256}, "do_center_crop": True, "crop_size": {"height": 224, "width": 224},
          "resample": 3}, {"input_size": [224, 224], "interpolation": "bicubic", "crop_pct": 0.875}),
    ],
)
def test_hf_preprocessor_config_is_used(tmp_path, pp, expected):
    transformers = pytest.importorskip("transformers")
    from vitdepth.models.adapters.hf import hf_preprocess

    (tmp_path / "preprocessor_config.json").write_text(json.dumps(pp))
    got = hf_preprocess(tmp_path, transformers.ViTConfig(image_size=32)).to_dict()
    for k, v in expected.items():
        assert got[k] == pytest.approx(v), k


def test_hf_without_preprocessor_uses_config_image_size(tmp_path):
    transformers = pytest.importorskip("transformers")
    from vitdepth.models.adapters.hf import hf_preprocess

    got = hf_preprocess(tmp_path, transformers.ViTConfig(image_size=48))
    assert tuple(got.input_size) == (48, 48)
