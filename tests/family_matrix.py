"""The model-family coverage matrix: one tiny random-init model per family, and what vitdepth must do with it.

Each family is either ``exact`` (tapped attention equals the library's own eager attention and tapped tokens
equal its hidden states, with sharpened q/k and random relative-position tables so that a missing rotary or
bias term shows) or ``refused`` with a one-line message naming the family. ``tests/test_families.py`` checks
every row; ``tools/gen_models_doc.py`` runs the same rows and writes docs/models.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

TINY = dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2)
HF_TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
               patch_size=8)


@dataclass(frozen=True)
class Family:
    """One row of the matrix.

    Attributes:
        name: family name as docs/models.md shows it.
        adapter: spec form it is loaded with.
        build: returns the tiny random-init module.
        expect: ``"exact"`` or ``"refused"``.
        prefix: expected prefix token names (exact rows).
        refusal: a fragment the one-line refusal must contain (refused rows).
        terms: extra attention terms the model adds (``"rope"``, ``"bias"``), checked to matter.
        notes: what is not reported for the family and why (docs/models.md).
    """

    name: str
    adapter: str
    build: Callable[[], nn.Module]
    expect: str = "exact"
    prefix: tuple[str, ...] = ("cls",)
    refusal: str = ""
    terms: tuple[str, ...] = ()
    notes: str = ""


def _timm(name: str, **overrides) -> Callable[[], nn.Module]:
    def build():
        import timm

        return timm.create_model(name, pretrained=False, **overrides).eval()

    return build


def _hf(config_name: str, model: str = "AutoModel", **kwargs) -> Callable[[], nn.Module]:
    def build():
        import transformers

        config = getattr(transformers, config_name)(**kwargs)
        return getattr(transformers, model).from_config(config).eval()

    return build


def _hf_full(config_name: str, model: str, vision: dict) -> Callable[[], nn.Module]:
    def build():
        import transformers

        cls = getattr(transformers, config_name)
        text = dict(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
        return getattr(transformers, model)(cls(text_config=text, vision_config=vision)).eval()

    return build


def _torchvision() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64).eval()


NO_CLS = "no [CLS] token: cls_patch_sim, cls_centrality, cls_self and the cls probe are not reported"

FAMILIES: list[Family] = [
    # timm
    Family("ViT", "timm", _timm("vit_tiny_patch16_224", **TINY)),
    Family("ViT + register tokens", "timm", _timm("vit_tiny_patch16_224", reg_tokens=2, **TINY),
           prefix=("cls", "reg0", "reg1")),
    Family("ViT, global average pool (no [CLS])", "timm",
           _timm("vit_tiny_patch16_224", class_token=False, global_pool="avg", **TINY), prefix=(), notes=NO_CLS),
    Family("ViT, register tokens only (no [CLS])", "timm",
           _timm("vit_tiny_patch16_224", class_token=False, reg_tokens=2, global_pool="avg", **TINY),
           prefix=("reg0", "reg1"), notes=NO_CLS),
    Family("DeiT distilled", "timm", _timm("deit_tiny_distilled_patch16_224", **TINY), prefix=("cls", "dist")),
    Family("DeiT-III", "timm", _timm("deit3_small_patch16_224", **TINY)),
    Family("FlexiViT", "timm", _timm("flexivit_small", **TINY)),
    Family("CLIP ViT", "timm", _timm("vit_base_patch16_clip_224", **TINY)),
    Family("EVA-02 (rotary)", "timm", _timm("eva02_tiny_patch14_224", img_size=28, patch_size=14, depth=2,
                                            embed_dim=32, num_heads=2), terms=("rope",)),
    Family("ViT with RoPE", "timm", _timm("vit_small_patch16_rope_224", **TINY), terms=("rope",)),
    Family("DINOv3 (rotary, registers)", "timm", _timm("vit_small_patch16_dinov3", **TINY),
           prefix=("cls", "reg0", "reg1", "reg2", "reg3"), terms=("rope",)),
    Family("ViT relative-position bias", "timm", _timm("vit_relpos_small_patch16_224", **TINY), prefix=(),
           terms=("bias",), notes=NO_CLS),
    Family("ViT relative-position, res-post-norm", "timm", _timm("vit_relpos_small_patch16_rpn_224", **TINY),
           prefix=(), terms=("bias",), notes=NO_CLS + "; x_mid is read as the MLP's input (post-norm block)"),
    Family("BEiT", "timm", _timm("beit_base_patch16_224", **TINY), terms=("bias",)),
    Family("SigLIP (attention-pool head)", "timm", _timm("vit_base_patch16_siglip_224", **TINY), prefix=(),
           notes=NO_CLS),
    Family("Hybrid ResNet-26 + ViT", "timm", _timm("vit_small_r26_s32_224", img_size=64, depth=2),
           notes="the patch grid is the ResNet's output; `pre` is its 1×1 projection"),
    Family("Swin", "timm", _timm("swin_tiny_patch4_window7_224", img_size=32, window_size=2, embed_dim=16,
                                 depths=(1, 1), num_heads=(1, 2)), "refused", refusal="Swin is not a plain ViT"),
    Family("CrossViT", "timm", _timm("crossvit_tiny_240"), "refused", refusal="CrossViT is not a plain ViT"),
    Family("SAM ViT", "timm", _timm("samvit_base_patch16", img_size=64, depth=2, embed_dim=32, num_heads=2,
                                    global_attn_indexes=()), "refused", refusal="SAM-ViT is not a plain ViT"),
    Family("PiT", "timm", _timm("pit_ti_224"), "refused", refusal="PiT is not a plain ViT"),
    Family("Parallel-block ViT", "timm", _timm("vit_small_patch16_18x2_224", **TINY), "refused",
           refusal="parallel-block ViTs are not supported"),
    # Hugging Face
    Family("ViT", "hf", _hf("ViTConfig", **HF_TINY)),
    Family("DeiT distilled", "hf", _hf("DeiTConfig", **HF_TINY), prefix=("cls", "dist")),
    Family("DINOv2", "hf", _hf("Dinov2Config", **HF_TINY)),
    Family("DINOv2 + registers", "hf", _hf("Dinov2WithRegistersConfig", num_register_tokens=2, **HF_TINY),
           prefix=("cls", "reg0", "reg1")),
    Family("DINOv3 (rotary, registers)", "hf", _hf("DINOv3ViTConfig", num_register_tokens=2, **HF_TINY),
           prefix=("cls", "reg0", "reg1"), terms=("rope",)),
    Family("CLIP vision tower", "hf", _hf("CLIPVisionConfig", **HF_TINY)),
    Family("CLIP (full model: its vision tower)", "hf",
           _hf_full("CLIPConfig", "CLIPModel", dict(HF_TINY))),
    Family("BEiT", "hf", _hf("BeitConfig", use_relative_position_bias=True, **HF_TINY), terms=("bias",)),
    Family("Data2Vec-vision", "hf", _hf("Data2VecVisionConfig", use_relative_position_bias=True, **HF_TINY),
           terms=("bias",)),
    Family("ViT-MSN", "hf", _hf("ViTMSNConfig", **HF_TINY)),
    Family("ViT-MAE (unmasked, identity order)", "hf", _hf("ViTMAEConfig", mask_ratio=0.0, **HF_TINY),
           notes="run with mask_ratio 0 and the identity patch order (the model's own `noise` argument); a "
                 "masking model passed as an object is refused until its mask_ratio is 0"),
    Family("SigLIP vision tower", "hf", _hf("SiglipVisionConfig", **HF_TINY), prefix=(), notes=NO_CLS),
    Family("SigLIP (full model: its vision tower)", "hf", _hf_full("SiglipConfig", "SiglipModel", dict(HF_TINY)),
           prefix=(), notes=NO_CLS),
    Family("I-JEPA", "hf", _hf("IJepaConfig", **HF_TINY), prefix=(), notes=NO_CLS),
    Family("AIMv2 vision", "hf", _hf("Aimv2VisionConfig", **HF_TINY), prefix=(), notes=NO_CLS),
    Family("Swin", "hf", _hf("SwinConfig", image_size=32, patch_size=4, embed_dim=16, depths=[1, 1],
                             num_heads=[1, 2], window_size=2), "refused", refusal="Swin is not a plain ViT"),
    # torchvision
    Family("ViT (vit_b_16, vit_l_16, ...)", "torchvision", _torchvision,
           notes="torchvision exposes no hidden states: tokens are checked against the encoder's own final-norm "
                 "input in the tests, not at run time"),
]


def sharpen(model: nn.Module, gain: float = 1.5) -> None:
    """Redraw query/key projections with std gain/sqrt(fan_in) (random-init ViTs attend almost uniformly, where a
    missing score term would hide) and draw relative-position tables from N(0, 1) (random init leaves them 0)."""
    g = torch.Generator().manual_seed(0)

    def redraw(w: torch.Tensor) -> None:
        w.copy_(torch.randn(w.shape, generator=g) * gain / w.shape[1] ** 0.5)

    with torch.no_grad():
        for mod in model.modules():
            for name, child in mod.named_children():
                if not isinstance(child, nn.Linear):
                    continue
                if name in ("q_proj", "k_proj", "query", "key", "q", "k"):
                    redraw(child.weight)
                elif name == "qkv":
                    redraw(child.weight[: 2 * child.in_features])
            if isinstance(mod, nn.MultiheadAttention) and mod.in_proj_weight is not None:
                redraw(mod.in_proj_weight[: 2 * mod.embed_dim])
            for pname, p in mod.named_parameters(recurse=False):
                if "relative_position_bias_table" in pname:
                    p.copy_(torch.randn(p.shape, generator=g))
