"""The run-time self-check, torchvision and resolution / preprocessing overrides, end to end (issue 9)."""

from __future__ import annotations

import json

import pytest
import torch
from timm.layers import Attention

from conftest import tiny_timm_vit
from vitdepth import VitdepthError
from vitdepth.analysis.run import AnalyzeConfig, analyze
from vitdepth.models import create_model, tap_module
from vitdepth.models.selfcheck import self_check
from vitdepth.models.tapped import Reference
from vitdepth.results import load_run


class BiasedEagerAttention(Attention):
    """An attention vitdepth has never seen: eager softmax with an extra learned score term, no SDPA call."""

    def __init__(self, dim, num_heads, tokens):
        super().__init__(dim, num_heads=num_heads, qkv_bias=True)
        self.extra = torch.nn.Parameter(torch.randn(num_heads, tokens, tokens) * 3)

    def forward(self, x, attn_mask=None, is_causal=False):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        attn = self.attn_drop(((q * self.scale) @ k.transpose(-2, -1) + self.extra).softmax(dim=-1))
        return self.proj_drop(self.proj(self.norm((attn @ v).transpose(1, 2).reshape(b, n, c))))


def _biased_vit():
    model = tiny_timm_vit()
    torch.manual_seed(1)
    for blk in model.blocks:
        old = blk.attn
        blk.attn = BiasedEagerAttention(32, 2, 17)
        blk.attn.load_state_dict(old.state_dict(), strict=False)
    return model.eval()


def _analyze(monkeypatch, tmp_path, tm, name="r", **kw):
    monkeypatch.setattr("vitdepth.analysis.run.create_model", lambda *a, **k: tm)
    cfg = AnalyzeConfig(model="timm:test", data="digits", samples=120, out=str(tmp_path / name), quiet=True,
                        figures=False, n_boot=50, n_boot_phases=20, metrics="core", **kw)
    return analyze(cfg)


def test_unknown_attention_term_is_caught_and_not_reported(monkeypatch, tmp_path):
    tm = tap_module(_biased_vit(), "biased")
    assert set(tm.sites.attention_source) == {"qk"}  # no SDPA call: read from q/k, which misses the extra term
    check = self_check(tm, torch.randn(2, 3, 32, 32))
    assert check.attention == "failed" and "eager attention" in check.reason
    run_dir = _analyze(monkeypatch, tmp_path, tm)
    res = load_run(run_dir)
    metrics = {r["metric"] for r in res.rows}
    assert "isi_attn" not in metrics and "attn_entropy" not in metrics
    assert "token_sim" in metrics and "probe_acc" in metrics  # token metrics are unaffected
    run = json.loads((run_dir / "run.json").read_text())
    assert run["self_check"]["attention"] == "failed"
    assert any(w.startswith("self-check: ") and "isi_attn" in w for w in run["warnings"])
    # skipping the check reports them (at the user's risk), and says so in run.json
    run_dir = _analyze(monkeypatch, tmp_path, tm, name="r2", self_check=False)
    assert "isi_attn" in {r["metric"] for r in load_run(run_dir).rows}
    assert json.loads((run_dir / "run.json").read_text())["self_check"] is None


def test_plain_vit_passes_the_self_check(monkeypatch, tmp_path):
    tm = tap_module(tiny_timm_vit(), "tiny")
    run_dir = _analyze(monkeypatch, tmp_path, tm)
    check = json.loads((run_dir / "run.json").read_text())["self_check"]
    assert check["attention"] == "verified" and check["tokens"] == "verified" and check["reason"] == ""
    assert "isi_attn" in {r["metric"] for r in load_run(run_dir).rows}


def test_token_mismatch_stops_the_run_in_one_line(monkeypatch, tmp_path):
    tm = tap_module(tiny_timm_vit(), "tiny")
    real = tm.reference_fn

    def shifted(model, x):
        ref = real(model, x)
        return Reference({k: v + 1.0 for k, v in ref.hidden_states.items()}, ref.attentions, ref.source)

    tm.reference_fn = shifted
    with pytest.raises(VitdepthError, match="tapped tokens differ") as err:
        _analyze(monkeypatch, tmp_path, tm)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "r").exists()


def test_failing_flop_count_keeps_the_run(monkeypatch, tmp_path):
    """An optional estimate that fails (timm's attention-pool head broke FlopCounterMode) never loses the run."""
    import torch.utils.flop_counter as fc

    class Broken(fc.FlopCounterMode):
        def __enter__(self):
            raise AttributeError("'NoneType' object has no attribute 'next_functions'")

    monkeypatch.setattr(fc, "FlopCounterMode", Broken)
    tm = tap_module(tiny_timm_vit(), "tiny")
    run_dir = _analyze(monkeypatch, tmp_path, tm)
    run = json.loads((run_dir / "run.json").read_text())
    assert run["truncation"] is None
    assert any("truncation estimate not available: AttributeError" in w for w in run["warnings"])


def test_timm_siglip_map_head_runs_to_the_end(monkeypatch, tmp_path):
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_siglip_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                              embed_dim=32, num_heads=2).eval()
    run_dir = _analyze(monkeypatch, tmp_path, tap_module(model, "siglip"))
    run = json.loads((run_dir / "run.json").read_text())
    assert "cls" not in {r["token_set"] for r in load_run(run_dir).rows}
    assert run["self_check"]["attention"] == "verified"


def test_mae_that_masks_is_refused_in_one_line():
    transformers = pytest.importorskip("transformers")
    model = transformers.ViTMAEModel(transformers.ViTMAEConfig(hidden_size=32, num_hidden_layers=2,
                                                               num_attention_heads=2, intermediate_size=64,
                                                               image_size=32, patch_size=8, mask_ratio=0.75))
    with pytest.raises(VitdepthError, match="mask_ratio = 0"):
        tap_module(model.eval(), "mae")


def test_torchvision_spec_loads_and_matches_need_weights(tmp_path, monkeypatch):
    tm = create_model("torchvision:vit_b_32", random_init=True)
    assert tm.prefix_names == ("cls",) and tm.depth == 12 and tm.preprocess.input_size == (224, 224)
    assert tm.preprocess.interpolation == "bilinear" and tm.preprocess.crop_pct == pytest.approx(224 / 256)
    x = torch.randn(1, 3, 224, 224)
    check = self_check(tm, x)
    assert check.attention == "verified" and check.tokens == "not exposed"
    # the weights' own transform is used, and describes itself
    assert tm.transform is not None and tm.transform.to_dict()
    # offline with nothing cached: one line naming the cache and the fix
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    import urllib.error

    def offline(*_a, **_k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)  # even where a network exists
    with pytest.raises(VitdepthError, match="needs weights and nothing is downloaded") as err:
        create_model("torchvision:vit_b_32")
    assert str(tmp_path / "hub") in str(err.value)
    # a checkpoint round trip
    torch.save(tm.model.state_dict(), tmp_path / "w.pth")
    tm2 = create_model("torchvision:vit_b_32", checkpoint=str(tmp_path / "w.pth"))
    with torch.no_grad():
        torch.testing.assert_close(tm2.output(x), tm.output(x))
    with pytest.raises(VitdepthError, match="did you mean torchvision:vit_b_16"):
        create_model("torchvision:vit_b_61", random_init=True)


def test_timm_image_size_resamples_a_checkpoint(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    tm = create_model("timm:vit_tiny_patch16_224", checkpoint=str(tmp_path / "w.safetensors"), image_size=64)
    assert tm.preprocess.input_size == (64, 64) and tm.sites.grid == (4, 4)
    assert tm.identity["image_size"] == 64
    with torch.no_grad():
        out, layers = tm.capture(torch.randn(1, 3, 64, 64))
    assert layers[1].tokens.shape[1] == 17 and out.shape == (1, 3)
    with pytest.raises(VitdepthError, match="--image-size is not supported for file"):
        create_model("file:/nonexistent", image_size=64)


def test_hf_image_size_interpolates(hf_dirs):
    tm = create_model(f"hf:{hf_dirs['vit']}", image_size=48)
    assert tm.preprocess.input_size == (48, 48) and tm.sites.grid == (6, 6)
    check = self_check(tm, torch.randn(2, 3, 48, 48))
    assert check.attention == "verified" and check.tokens == "verified"


def test_preprocess_override_is_recorded(monkeypatch, tmp_path):
    tm = tap_module(tiny_timm_vit(), "tiny")
    run_dir = _analyze(monkeypatch, tmp_path, tm, preprocess=("mean=0.5,0.5,0.5", "std=0.5,0.5,0.5",
                                                              "interpolation=bilinear"))
    run = json.loads((run_dir / "run.json").read_text())
    assert run["model"]["preprocess"]["mean"] == [0.5, 0.5, 0.5]
    assert run["model"]["preprocess"]["interpolation"] == "bilinear"
    assert run["model"]["transform"]["overrides"] == ["mean=0.5,0.5,0.5", "std=0.5,0.5,0.5",
                                                      "interpolation=bilinear"]


def test_post_norm_x_mid_is_the_residual_after_attention():
    """timm's res-post-norm block: x_mid = x + norm1(attn(x)), the MLP's input, not the MLP branch's output."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_relpos_small_patch16_rpn_224", pretrained=False, img_size=32, patch_size=8,
                              depth=2, embed_dim=32, num_heads=2).eval()
    tm = tap_module(model, "rpn")
    assert tm.sites.layouts == ["post-norm", "post-norm"]
    with torch.no_grad():
        _, layers = tm.capture(torch.randn(2, 3, 32, 32))
        for blk, t in zip(model.blocks, layers[2:], strict=True):
            torch.testing.assert_close(t.x_mid, t.x_in + blk.norm1(blk.attn(t.x_in)), atol=1e-6, rtol=0)


def test_hf_no_cls_model_with_all_metrics_and_its_own_processor(tmp_path):
    """SigLIP (no [CLS]) with --metrics all: no cls rows, no crash; the directory's image processor is used."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    d = tmp_path / "siglip"
    transformers.SiglipVisionModel(transformers.SiglipVisionConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
        patch_size=8)).save_pretrained(d)
    transformers.SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(d)
    run_dir = analyze(AnalyzeConfig(model=f"hf:{d}", data="digits", samples=120, out=str(tmp_path / "r"),
                                    quiet=True, figures=False, n_boot=50, n_boot_phases=20, metrics="all"))
    res = load_run(run_dir)
    assert "cls" not in {r["token_set"] for r in res.rows}
    assert {"isi_rec", "nc1", "probe_acc_logistic", "attn_consensus"} <= {r["metric"] for r in res.rows}
    run = json.loads((run_dir / "run.json").read_text())
    assert run["model"]["transform"]["kind"] == "hf_image_processor"
    assert "SiglipImageProcessor" in json.dumps(run["model"]["transform"])
    assert run["self_check"]["attention"] == "verified" and run["self_check"]["tokens"] == "verified"
