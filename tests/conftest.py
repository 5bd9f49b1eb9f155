"""Shared fixtures: tiny random-init models and checkpoints the tests write themselves."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(2)

TINY_TIMM = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=5)


def tiny_timm_vit(**overrides):
    """A tiny timm VisionTransformer (random init, seeded)."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(**{**TINY_TIMM, **overrides}).eval()


@pytest.fixture(scope="session")
def hf_dirs(tmp_path_factory):
    """Tiny random-init Hugging Face models saved to local directories (nothing downloaded)."""
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("hf")
    common = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, image_size=32,
                  patch_size=8)
    torch.manual_seed(0)
    made = {
        "vit": transformers.ViTForImageClassification(transformers.ViTConfig(**common, num_labels=10)),
        "dinov2_reg": transformers.Dinov2WithRegistersModel(
            transformers.Dinov2WithRegistersConfig(**common, num_register_tokens=4)),
        "dinov2": transformers.Dinov2Model(transformers.Dinov2Config(**common)),
        "deit_distilled": transformers.DeiTForImageClassificationWithTeacher(
            transformers.DeiTConfig(**common, num_labels=10)),
        "clip_vision": transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**common)),
    }
    dirs = {}
    for name, model in made.items():
        d = root / name
        model.save_pretrained(d)
        dirs[name] = d
    return dirs


@pytest.fixture(scope="session")
def tiny_file_model(tmp_path_factory):
    """A tiny timm ViT saved as a vitdepth checkpoint directory (``file:DIR``), 10 classes, 32 px."""
    from vitdepth.data import PreprocessConfig
    from vitdepth.models.checkpoint import save_checkpoint

    d = tmp_path_factory.mktemp("model") / "tiny"
    model = tiny_timm_vit(num_classes=10)
    save_checkpoint(model, d, {"arch": "timm.VisionTransformer", "model_args": {**TINY_TIMM, "num_classes": 10},
                               "preprocess": PreprocessConfig(input_size=(32, 32)).to_dict()})
    return d
