"""The command line as a new user meets it (issue 13, items 2, 4 and 6): help, abbreviations, metrics, progress."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from vitdepth import cli

VITDEPTH = [sys.executable, "-m", "vitdepth"]


def test_help_shows_defaults_and_examples(capsys):
    with pytest.raises(SystemExit):
        cli.main(["analyze", "--help"])
    out = capsys.readouterr().out
    assert "(default: 32)" in out and "(default: fp32)" in out and "(default: None)" not in out
    assert "examples:" in out and "--resume" in out


@pytest.mark.parametrize("argv", [["analyze", "timm:x", "--out", "o", "--sample", "3"],
                                  ["analyze", "timm:x", "--out", "o", "--samples", "0"],
                                  ["--deb", "models"]])
def test_no_abbreviations_and_no_zero_samples(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments" in err or "--samples must be >= 1" in err


def test_metrics_lists_every_id_and_describes_one(capsys):
    from vitdepth.metrics import METRICS

    assert cli.main(["metrics"]) == 0
    out = capsys.readouterr().out
    assert all(any(line.startswith(m + " ") for line in out.splitlines()) for m in METRICS)
    assert cli.main(["metrics", "isi_rec"]) == 0
    out = capsys.readouterr().out
    assert "formula:" in out and METRICS["isi_rec"].formula in out
    assert cli.main(["metrics", "isi_rc"]) == 2
    assert "did you mean isi_rec" in capsys.readouterr().err


def test_progress_in_a_log_is_plain_lines_and_a_terminal_gets_a_bar():
    from vitdepth.analysis.progress import Progress, Stages

    log = io.StringIO()
    with Progress(10, "analyze", stream=log) as p:
        for _ in range(10):
            p.update(1)
    lines = log.getvalue().splitlines()
    assert lines and lines[-1].startswith("analyze: 10/10 img (100%)") and "\r" not in log.getvalue()

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    with Progress(10, "analyze", stream=tty) as p:
        p.update(10)
    assert "10/10" in tty.getvalue() and "\r" in tty.getvalue()
    quiet = io.StringIO()
    with Progress(10, "analyze", stream=quiet, quiet=True) as p:
        p.update(10)
    stages = Stages(stream=quiet, quiet=True)
    with stages("x_s", "x"):
        pass
    assert quiet.getvalue() == "" and stages.seconds["x_s"] >= 0
    logged = io.StringIO()
    with Stages(stream=logged)("probes_s", "ridge probes"):
        pass
    assert logged.getvalue().startswith("ridge probes ... ") and logged.getvalue().endswith("s\n")


def test_analyze_prints_the_phase_summary_and_progress_to_a_log(tiny_file_model, tmp_path):
    proc = subprocess.run([*VITDEPTH, "analyze", f"file:{tiny_file_model}", "--data", "digits", "--samples", "120",
                           "--metrics", "core", "--out", str(tmp_path / "r")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    from vitdepth.report.summary import phase_summary

    assert phase_summary(tmp_path / "r").strip() in proc.stdout
    assert "analyze: 120/120 img (100%)" in proc.stderr  # not a TTY: plain lines
    assert "ridge probes ... " in proc.stderr and "\r" not in proc.stderr


def test_figure_formats_png_by_default_and_unknown_ones_refused(tmp_path, capsys):
    from vitdepth.report.figures import parse_formats

    assert parse_formats("png") == ("png",) and parse_formats("pdf") == ("png", "pdf")  # the report embeds PNG
    assert parse_formats(" PDF , svg,pdf") == ("png", "pdf", "svg")
    out = tmp_path / "run"
    assert cli.main(["analyze", "timm:vit_tiny_patch16_224", "--out", str(out), "--figure-format", "png,gif"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--figure-format 'gif' is not known" in err[0]
    assert not out.exists()
