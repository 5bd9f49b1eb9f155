"""The shared row-entropy pass gives exactly what each metric computes on its own."""

from __future__ import annotations

import torch

from vitdepth.metrics.attention_graph import attention_graph
from vitdepth.metrics.functional import attention_row_entropy, isi_attention


def test_precomputed_row_entropy_changes_nothing():
    torch.manual_seed(0)
    b, h, prefix, grid = 3, 2, 2, (3, 4)
    t = prefix + grid[0] * grid[1]
    attn = torch.randn(b, h, t, t).softmax(-1)
    x_in, x_mid = torch.randn(b, t, 8), torch.randn(b, t, 8)
    rows = attention_row_entropy(attn)
    assert rows.shape == (b, h, t)
    brute = -(attn.double() * attn.double().log()).sum(-1)
    torch.testing.assert_close(rows.double(), brute, atol=1e-5, rtol=0)
    for k, v in isi_attention(x_in, x_mid, attn).items():
        torch.testing.assert_close(isi_attention(x_in, x_mid, attn, rows)[k], v, atol=0, rtol=0)
    alone = attention_graph(attn, prefix, grid, True)
    shared = attention_graph(attn, prefix, grid, True, row_entropy=rows)
    for k, v in alone.items():
        torch.testing.assert_close(shared[k], v, atol=1e-12, rtol=0)
