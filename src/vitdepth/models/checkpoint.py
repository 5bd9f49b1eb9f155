"""Reading and writing weights without ever running a pickle.

State dicts load from safetensors or ``torch.load(weights_only=True)``; anything that needs
arbitrary code to unpickle is refused. vitdepth's own checkpoint format (``file:DIR``) is a
directory holding ``config.json`` (architecture arguments, preprocessing, provenance) and
``model.safetensors``.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from .._errors import VitdepthError

CHECKPOINT_FORMAT = "vitdepth-checkpoint"
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module", "model_ema")


def read_json_object(file: Path, fix: str) -> dict:
    """A JSON object from ``file``, or a one-line error naming the file and ``fix``."""
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise VitdepthError(f"{file} is not valid JSON ({e.msg}, line {e.lineno} column {e.colno}); {fix}") from None
    except UnicodeDecodeError:
        raise VitdepthError(f"{file} is not a text JSON file; {fix}") from None
    if not isinstance(value, dict):
        raise VitdepthError(f"{file} holds a JSON {type(value).__name__}, not an object; {fix}")
    return value


def file_sha256(path: str | Path, limit: int | None = None) -> str:
    """sha256 of a file (streamed)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_STATE_DICT_FIX = "save model.state_dict() with torch.save or use safetensors"


def _first_line(e: BaseException, limit: int = 160) -> str:
    text = str(e).strip()
    return " ".join(text.splitlines()[0].split())[:limit] if text else type(e).__name__


def _torch_load_reason(e: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in a few words (torch's text is a page long)."""
    text = str(e)
    hit = re.search(r"GLOBAL ([\w.]+)", text)
    if hit:
        return f"it would import and run {hit.group(1)} when unpickled"
    hit = re.search(r"Unsupported operand (\d+)", text)
    if hit:
        return f"unsupported pickle opcode {hit.group(1)}: not a torch.save file"
    if isinstance(e, EOFError):
        return "it ends too early: truncated"
    if isinstance(e, KeyError):
        return "not a torch.save file"
    noise = ("Weights only load failed", "Please file an issue", "Check the documentation", "WeightsUnpickler error")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith(noise)]
    if not lines:
        return type(e).__name__
    first = " ".join(lines[0].split()).split(". ")[0].rstrip(".")  # torch appends paragraphs of advice
    if isinstance(e, RuntimeError) and ("zip archive" in first or "EOF" in first):
        first += ": truncated or corrupt"
    return first[:160]


def load_state_dict(path: str | Path, *, fix: str = _STATE_DICT_FIX) -> dict[str, torch.Tensor]:
    """Load a plain state dict from safetensors or a ``torch.save`` file, never running code.

    Args:
        path: a ``.safetensors`` file or a ``torch.save`` file holding a state dict (possibly wrapped in
            ``state_dict`` / ``model`` / ...).
        fix: the remedy named at the end of every error message.

    Raises:
        VitdepthError: missing or empty file, a truncated or corrupt file, a pickle that is not a plain state dict
            (refused without running it), non-tensor values.
    """
    path = Path(path)
    if not path.is_file():
        raise VitdepthError(f"checkpoint {path} does not exist; pass the path of a .safetensors or .pth state dict")
    if path.stat().st_size == 0:
        raise VitdepthError(f"checkpoint {path} is empty (0 bytes; an interrupted download or copy?); {fix}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise VitdepthError(f"checkpoint {path} is not a readable safetensors file, truncated or corrupt "
                                f"({_first_line(e)}); {fix}") from None
    else:
        try:
            with warnings.catch_warnings():  # torch warns about pickle protocols on stderr; the error says enough
                warnings.simplefilter("ignore")
                sd = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, ValueError, EOFError, KeyError,
                IndexError, OSError) as e:
            # weights_only=True never runs the file's code, so whatever failed, nothing of it ran
            raise VitdepthError(f"checkpoint {path} is not a plain state dict and was refused without running it "
                                f"({_torch_load_reason(e)}); {fix}") from None
    for key in _WRAPPER_KEYS:
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise VitdepthError(f"checkpoint {path} does not hold a state dict of tensors; {fix}")
    if sd and all(k.startswith("module.") for k in sd):  # saved from DataParallel / DDP
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def check_safetensors(path: str | Path, *, fix: str) -> None:
    """Read the header of a safetensors file (not its tensors) and refuse one that is truncated or corrupt.

    safetensors checks on opening that the tensors listed in the header exactly cover the rest of the file,
    so a cut-off download fails here instead of deep inside a library's loader.

    Raises:
        VitdepthError: the file is empty, truncated or not safetensors; the message ends with ``fix``.
    """
    from safetensors import safe_open

    path = Path(path)
    if path.stat().st_size == 0:
        raise VitdepthError(f"{path} is empty (0 bytes; an interrupted download or copy?); {fix}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            f.keys()
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise VitdepthError(f"{path} is not a readable safetensors file, truncated or corrupt ({_first_line(e)}); "
                            f"{fix}") from None


def _names(keys, limit=5) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def apply_state_dict(model: nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    """Load ``sd`` strictly into ``model``, naming missing / unexpected / mis-shaped keys on failure."""
    own = model.state_dict()
    missing = set(own) - set(sd)
    unexpected = set(sd) - set(own)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys: {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys: {_names(unexpected)}")
        raise VitdepthError(f"checkpoint {source} does not fit {type(model).__name__}: {'; '.join(parts)}; "
                            "check that the model name / config matches the checkpoint")
    bad = [f"{k} {tuple(sd[k].shape)} vs model {tuple(v.shape)}" for k, v in own.items() if sd[k].shape != v.shape]
    if bad:
        raise VitdepthError(f"checkpoint {source} does not fit {type(model).__name__}: shape mismatch in "
                            f"{len(bad)} tensors, e.g. {bad[0]}; check the model size / config")
    model.load_state_dict(sd, strict=True)


def save_checkpoint(model: nn.Module, out_dir: str | Path, config: dict) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (the ``file:`` format) and return the directory.

    ``config`` must hold ``arch`` and ``model_args``; ``format`` and ``version`` are added.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = out / "model.safetensors.tmp"
    save_file(tensors, str(tmp))
    tmp.replace(out / "model.safetensors")
    cfg = {"format": CHECKPOINT_FORMAT, "version": 1, **config}
    (out / "config.json.tmp").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    (out / "config.json.tmp").replace(out / "config.json")
    return out


def read_checkpoint_config(path: str | Path) -> dict:
    """Read and validate ``config.json`` of a ``file:`` checkpoint directory."""
    path = Path(path)
    if not path.exists():
        raise VitdepthError(f"checkpoint directory {path} does not exist; pass a directory written by vitdepth train")
    cfg_path = path / "config.json"
    if not cfg_path.is_file() or not (path / "model.safetensors").is_file():
        raise VitdepthError(f"{path} is not a vitdepth checkpoint (needs config.json and model.safetensors)")
    cfg = read_json_object(cfg_path, "re-write the checkpoint with vitdepth")
    if cfg.get("format") != CHECKPOINT_FORMAT:
        raise VitdepthError(f"{cfg_path} has format {cfg.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
    for key in ("arch", "model_args"):
        if key not in cfg:
            raise VitdepthError(f"{cfg_path} lacks the field {key!r}; re-write the checkpoint with vitdepth")
    if not isinstance(cfg["model_args"], dict):
        raise VitdepthError(f"{cfg_path}: model_args is a {type(cfg['model_args']).__name__}, not an object; "
                            "re-write the checkpoint with vitdepth")
    return cfg
