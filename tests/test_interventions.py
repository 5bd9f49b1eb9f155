"""Head lens and causal [CLS] interventions: edits against hand-written references, metrics against float64
brute force, and end to end on tiny models whose dependence on [CLS] is built in (a [CLS] head vs a mean-pool head).
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from conftest import tiny_timm_vit
from vitdepth import VitdepthError
from vitdepth.analysis.causal import donors
from vitdepth.metrics.predictions import donor_follow, kl_divergence, top1_correct
from vitdepth.models import tap_module
from vitdepth.models.interventions import block_key, edit_stream, edit_streams, reuse_clean_prefix
from vitdepth.models.readout import find_readout


def _images(n=6, size=32, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# -- metrics against brute force --------------------------------------------------------------------------------------
def test_kl_top1_follow_match_bruteforce():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(5, 7, generator=g) * 3, torch.randn(5, 7, generator=g) * 3
    kl = kl_divergence(a, b).numpy()
    for i in range(5):
        p = np.exp(a[i].double().numpy()) / np.exp(a[i].double().numpy()).sum()
        q = np.exp(b[i].double().numpy()) / np.exp(b[i].double().numpy()).sum()
        assert kl[i] == pytest.approx(sum(p[c] * math.log(p[c] / q[c]) for c in range(7)), rel=1e-12, abs=1e-15)
    assert kl_divergence(a, a).abs().max() < 1e-12
    labels = torch.tensor([int(a[0].argmax()), -1, 0, 1, 2])
    hit = top1_correct(a, labels)
    assert hit[0] == 1.0 and math.isnan(hit[1])
    assert list(hit[2:].numpy()) == [float(int(a[i].argmax()) == int(labels[i])) for i in range(2, 5)]
    f = donor_follow(torch.tensor([1, 2, 3]), torch.tensor([1, 5, 3]), torch.tensor([0, 0, 3]))
    assert f[0] == 1.0 and f[1] == 0.0 and math.isnan(f[2])  # donor predicts the image's own class: undecidable


def test_donors_come_from_another_class_and_follow_the_seed():
    labels = np.array([0, 0, 1, 1, 2, 2, 2, 0])
    d = donors(labels, np.random.default_rng(3))
    assert (d >= 0).all() and (labels[d] != labels).all()
    assert (donors(labels, np.random.default_rng(3)) == d).all()
    assert (donors(labels, np.random.default_rng(4)) != d).any()
    assert (donors(np.zeros(4, dtype=int), np.random.default_rng(0)) == -1).all()  # one class: no donor
    unknown = donors(np.full(4, -1), np.random.default_rng(0))
    assert (unknown >= 0).all() and (unknown != np.arange(4)).all()  # unlabelled: any other image


# -- edits against hand-written forwards ------------------------------------------------------------------------------
def _manual_timm(model, x, layer=None, edit=None, mask_from=None, mask=None):
    """timm's ViT forward written out block by block (the reference for edit_stream and block_key)."""
    h = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
    for i, blk in enumerate(model.blocks):
        if i == layer:
            h = edit(h)
        h = blk(h, attn_mask=mask if mask_from is not None and i >= mask_from else None)
    if layer == len(model.blocks):
        h = edit(h)
    return model.forward_head(model.norm(h))


@pytest.mark.parametrize("layer", [0, 2, 3])
def test_edit_stream_equals_manual_forward(layer):
    model = tiny_timm_vit()
    tm = tap_module(model, "test")
    x = _images()
    donor_cls = torch.randn(len(x), model.embed_dim, generator=torch.Generator().manual_seed(2))

    def put(h):
        h = h.clone()
        h[:, 0] = donor_cls
        return h

    with torch.inference_mode():
        with edit_stream(tm, layer, put):
            edited = tm.output(x)
        ref = _manual_timm(model, x, layer, put)
        clean = tm.output(x)
    torch.testing.assert_close(edited, ref, rtol=1e-5, atol=1e-5)
    assert (edited - clean).abs().max() > 1e-3  # the edit changed something
    with torch.inference_mode():  # the hooks are gone afterwards
        torch.testing.assert_close(tm.output(x), clean, rtol=0, atol=0)


@pytest.mark.parametrize("from_block", [0, 2])
def test_block_key_equals_timm_eager_attention_mask(from_block):
    # a mean-pool head: the output depends on what the patches read (a [CLS] head would not see a knock-out in
    # the last block, where only patch queries are masked)
    model = tiny_timm_vit(global_pool="avg")
    with torch.no_grad():  # make attention to [CLS] matter (random init attends almost uniformly)
        model.cls_token.mul_(0).add_(5.0)
    tm = tap_module(model, "test")
    x = _images()
    t = 1 + (32 // 8) ** 2
    mask = torch.zeros(t, t, dtype=torch.float64)
    mask[1:, 0] = -torch.inf  # patch queries may not read the [CLS] key
    ref_model = tiny_timm_vit(global_pool="avg").double()
    ref_model.load_state_dict(model.state_dict())
    for blk in ref_model.blocks:
        blk.attn.fused_attn = False  # timm's own eager path adds the mask to the scores
    with torch.inference_mode():
        with block_key(tm, key=0, from_block=from_block, queries=slice(1, None)):
            knocked = tm.output(x)
        ref = _manual_timm(ref_model, x.double(), mask_from=from_block, mask=mask)
        clean = tm.output(x)
    torch.testing.assert_close(knocked.double(), ref, rtol=1e-4, atol=1e-5)
    assert (knocked - clean).abs().max() > 1e-4


def test_block_key_refuses_attention_it_cannot_mask():
    from torchvision.models.vision_transformer import VisionTransformer

    tm = tap_module(VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                      mlp_dim=64).eval(), "tv")
    with torch.inference_mode(), pytest.raises(VitdepthError, match="cannot mask its attention"):
        with block_key(tm, key=0, from_block=0, queries=slice(1, None)):
            tm.output(_images(2))


def _clean_stream(tm, x):
    """The clean residual stream at layers 0..L (block inputs, then the last block's output)."""
    seen = []

    def grab_in(_mod, args, kwargs):
        seen.append((args[0] if args else kwargs["hidden_states"]).clone())

    def grab_out(_mod, _args, out):
        seen.append((out[0] if isinstance(out, (tuple, list)) else out).clone())

    handles = [b.register_forward_pre_hook(grab_in, with_kwargs=True) for b in tm.sites.blocks]
    handles.append(tm.sites.blocks[-1].register_forward_hook(grab_out))
    try:
        tm.output(x)
    finally:
        for h in handles:
            h.remove()
    return seen


@pytest.mark.parametrize("first", [0, 1])
@pytest.mark.parametrize("family", ["timm", "hf"])
def test_reusing_the_clean_prefix_changes_no_edited_output(family, first, hf_dirs):
    """Skipping the blocks before each group's edit gives the outputs of running every block (swaps at every layer
    including L, knock-outs from every block), on timm (positional block calls) and HF (keyword calls)."""
    if family == "timm":
        model = tiny_timm_vit()
        tm = tap_module(model, "test")
    else:
        from vitdepth.models import create_model

        tm = create_model(f"hf:{hf_dirs['vit']}")
    size = tm.preprocess.input_size[-1]
    n, x = 3, _images(3, size=size)
    with torch.inference_mode():
        clean = _clean_stream(tm, x)
        assert len(clean) == tm.depth + 1
        layers = list(range(first, tm.depth + 1))  # first = 1: block 0 has no edited rows
        stacked = x.repeat(len(layers), 1, 1, 1)
        donor = torch.randn(n, clean[0].shape[-1], generator=torch.Generator().manual_seed(5))

        def put(h):
            h = h.clone()
            h[:, 0] = donor
            return h

        edits = [(layer, slice(k * n, (k + 1) * n), put) for k, layer in enumerate(layers)]
        with edit_streams(tm, edits):
            full = tm.output(stacked)
        with reuse_clean_prefix(tm, clean, layers), edit_streams(tm, edits):
            reused = tm.output(stacked)
        torch.testing.assert_close(reused, full, rtol=1e-5, atol=1e-5)
        assert (full[:n] - full[-n:]).abs().max() > 1e-4  # the groups really differ
        if family == "timm":
            starts = list(range(first, tm.depth))
            per_image = torch.as_tensor(starts).repeat_interleave(n)
            stacked = x.repeat(len(starts), 1, 1, 1)
            with block_key(tm, key=0, from_block=per_image, queries=slice(1, None)):
                full = tm.output(stacked)
            with reuse_clean_prefix(tm, clean, starts), block_key(tm, key=0, from_block=per_image,
                                                                  queries=slice(1, None)):
                reused = tm.output(stacked)
            torch.testing.assert_close(reused, full, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="ascending"):
        with reuse_clean_prefix(tm, clean, [2, 1]):
            pass


def test_interventions_with_and_without_the_clean_prefix_agree(tmp_path, monkeypatch):
    """End to end: the intervention curves of a run equal those of a run that computes every block."""
    import vitdepth.analysis.causal as causal
    from vitdepth.analysis.run import analyze

    def run(out):
        model = tiny_timm_vit(num_classes=4)
        return _rows(analyze(model=model, data="synthetic:n=40,classes=4,size=32", out=str(tmp_path / out),
                             batch_size=16, quiet=True, metrics="probe_acc", interventions=("cls",), figures=False,
                             n_boot=20, n_boot_phases=10, cka_samples=0))

    used = []
    monkeypatch.setattr(causal, "reuse_clean_prefix", lambda *a: used.append(a[2]) or reuse_clean_prefix(*a))
    reused = run("reused")
    assert used and any(min(starts) > 0 for starts in used)  # early blocks were skipped
    monkeypatch.setattr(causal, "CLEAN_STREAM_BYTES", 0)  # nothing kept: every edited forward runs all blocks
    full = run("full")
    assert reused.keys() == full.keys() and any(m.startswith("cls_swap") for m, _, _ in full)
    for k, v in full.items():
        assert reused[k] == pytest.approx(v, rel=1e-5, abs=1e-7), k


# -- the readout (head lens) ------------------------------------------------------------------------------------------
def test_readout_is_the_models_own_head(hf_dirs):
    from torchvision.models.vision_transformer import VisionTransformer
    from transformers import AutoModel, ViTForImageClassification

    x = _images(3)
    cases = {
        "timm [CLS]": tap_module(tiny_timm_vit(), "a"),
        "timm mean-pool": tap_module(tiny_timm_vit(global_pool="avg"), "b"),
        "hf ViT": tap_module(ViTForImageClassification.from_pretrained(hf_dirs["vit"]).eval(), "c"),
        "torchvision": tap_module(VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                    hidden_dim=32, mlp_dim=64, num_classes=7).eval(), "d"),
    }
    for what, tm in cases.items():
        readout = find_readout(tm, x)
        assert not isinstance(readout, str), (what, readout)
        with torch.inference_mode():
            out, layers = tm.capture(x, attention=False)
            torch.testing.assert_close(readout(layers[-1].tokens), out, rtol=1e-5, atol=1e-5)
    for what, tm in {"timm without head": tap_module(tiny_timm_vit(num_classes=0), "e"),
                     "hf backbone": tap_module(AutoModel.from_pretrained(hf_dirs["dinov2"]).eval(), "f")}.items():
        assert "no classification head" in find_readout(tm, x), what


# -- end to end: a [CLS] head against a mean-pool head ----------------------------------------------------------------
def _rows(run):
    out = {}
    with open(run / "layers.csv") as f:
        for r in csv.DictReader(f):
            out[(r["metric"], r["token_set"], r["layer"])] = float(r["value"])
    return out


@pytest.fixture(scope="module")
def causal_runs(tmp_path_factory):
    from vitdepth.analysis.run import analyze

    root = tmp_path_factory.mktemp("causal")
    runs = {}
    for name, pool in (("cls_head", "token"), ("mean_head", "avg")):
        model = tiny_timm_vit(global_pool=pool, num_classes=4)
        runs[name] = analyze(model=model, data="synthetic:n=48,classes=4,size=32", out=str(root / name),
                             samples=48, batch_size=16, quiet=True, metrics="token_sim,probe_acc,lens_acc,lens_kl",
                             interventions=("cls",), figures=False, n_boot=50, n_boot_phases=20)
    return runs


def test_cls_head_follows_the_swapped_cls_and_ignores_the_patch_control(causal_runs):
    run = causal_runs["cls_head"]
    rows = _rows(run)
    meta = json.loads((run / "run.json").read_text())
    assert meta["causal"]["head_reads_cls"] is True
    last = "3"
    # at the last layer the head reads only [CLS]: the prediction is the donor's wherever the two differ
    assert rows[("cls_swap_follow", "", last)] == 1.0
    # ... and a swapped patch token changes nothing
    assert rows[("patch_swap_follow", "", last)] == 0.0
    assert rows[("patch_swap_acc", "", last)] == rows[("cls_knockout_acc", "", last)]  # = the clean accuracy
    assert all(("cls_swap_follow", "", str(layer)) in rows for layer in range(4))
    # the head lens at the last layer is the model itself
    assert abs(rows[("lens_kl", "", last)]) < 1e-9
    assert rows[("lens_acc", "", last)] == rows[("cls_knockout_acc", "", last)]
    # knock-out from L masks nothing: the final [CLS] probe on the knocked-out features is the clean cls probe
    assert rows[("cls_knockout_probe_acc", "cls", last)] == rows[("probe_acc", "cls", last)]
    assert rows[("cls_knockout_kl", "", last)] == 0.0
    assert rows[("cls_knockout_kl", "", "0")] > 0.0


def test_mean_pool_head_gets_the_knockout_only(causal_runs):
    run = causal_runs["mean_head"]
    rows = _rows(run)
    meta = json.loads((run / "run.json").read_text())
    assert meta["causal"]["head_reads_cls"] is False
    assert any("does not read the [CLS] token" in w for w in meta["warnings"])
    assert not any(m.startswith(("cls_swap", "patch_swap")) for m, _, _ in rows)
    assert rows[("cls_knockout_kl", "", "0")] > 0.0  # the patches it pools did read [CLS]
    assert abs(rows[("lens_kl", "", "3")]) < 1e-9


def test_interventions_refused_on_a_model_without_cls(tmp_path):
    from vitdepth.analysis.run import analyze

    with pytest.raises(VitdepthError, match=r"no \[CLS\] token to intervene on"):
        analyze(model=tiny_timm_vit(class_token=False, global_pool="avg"), data="synthetic:n=16,classes=2,size=32",
                out=str(tmp_path / "r"), quiet=True, interventions=("cls",), figures=False)
    assert not (tmp_path / "r").exists()
