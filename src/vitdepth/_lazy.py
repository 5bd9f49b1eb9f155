"""PEP 562 lazy attributes for the package ``__init__`` modules (standard library only).

``vitdepth.data``, ``vitdepth.models`` and ``vitdepth.metrics`` re-export names from their submodules; loading
them eagerly would import torch (and more) for ``vitdepth --help`` or ``vitdepth models``. Each package instead
maps a name to its submodule and gets ``__getattr__`` / ``__dir__`` from :func:`lazy_exports`.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module


def lazy_exports(package: str, namespace: dict, names: dict[str, str]) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for ``package`` whose attribute ``name`` lives in submodule ``names[name]``.

    A name is imported on first access and stored in ``namespace`` (the package's globals), so later look-ups
    do not come back here.
    """

    def __getattr__(name: str):
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(f".{module}", package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
