"""Imports point one way (design §2): a test that fails when an arrow points the wrong way."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "vitdepth"

# package -> vitdepth subpackages / modules it must never import
FORBIDDEN = {
    "data": {"models", "metrics", "analysis", "report", "cli", "results"},
    "models": {"metrics", "analysis", "report", "cli", "results"},
    "metrics": {"models", "data", "analysis", "report", "cli"},
    "report": {"models", "data", "analysis", "cli"},
}
# data may import timm (a core dependency): its eval transform is the reference preprocessing (parity, issue 9)
THIRD_PARTY_FORBIDDEN = {"metrics": {"timm", "transformers"}, "data": {"transformers"},
                         "report": {"torch", "timm", "transformers"}}


def _imports(path: Path) -> set[tuple[str, int]]:
    """(absolute module name, level) of every import in a file, relative imports resolved."""
    tree = ast.parse(path.read_text())
    rel = path.relative_to(PKG.parent).with_suffix("").parts  # ("vitdepth", "metrics", "probes")
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {(a.name, 0) for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = rel[: len(rel) - node.level]
                name = ".".join(base + ((node.module,) if node.module else ()))
                out.add((name, node.level))
                if not node.module:
                    out |= {(".".join(base + (a.name,)), node.level) for a in node.names}
            else:
                out.add((node.module, 0))
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_one_way(package):
    bad = []
    for f in (PKG / package).rglob("*.py"):
        for name, _ in _imports(f):
            parts = name.split(".")
            if parts[0] == "vitdepth" and len(parts) > 1 and parts[1] in FORBIDDEN[package]:
                bad.append(f"{f.relative_to(PKG)} imports {name}")
            if parts[0] in THIRD_PARTY_FORBIDDEN.get(package, ()):
                bad.append(f"{f.relative_to(PKG)} imports {name}")
    assert not bad, "\n".join(bad)


def test_checker_sees_relative_imports():
    # guard against a checker that silently passes: the analysis runner does import metrics and models
    names = {n for n, _ in _imports(PKG / "analysis" / "run.py")}
    assert "vitdepth.metrics" in names and "vitdepth.models" in names


def test_no_unsafe_loading_in_src():
    for f in PKG.rglob("*.py"):
        text = f.read_text()
        for line in text.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{f}: {line.strip()}"
            assert "pickle.load(" not in line, f"{f}: {line.strip()}"
