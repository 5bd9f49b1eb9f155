"""Built-in adapters, one file per family; importing this package registers them."""

from . import file_ckpt, hf, timm_vit, torchvision_vit  # noqa: F401
