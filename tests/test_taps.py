"""Taps equal the models' own intermediate outputs, and taps never change the outputs."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_timm_vit
from vitdepth.models.adapters.timm_vit import wrap_timm
from vitdepth.models.taps import LayerTaps

ATOL = 1e-5


def _timm_reference_attn(model, x):
    """Attention probabilities from timm's own non-fused path (hooking attn_drop's input)."""
    probs = []
    hooks = []
    for blk in model.blocks:
        blk.attn.fused_attn = False
        hooks.append(blk.attn.attn_drop.register_forward_hook(lambda m, a, o: probs.append(a[0].detach())))
    try:
        logits = model(x)
    finally:
        for h in hooks:
            h.remove()
        for blk in model.blocks:
            blk.attn.fused_attn = True
    return logits, probs


@pytest.mark.parametrize("variant", ["cls", "registers", "distilled", "no_cls"])
def test_timm_taps_equal_forward_intermediates(variant):
    if variant == "distilled":
        from timm.models.deit import VisionTransformerDistilled

        torch.manual_seed(0)
        model = VisionTransformerDistilled(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2,
                                           num_classes=5).eval()
        expected_prefix = ("cls", "dist")
    elif variant == "registers":
        model = tiny_timm_vit(reg_tokens=3)
        expected_prefix = ("cls", "reg0", "reg1", "reg2")
    elif variant == "no_cls":
        model = tiny_timm_vit(class_token=False, global_pool="avg")
        expected_prefix = ()
    else:
        model = tiny_timm_vit()
        expected_prefix = ("cls",)
    for blk in model.blocks:
        blk.attn.fused_attn = True  # the model keeps its fast path; taps recompute probabilities
    tm = wrap_timm(model, "test", {})
    assert tm.prefix_names == expected_prefix
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        plain = tm.output(x)
        out, layers = tm.capture(x)
        inter = model.forward_intermediates(x, intermediates_only=True, return_prefix_tokens=True, output_fmt="NLC")
        spatial, prefix = zip(*inter, strict=True) if expected_prefix else (inter, None)
        ref_logits, ref_attn = _timm_reference_attn(model, x)
    assert torch.equal(out, plain), "logits changed with taps on"
    torch.testing.assert_close(out, ref_logits, atol=ATOL, rtol=0)
    assert [t.layer for t in layers] == ["pre", "0", "1", "2", "3"]
    # pre: patch projection output before position embedding, patches only
    pre = model.patch_embed.proj(x).flatten(2).transpose(1, 2)
    torch.testing.assert_close(layers[0].tokens, pre, atol=ATOL, rtol=0)
    assert layers[0].num_prefix == 0
    for i, t in enumerate(layers[2:]):
        assert t.num_prefix == len(expected_prefix)
        torch.testing.assert_close(t.patches, spatial[i], atol=ATOL, rtol=0)
        if expected_prefix:
            torch.testing.assert_close(t.prefix, prefix[i], atol=ATOL, rtol=0)
        torch.testing.assert_close(t.attn, ref_attn[i], atol=ATOL, rtol=0)
        assert t.attn.shape == (3, 2, 16 + len(expected_prefix), 16 + len(expected_prefix))
        # residual bookkeeping: x_in of block i+1 is the output of block i, x_mid is the attention residual
        prev = layers[1 + i]
        torch.testing.assert_close(t.x_in, prev.tokens, atol=0, rtol=0)
        blk = model.blocks[i]
        with torch.no_grad():
            mid = t.x_in + blk.ls1(blk.attn(blk.norm1(t.x_in)))
        torch.testing.assert_close(t.x_mid, mid, atol=ATOL, rtol=0)


def _hf_reference(path):
    import transformers

    config = transformers.AutoConfig.from_pretrained(path)
    cls = (transformers.AutoModelForImageClassification
           if any(a.endswith(("ForImageClassification", "WithTeacher")) for a in config.architectures or [])
           else transformers.AutoModel)
    return cls.from_pretrained(path, attn_implementation="eager").eval()


@pytest.mark.parametrize("kind", ["vit", "dinov2_reg", "dinov2", "deit_distilled", "clip_vision"])
def test_hf_taps_equal_hidden_states_and_eager_attentions(hf_dirs, kind):
    from vitdepth.models import create_model

    tm = create_model(f"hf:{hf_dirs[kind]}")
    ref = _hf_reference(hf_dirs[kind])
    expected_prefix = {"vit": 1, "dinov2_reg": 5, "dinov2": 1, "deit_distilled": 2, "clip_vision": 1}[kind]
    assert len(tm.prefix_names) == expected_prefix and tm.prefix_names[0] == "cls"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = tm.output(x)
        out, layers = tm.capture(x)
        r = ref(pixel_values=x, output_hidden_states=True, output_attentions=True)
    assert torch.equal(out, plain), "output changed with taps on"
    hidden, attns = r.hidden_states, r.attentions
    assert len(hidden) == tm.depth + 1 == len(layers) - 1
    for i, t in enumerate(layers[1:]):
        assert t.layer == str(i)
        torch.testing.assert_close(t.tokens, hidden[i], atol=ATOL, rtol=0)
        assert t.num_prefix == expected_prefix
    for i, t in enumerate(layers[2:]):
        torch.testing.assert_close(t.attn, attns[i], atol=ATOL, rtol=0)


def test_hooks_are_removed_after_capture():
    tm = wrap_timm(tiny_timm_vit(), "test", {})
    modules = [tm.sites.patch_proj, *tm.sites.blocks, *tm.sites.mid_sites]
    before = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in modules]
    seen: list[LayerTaps] = []

    def failing_sink(t):
        seen.append(t)
        if t.layer == "1":
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError), torch.no_grad():
        tm.run(torch.randn(1, 3, 32, 32), failing_sink)
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in modules] == before
    assert [t.layer for t in seen] == ["pre", "0", "1"]


def test_model_without_attention_blocks_is_refused():
    from vitdepth import VitdepthError
    from vitdepth.models.structure import find_sites

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 4, stride=4), torch.nn.ReLU())
    with pytest.raises(VitdepthError, match="no attention blocks"):
        find_sites(net)


def test_run_timings_exclude_the_sink_and_are_ordered():
    """Per-block end times of a tapped forward: increasing, within the forward, and blind to a slow sink."""
    import time

    tm = wrap_timm(tiny_timm_vit(), "test", {})
    x = torch.randn(2, 3, 32, 32)
    timings: dict = {}
    with torch.no_grad():
        t0 = time.perf_counter()
        tm.run(x, lambda t: time.sleep(0.05), timings=timings)  # 5 layers x at least 50 ms of sink
        wall = time.perf_counter() - t0
    ends = timings["block_end_s"]
    assert len(ends) == tm.depth
    assert all(b > a for a, b in zip(ends, ends[1:], strict=False))
    assert 0 < ends[-1] <= timings["forward_s"]
    assert wall - timings["forward_s"] >= 5 * 0.05  # the time spent in the sink is not counted
