"""Glue from one layer's taps to the per-image metric functions and pooled features.

This is the only place that knows both the tap record and the metric functions, so the
metrics stay free of model details and the adapters free of metrics (design §2).
"""

from __future__ import annotations

import torch

from ..metrics import functional as F
from ..metrics.attention_graph import attention_graph
from ..models.taps import CHUNK_ELEMENTS, LayerTaps

SIMILARITY_IDS = ("token_sim", "token_sim_centered", "cls_patch_sim")
ISI_ATTN_IDS = ("isi_attn", "attn_delta", "attn_entropy")
GRAPH_IDS = ("cls_centrality", "cls_self", "attn_consensus", "attn_distance")
PER_IMAGE_IDS = SIMILARITY_IDS + ISI_ATTN_IDS + GRAPH_IDS
ATTENTION_IDS = frozenset(ISI_ATTN_IDS + GRAPH_IDS)


def per_image_values(t: LayerTaps, has_cls: bool, metrics: frozenset[str] | None = None,
                     chunk_elements: int = CHUNK_ELEMENTS) -> dict[str, torch.Tensor]:
    """Per-image (B,) values of the selected per-image metrics that apply to this layer.

    Args:
        t: one layer's taps.
        has_cls: whether prefix token 0 is a [CLS] token.
        metrics: metric ids to compute (None: every per-image metric).
        chunk_elements: most attention scores (images x heads x tokens x keys) materialised at once; the
            pass picks it per device (:func:`attention_chunk_elements`). Results do not depend on it.
    """
    want = frozenset(PER_IMAGE_IDS) if metrics is None else metrics
    patches = t.patches
    out: dict[str, torch.Tensor] = {}
    if "token_sim" in want:
        out["token_sim"] = F.token_similarity(patches)
    if "token_sim_centered" in want:
        out["token_sim_centered"] = F.token_similarity_centered(patches)
    cls = has_cls and t.num_prefix > 0
    if cls and "cls_patch_sim" in want:
        out["cls_patch_sim"] = F.cls_patch_similarity(t.tokens[:, 0], patches)
    need_isi = any(m in want for m in ISI_ATTN_IDS)
    need_graph = any(m in want for m in GRAPH_IDS)
    if t.qk is not None and (need_isi or need_graph):
        # A few images at a time: each chunk's scores, probabilities and the metrics reading them stay in
        # the CPU cache (on a GPU: in the memory budget), and the softmax's own exp pass yields the row
        # entropies (no log pass for them).
        parts: dict[str, list[torch.Tensor]] = {}
        for rows in t.qk.row_chunks(chunk_elements):
            probs, entropy = F.softmax_and_entropy_(t.qk.scores(rows))
            chunk: dict[str, torch.Tensor] = {}
            if need_isi:
                chunk.update(F.isi_attention(t.x_in[rows], t.x_mid[rows], probs, entropy))
            if need_graph:
                chunk.update(attention_graph(probs, t.num_prefix, t.grid, cls, row_entropy=entropy))
            for k, v in chunk.items():
                parts.setdefault(k, []).append(v)
        out.update({k: torch.cat(v) for k, v in parts.items()})
    return {k: v for k, v in out.items() if k in want}


#: Bytes of device memory one attention score costs while a chunk is processed: the float32 scores (overwritten
#: by the softmax), the probabilities and the largest temporary of the metrics reading them, with headroom.
BYTES_PER_SCORE = 16
#: Fraction of the free GPU memory (measured once, after the model is loaded) that attention chunks may use.
CUDA_CHUNK_MEMORY_FRACTION = 0.25


def attention_chunk_elements(device: torch.device) -> int:
    """How many attention scores the pass materialises at once on ``device``.

    CPU: :data:`~vitdepth.models.taps.CHUNK_ELEMENTS` (2 MiB of float32), so a chunk stays in the cache while the
    softmax and the metrics read it. CUDA: a quarter of the free memory, so a chunk is usually the whole batch
    (one kernel per operation instead of one per few images); :meth:`QueryKey.row_chunks` never goes below one
    image.
    """
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return max(CHUNK_ELEMENTS, int(free * CUDA_CHUNK_MEMORY_FRACTION) // BYTES_PER_SCORE)
    return CHUNK_ELEMENTS


def pooled_features(t: LayerTaps, has_cls: bool) -> dict[str, torch.Tensor]:
    """Pooled (B, d) features per token set: ``mean`` of patches, and ``cls`` where there is one."""
    out = {"mean": t.patches.float().mean(dim=1)}
    if has_cls and t.num_prefix > 0:
        out["cls"] = t.tokens[:, 0].float()
    return out
