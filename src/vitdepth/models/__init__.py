"""Model adapters: load a vision transformer by spec and tap it layer by layer (design §3)."""

from .checkpoint import apply_state_dict as apply_state_dict
from .checkpoint import load_state_dict as load_state_dict
from .checkpoint import save_checkpoint as save_checkpoint
from .registry import create_model as create_model
from .registry import list_adapters as list_adapters
from .registry import register_adapter as register_adapter
from .registry import tap_module as tap_module
from .tapped import TappedModel as TappedModel
from .taps import LayerTaps as LayerTaps
