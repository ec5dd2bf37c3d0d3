"""Lazy package exports: `__getattr__`/`__dir__` that import a name's module on first use (PEP 562), so importing
a package stays cheap and optional dependencies load only when their feature is used."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, namespace: dict, exports: dict[str, str]) -> tuple[Callable, Callable]:
    """(`__getattr__`, `__dir__`) for `package` whose public names map to the modules defining them."""

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__():
        return sorted(list(namespace) + list(exports))

    return __getattr__, __dir__
