"""The ``vitdepth`` command: a thin caller of the public API."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from . import __version__
from ._errors import Interrupted, Terminated, VitdepthError


def _int_in(name: str, low: int, high: int | None = None):
    """An argparse type: an integer in [low, high], with a one-line error naming the flag."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"{name} must be {bound}, got {value}")
        return value

    return parse


def _float_at_least(name: str, low: float):
    """An argparse type: a number >= low, with a one-line error naming the flag."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not value >= low:
            raise argparse.ArgumentTypeError(f"{name} must be >= {low:g}, got {text}")
        return value

    return parse


SEED = _int_in("--seed", 0, 2**32 - 1)


def _on_sigterm(_signum, _frame) -> None:
    raise Terminated


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown in --help (where there is one worth showing), epilogs printed as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help or ""
        return super()._get_help_string(action)


EPILOGS = {
    "analyze": """examples:
  vitdepth analyze timm:vit_small_patch16_224.augreg_in21k_ft_in1k --data folder:/data/imagenet:split=val \
      --samples 5000 --out runs/S
  vitdepth analyze hf:google/vit-base-patch16-224 --data hf-dataset:cifar10:split=test --device cuda \
      --dtype bf16 --out runs/B
  torchrun --nproc-per-node 4 -m vitdepth analyze ... --device cuda --out runs/L
  vitdepth analyze ... --out runs/L --resume          # continue an interrupted run""",
    "train": """examples:
  vitdepth train --recipe digits --out runs/family
  torchrun --nproc-per-node 8 -m vitdepth train --recipe imagenet-deit --sizes S,B --device cuda --out runs/deit""",
    "compare": """examples:
  vitdepth compare runs/S runs/B runs/L --out runs/SBL""",
    "demo": """examples:
  vitdepth demo                 # writes ./vitdepth-demo (about half a minute on 2 CPU cores)""",
    "models": """examples:
  vitdepth models""",
    "metrics": """examples:
  vitdepth metrics              # every metric id with its one-line meaning
  vitdepth metrics isi_rec      # formula, reading, cost and source of one metric""",
}


def _subparser(sub, name: str, help: str) -> argparse.ArgumentParser:  # noqa: A002 - argparse's own keyword
    return sub.add_parser(name, help=help, description=help[:1].upper() + help[1:] + ".", epilog=EPILOGS.get(name),
                          formatter_class=_Formatter, allow_abbrev=False)


# Commands whose module (vitdepth.<command>, with its add_parser) loads only when they run: numpy, the tracker and
# alignment code. For any other command the parser carries just their one-line help, which must equal the one their
# add_parser gives (tests/test_startup.py).
_LAZY_COMMANDS = {
    "export": "log a finished run to Weights & Biases, MLflow or TensorBoard",
    "align": "align the layers of two runs by debiased linear CKA (which layer of B matches layer ℓ of A)",
    "reproduce": "reproduce a paper's results in one command (target: paper = arXiv 2511.21635)",
}


def _command_in(argv: list[str]) -> str:
    """The command word of a command line ("" when there is none): the first argument that is not an option."""
    return next((a for a in argv if not a.startswith("-")), "")


def _build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``vitdepth`` parser.

    Args:
        only: the command about to run. The lazily loaded commands (:data:`_LAZY_COMMANDS`) other than this one
            get a stub with their help line only (enough for ``vitdepth --help`` and a bad command), so their
            modules are not imported; None builds every command in full.
    """
    p = argparse.ArgumentParser(prog="vitdepth", description="Layer-by-layer depth diagnostics for vision "
                                "transformers (arXiv 2511.21635).", formatter_class=_Formatter, allow_abbrev=False,
                                epilog="run `vitdepth COMMAND --help` for a command's options and examples")
    p.add_argument("--version", action="version", version=f"vitdepth {__version__}")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an unexpected error")
    sub = p.add_subparsers(dest="command", required=True)

    a = _subparser(sub, "analyze", "one streaming pass: per-layer metrics, probes, run directory")
    a.add_argument("model", help="model spec, e.g. timm:vit_small_patch16_224, hf:DIR, torchvision:vit_b_16, "
                                 "file:DIR (see `vitdepth models` and docs/models.md)")
    a.add_argument("--data", default="digits", help="data spec: digits, synthetic[:n=..,classes=..,size=..], "
                                                    "folder:PATH[:split=val], hf-dataset:PATH_OR_ID[:split=..], "
                                                    "wds:SHARDS, csv:FILE (see `vitdepth models`)")
    a.add_argument("--out", required=True, help="run directory to write")
    a.add_argument("--samples", type=_int_in("--samples", 1), default=None,
                   help="analyze a stratified subset of N images")
    a.add_argument("--batch-size", type=_int_in("--batch-size", 1), default=32,
                   help="images per forward (halved automatically when the device runs out of memory)")
    a.add_argument("--device", default="cpu", help="cpu or cuda[:N] (under torchrun, cuda means one GPU per process)")
    a.add_argument("--seed", type=SEED, default=0, help="seed of the subset, the splits, projections and bootstrap")
    a.add_argument("--checkpoint", default=None, help="weights for timm: models (safetensors or state dict)")
    a.add_argument("--random-init", action="store_true", help="build the model untrained (recorded in run.json)")
    a.add_argument("--metrics", default=None, help="metric groups (core, paper, all) and/or ids, comma-separated "
                                                   "(default: all the model supports but the logistic probe; see "
                                                   "docs/metrics.md)")
    a.add_argument("--probe", choices=("ridge", "logistic"), default=None,
                   help="logistic adds the softmax-regression probe (included in --metrics all; the ridge probe is "
                        "always on)")
    a.add_argument("--interventions", choices=("cls",), action="append", default=None,
                   help="causal tests: cls = [CLS] swap with a patch-token control and [CLS] attention knock-out at "
                        "every layer (about 3 extra forwards per layer; see `vitdepth metrics cls_swap_acc`)")
    a.add_argument("--intervention-samples", type=_int_in("--intervention-samples", 1), default=None,
                   metavar="N", help="run the --interventions on a stratified subset of N of the analyzed images "
                                     "(default: all)")
    a.add_argument("--cka-samples", type=_int_in("--cka-samples", 0), default=512, metavar="N",
                   help="images of the layer x layer CKA within the model (cka_self.json; 0: skip it)")
    a.add_argument("--name", default=None, help="model name shown in tables and figures")
    a.add_argument("--figure-format", default="png", metavar="FORMATS",
                   help="figure files: png, pdf, svg, comma-separated (the report embeds the PNG)")
    a.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    a.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    a.add_argument("--strict", action="store_true", help="fail on an unreadable image instead of skipping it")
    a.add_argument("--num-workers", type=_int_in("--num-workers", 0), default=None,
                   help="DataLoader workers decoding images (default: CPU count - 1, at most 8, for file-backed data; "
                        "0 for digits / synthetic)")
    a.add_argument("--no-draft-decode", action="store_true",
                   help="decode every JPEG in full (by default one at least twice the model's resize size is decoded "
                        "reduced in PIL's draft mode; see the README)")
    a.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="autocast the model's forward in this dtype (the taps are read as float32)")
    a.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its checkpoint (same options as the interrupted command)")
    a.add_argument("--checkpoint-every", type=_float_at_least("--checkpoint-every", 0.0), default=300.0,
                   metavar="SECONDS", help="save the pass every SECONDS of work, so an interrupted run can resume "
                   "(0: after every batch)")
    a.add_argument("--no-self-check", action="store_true",
                   help="skip comparing the taps with the model's own attention and hidden states on the first "
                        "images (on by default: attention that does not match is not reported)")
    a.add_argument("--image-size", type=int, default=None,
                   help="run the model at this input size (timm: position embeddings resampled; Hugging Face: "
                        "interpolate_pos_encoding); recorded in run.json")
    a.add_argument("--preprocess", action="append", default=None, metavar="KEY=VALUE",
                   help="override the model's preprocessing: mean=R,G,B std=R,G,B interpolation=bicubic|bilinear|"
                        "nearest crop_pct=F crop_mode=center|squash|border (repeatable); recorded in run.json")

    t = _subparser(sub, "train", "train the sizes of a ViT family with one recipe (resumable, torchrun-ready)")
    t.add_argument("--recipe", required=True, help="shipped recipe name (digits, synthetic, imagenet-deit) or a "
                                                   "JSON path")
    t.add_argument("--sizes", default=None, help="comma-separated sizes, e.g. S,B,L (default: all of the recipe)")
    t.add_argument("--data", default=None, help="data spec overriding the recipe's")
    t.add_argument("--out", required=True, help="output directory; one checkpoint directory per size")
    t.add_argument("--epochs", type=_int_in("--epochs", 1), default=None)
    t.add_argument("--batch-size", type=_int_in("--batch-size", 1), default=None,
                   help="global batch size (split across processes)")
    t.add_argument("--seed", type=SEED, default=None)
    t.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    t.add_argument("--samples", type=_int_in("--samples", 1), default=None,
                   help="train on a stratified subset of N images")
    t.add_argument("--max-steps", type=_int_in("--max-steps", 1), default=None,
                   help="stop each size after N optimiser steps (smoke runs)")
    t.add_argument("--num-workers", type=_int_in("--num-workers", 0), default=0, help="DataLoader workers")
    t.add_argument("--resume", action="store_true", help="continue from the last epoch checkpoint of each size")
    t.add_argument("--overwrite", action="store_true", help="start again, replacing existing sizes")
    t.add_argument("--no-monitor", action="store_true", help="do not run the ISI monitor")
    t.add_argument("--quiet", action="store_true", help="no progress and no summary")

    c = _subparser(sub, "compare", "compare run directories (e.g. the sizes of a family); no model needed")
    c.add_argument("runs", nargs="+", help="run directories, in order (e.g. S B L)")
    c.add_argument("--out", required=True, help="comparison directory to write")
    c.add_argument("--allow-mixed-data", action="store_true", help="compare runs made on different data")
    c.add_argument("--align", action="store_true", help="also align consecutive runs layer by layer (CKA heat maps)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing comparison directory")
    c.add_argument("--figure-format", default="png", metavar="FORMATS",
                   help="figure files: png, pdf, svg, comma-separated (the report embeds the PNG)")
    c.add_argument("--quiet", action="store_true", help="no summary")

    d = _subparser(sub, "demo", "analyze the shipped digits S/B/L family, compare, write reports")
    d.add_argument("--out", default="vitdepth-demo", help="output directory")
    d.add_argument("--quiet", action="store_true", help="no progress and no summary")

    _subparser(sub, "models", "list model adapters and data sources with example specs")
    m = _subparser(sub, "metrics", "list the metric ids with their meaning, or describe one")
    m.add_argument("metric", nargs="?", default=None, help="a metric id (e.g. isi_rec) to describe in full")
    from importlib import import_module

    for name, help_line in _LAZY_COMMANDS.items():
        if only is None or only == name:
            import_module(f".{name}", __package__).add_parser(sub)
        else:
            sub.add_parser(name, help=help_line, add_help=False)
    return p


def _check_analyze_args(args) -> None:
    """Refuse a bad flag value or spec kind before the analysis (torch, timm, the sources) loads.

    The messages are those of ``analyze()`` and the registries, which check the same again (tests/test_startup.py
    keeps them equal); what needs a library or the disk (a model name, a path, CUDA) is left to them. Spec errors
    now come before those of ``--out`` and ``--device`` availability, which ``analyze()`` checks first.
    """
    from .report.figures import parse_formats  # numpy only; matplotlib loads when a figure is drawn
    from .specs import data_spec_error, device_form_error, image_size_error, model_spec_error

    parse_formats(args.figure_format)
    for error in (image_size_error(args.image_size), device_form_error(args.device)):
        if error is not None:
            raise VitdepthError(error)
    # Once loaded (a library caller, the tests) the registries answer themselves: they may hold more than the
    # built-in kinds.
    error = None if "vitdepth.data.sources" in sys.modules else data_spec_error(args.data)
    if error is None and "vitdepth.models.registry" not in sys.modules:
        error = model_spec_error(args.model)
    if error is not None:
        raise VitdepthError(error)


def _cmd_analyze(args) -> int:
    _check_analyze_args(args)
    from .analysis.run import AnalyzeConfig, analyze, summarize

    cfg = AnalyzeConfig(model=args.model, data=args.data, out=args.out, samples=args.samples,
                        batch_size=args.batch_size, device=args.device, seed=args.seed, checkpoint=args.checkpoint,
                        random_init=args.random_init, quiet=args.quiet, overwrite=args.overwrite,
                        strict=args.strict, name=args.name, metrics=args.metrics, probe=args.probe,
                        self_check=not args.no_self_check, image_size=args.image_size, num_workers=args.num_workers,
                        draft_decode=not args.no_draft_decode,
                        preprocess=tuple(args.preprocess or ()), dtype=args.dtype, resume=args.resume,
                        checkpoint_every=args.checkpoint_every, command_line=("vitdepth", *args.argv),
                        interventions=tuple(args.interventions or ()),
                        intervention_samples=args.intervention_samples, cka_samples=args.cka_samples,
                        figure_formats=args.figure_format)
    out = analyze(cfg)
    if not args.quiet and out is not None and (Path(out) / "run.json").is_file():  # torchrun: rank 0 prints
        from .report.summary import phase_summary

        print(summarize(out))
        print(phase_summary(out))
        print(f"run directory: {out}")
    return 0


def _cmd_metrics(args) -> int:
    from .metrics import METRICS

    if args.metric is None:
        width = max(len(m) for m in METRICS)
        for mid, info in METRICS.items():
            print(f"{mid:<{width}}  {info.family:<11} {_first_sentence(info.reading)}")
        print("groups for --metrics: core, paper, all; `vitdepth metrics ID` describes one in full")
        return 0
    if args.metric not in METRICS:
        import difflib

        close = difflib.get_close_matches(args.metric, list(METRICS), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise VitdepthError(f"unknown metric {args.metric!r}{hint}; `vitdepth metrics` lists them")
    info = METRICS[args.metric]
    print(f"{info.id} ({info.family}; {info.kind}; layers: {info.layers}"
          f"{'; token sets: ' + ', '.join(info.token_sets) if info.token_sets else ''})")
    for label, text in (("formula", info.formula), ("reading", info.reading), ("cost", info.cost),
                        ("source", info.source), ("groups", ", ".join(info.groups))):
        print(f"  {label}: {text}")
    return 0


def _first_sentence(text: str) -> str:
    first = text.split(". ")[0].rstrip(".")
    return first if len(first) <= 90 else first[:87] + "..."


def _cmd_train(args) -> int:
    from .train.loop import TrainConfig, train

    cfg = TrainConfig(recipe=args.recipe, out=args.out, sizes=args.sizes.split(",") if args.sizes else None,
                      data=args.data, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                      device=args.device, samples=args.samples, resume=args.resume, overwrite=args.overwrite,
                      quiet=args.quiet, monitor=not args.no_monitor, max_steps=args.max_steps,
                      num_workers=args.num_workers)
    try:
        results = train(cfg)
    except (KeyboardInterrupt, Terminated) as e:
        what = "interrupted" if isinstance(e, KeyboardInterrupt) else "terminated (SIGTERM)"
        print(f"vitdepth: {what}; the last completed epoch is kept: continue with: vitdepth train ... --out "
              f"{args.out} --resume", file=sys.stderr)
        return 130 if isinstance(e, KeyboardInterrupt) else 143
    if not args.quiet:
        import json

        for size, path in results.items():
            acc = json.loads((path / "config.json").read_text()).get("test_acc")
            print(f"{size}: test_acc {acc:.4f}  {path}")
    return 0


def _cmd_compare(args) -> int:
    from .compare import compare_runs, compare_summary
    from .report.figures import parse_formats

    out = compare_runs(args.runs, args.out, allow_mixed_data=args.allow_mixed_data, overwrite=args.overwrite,
                       align=args.align, figure_formats=parse_formats(args.figure_format))
    if not args.quiet:
        print(compare_summary(out))
        print(f"comparison report: {out / 'report.html'}")
    return 0


def _cmd_demo(args) -> int:
    from .compare import compare_summary
    from .demo import run_demo
    from .report.summary import phase_summary

    res = run_demo(args.out, quiet=args.quiet)
    if not args.quiet:
        for run in res["runs"]:
            print(phase_summary(run))
        print(compare_summary(res["compare"]))
        print(f"reports: {', '.join(str(r / 'report.html') for r in res['runs'])}")
        print(f"comparison report: {res['compare'] / 'report.html'}")
        print(f"demo finished in {res['seconds']:.1f}s")
    return 0


def _cmd_models(_args) -> int:
    # The static descriptions (no torch, timm or image libraries); tests/test_startup.py keeps them equal to
    # list_adapters() and list_sources().
    from .specs import DATA_SPECS, MODEL_SPECS

    print("model specs:")
    for form in MODEL_SPECS:
        print(f"  {form.example:<34} {form.description}")
    print("data specs:")
    for form in DATA_SPECS:
        print(f"  {form.example:<34} {form.description}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code.

    Known problems end in one line (``vitdepth: error: ...``, exit 2); Ctrl-C and SIGTERM clean up and exit 130 /
    143; anything unexpected ends in one line with its type and message (exit 1) unless ``--debug`` asks for the
    traceback.
    """
    words = list(sys.argv[1:] if argv is None else argv)
    completing = "_ARGCOMPLETE" in os.environ  # argcomplete completes against the whole parser
    parser = _build_parser(None if completing else _command_in(words))
    try:  # shell completion when argcomplete is installed (see the README)
        import argcomplete

        argcomplete.autocomplete(parser)
    except ImportError:
        pass
    args = parser.parse_args(argv)
    args.argv = words  # for the resume command an interrupted run prints
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        handlers = {"analyze": _cmd_analyze, "train": _cmd_train, "compare": _cmd_compare, "demo": _cmd_demo,
                    "models": _cmd_models, "metrics": _cmd_metrics}
        return (getattr(args, "handler", None) or handlers[args.command])(args)
    except BrokenPipeError:  # `vitdepth metrics | head`: the reader left; nothing to report
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - interpreter exit flushes stdout once more
        return 0
    except Interrupted as e:  # stopped on request, with a checkpoint: the message is the resume line
        print(f"vitdepth: {e}", file=sys.stderr)
        return e.exit_code
    except VitdepthError as e:
        print(f"vitdepth: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("vitdepth: interrupted; nothing was written (partial output removed)", file=sys.stderr)
        return 130
    except Terminated:
        print("vitdepth: terminated (SIGTERM); nothing was written (partial output removed)", file=sys.stderr)
        return 143
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, the traceback on request
        if args.debug:
            raise
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        print(f"vitdepth: error: unexpected {type(e).__name__}: {first} (run again with --debug for the "
              "traceback, and please report it)", file=sys.stderr)
        return 1
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    raise SystemExit(main())
