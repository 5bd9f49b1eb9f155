"""Model adapters: load a vision transformer by spec and tap it layer by layer (design §3).

The names below load on first use (PEP 562), so importing this package costs nothing until a model is needed:
``from vitdepth.models import create_model`` works as before and loads torch then.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

# name -> submodule that defines it; loaded by __getattr__ on first use
_LAZY = {
    "apply_state_dict": "checkpoint",
    "load_state_dict": "checkpoint",
    "save_checkpoint": "checkpoint",
    "create_model": "registry",
    "list_adapters": "registry",
    "register_adapter": "registry",
    "tap_module": "registry",
    "TappedModel": "tapped",
    "LayerTaps": "taps",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:  # the eager imports, for type checkers and IDEs
    from .checkpoint import apply_state_dict as apply_state_dict
    from .checkpoint import load_state_dict as load_state_dict
    from .checkpoint import save_checkpoint as save_checkpoint
    from .registry import create_model as create_model
    from .registry import list_adapters as list_adapters
    from .registry import register_adapter as register_adapter
    from .registry import tap_module as tap_module
    from .tapped import TappedModel as TappedModel
    from .taps import LayerTaps as LayerTaps


__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
