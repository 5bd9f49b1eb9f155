"""Every model family: tapped attention and tokens equal the library's own, or a one-line refusal (issue 9)."""

from __future__ import annotations

import pytest
import torch

from family_matrix import FAMILIES, Family, sharpen
from vitdepth import VitdepthError
from vitdepth.models import tap_module
from vitdepth.models.selfcheck import self_check

ATOL = 1e-5


def _id(f: Family) -> str:
    return f"{f.adapter}:{f.name}"


def _wrapped(f: Family):
    torch.manual_seed(0)
    model = f.build()
    sharpen(model)
    return model, tap_module(model, f"{f.adapter}:{f.name}")


@pytest.mark.parametrize("family", [f for f in FAMILIES if f.expect == "exact"], ids=_id)
def test_family_taps_equal_the_library(family):
    model, tm = _wrapped(family)
    assert tm.prefix_names == family.prefix
    assert tm.has_cls == (family.prefix[:1] == ("cls",))
    h, w = tm.preprocess.input_size
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = tm.output(x)
        out, layers = tm.capture(x, keep_calls=True)
    assert torch.equal(out, plain), "taps changed the model's output"
    assert [t.layer for t in layers] == tm.layer_names
    ref = tm.reference(x)
    assert ref is not None and ref.attentions is not None, "no eager reference attention for an exact family"
    blocks = [t for t in layers if t.is_block]
    assert len(ref.attentions) == len(blocks)
    for t, a in zip(blocks, ref.attentions, strict=True):
        assert t.attn.shape == a.shape
        torch.testing.assert_close(t.attn, a.float(), atol=ATOL, rtol=0)
        # the reference is far from uniform, so a missing term could not hide in flat rows
        assert float(a.amax(dim=-1).mean()) > 2.0 / a.shape[-1]
    if family.adapter == "torchvision":  # no hidden states exposed: the encoder's final norm reads layer L
        seen = []
        hook = model.encoder.ln.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        with torch.no_grad():
            model(x)
        hook.remove()
        torch.testing.assert_close(layers[-1].tokens, seen[0], atol=ATOL, rtol=0)
    else:
        assert ref.hidden_states, "no hidden states to compare tokens with"
        by_layer = {t.layer: t for t in layers}
        for layer, hs in ref.hidden_states.items():
            torch.testing.assert_close(by_layer[layer].tokens, hs, atol=ATOL * max(1.0, float(hs.abs().max())),
                                       rtol=0)
    for t in layers[1:]:
        assert t.num_prefix == len(family.prefix)
    check = self_check(tm, x)
    assert check.attention == "verified" and check.tokens in ("verified", "not exposed"), check


@pytest.mark.parametrize("family", [f for f in FAMILIES if "bias" in f.terms], ids=_id)
def test_relative_position_bias_matters(family):
    """Without the bias term the recomputed attention would be visibly wrong: the exactness test can see it."""
    _, tm = _wrapped(family)
    x = torch.randn(2, 3, *tm.preprocess.input_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _, layers = tm.capture(x)
    t = layers[2]
    assert t.qk.bias is not None
    without = type(t.qk)(t.qk.q, t.qk.k, t.qk.scale).probs()
    assert float((without - t.attn).abs().max()) > 1e-2


@pytest.mark.parametrize("family", [f for f in FAMILIES if "rope" in f.terms], ids=_id)
def test_rotary_embedding_matters(family):
    """Queries / keys before the rotation (what vitdepth read before) give visibly wrong attention."""
    model, tm = _wrapped(family)
    x = torch.randn(2, 3, *tm.preprocess.input_size, generator=torch.Generator().manual_seed(1))
    blk = tm.sites.blocks[0]
    grabbed = {}
    proj = next(m for m in blk.modules() if hasattr(m, "q_norm") or hasattr(m, "q_proj"))
    if hasattr(proj, "q_norm"):  # timm: (B, H, T, hd) before rope
        hooks = [proj.q_norm.register_forward_hook(lambda _m, _a, o: grabbed.setdefault("q", o)),
                 proj.k_norm.register_forward_hook(lambda _m, _a, o: grabbed.setdefault("k", o))]
    else:  # Hugging Face: (B, T, H·hd) before rope
        hooks = [proj.q_proj.register_forward_hook(lambda _m, _a, o: grabbed.setdefault("q", o)),
                 proj.k_proj.register_forward_hook(lambda _m, _a, o: grabbed.setdefault("k", o))]
    with torch.no_grad():
        _, layers = tm.capture(x)
    for h in hooks:
        h.remove()
    q, k = grabbed["q"], grabbed["k"]
    if q.dim() == 3:
        b, n, _ = q.shape
        q = q.reshape(b, n, tm.num_heads, -1).transpose(1, 2)
        k = k.reshape(b, n, tm.num_heads, -1).transpose(1, 2)
    unrotated = type(layers[2].qk)(q, k, layers[2].qk.scale).probs()
    assert float((unrotated - layers[2].attn).abs().max()) > 1e-2


@pytest.mark.parametrize("family", [f for f in FAMILIES if f.expect == "refused"], ids=_id)
def test_family_is_refused_in_one_line(family):
    torch.manual_seed(0)
    model = family.build()
    with pytest.raises(VitdepthError) as err:
        tap_module(model, family.name)
    message = str(err.value)
    assert family.refusal in message and "\n" not in message
