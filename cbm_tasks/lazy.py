"""A package's public names loaded from their modules on first use (PEP 562).

Importing a light module of a package (``markers.params``, ``traffic_light.rules``) must not load
its heavy ones (Numba kernels, pyarrow): ``cbm --help`` and the light commands start in a fraction
of a second (ARCHITECTURE.md, ``cbm_tasks/cli/``).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_names"]


def lazy_names(package: str, modules: Mapping[str, str]) -> Callable[[str], Any]:
    """Return the module ``__getattr__`` of *package* that imports each public name from *modules*.

    Args:
        package: the package's ``__name__``.
        modules: public name -> the module that defines it.
    """

    def __getattr__(name: str) -> Any:
        module = modules.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # the next look-up finds it without this hook
        return value

    return __getattr__
