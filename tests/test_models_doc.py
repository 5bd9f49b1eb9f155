"""docs/models.md is the coverage matrix (tests/family_matrix.py), one row per family, in order."""

from __future__ import annotations

from pathlib import Path

from family_matrix import FAMILIES

DOC = Path(__file__).resolve().parents[1] / "docs" / "models.md"


def _rows() -> list[list[str]]:
    rows = []
    for line in DOC.read_text().splitlines():
        if line.startswith("| ") and not line.startswith("| family") and not line.startswith("|---"):
            cells = [c.strip().replace("\\|", "|") for c in line.strip("|").split(" | ")]
            rows.append(cells)
    return rows


def test_models_doc_matches_the_matrix():
    rows = _rows()
    assert len(rows) == len(FAMILIES), "docs/models.md is stale: run tools/gen_models_doc.py"
    for cells, f in zip(rows, FAMILIES, strict=True):
        assert cells[:3] == [f.name, f.adapter, f.expect], "docs/models.md is stale: run tools/gen_models_doc.py"
        if f.expect == "refused":
            assert f.refusal in cells[-1]
        else:
            assert cells[5] == (", ".join(f.prefix) or "none")
            assert cells[-1] == (f.notes or "—")
