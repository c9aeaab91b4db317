"""Helpers shared by the patches: run a patch when (or as soon as) a vLLM module is imported, and log once.

Patching on import keeps ``register()`` cheap: the front-end never imports the model runner just to patch it.
"""

from __future__ import annotations

import importlib.abc
import logging
import sys
import threading
from types import ModuleType
from typing import Callable

logger = logging.getLogger("vllm.ears_vllm")

_pending: dict[str, list[Callable[[ModuleType], None]]] = {}
_lock = threading.Lock()
_logged: set[str] = set()


def log_once(key: str, msg: str, *args, level: int = logging.INFO) -> None:
    if key not in _logged:
        _logged.add(key)
        logger.log(level, msg, *args)


def _run(name: str, module: ModuleType) -> None:
    with _lock:
        fns = _pending.pop(name, [])
    for fn in fns:
        fn(module)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the real loader of a watched module so the patch runs right after it executes."""

    def find_spec(self, name, path, target=None):
        if name not in _pending:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_then_patch(module, _exec=exec_module, _name=name):
            _exec(module)
            _run(_name, module)

        loader.exec_module = exec_then_patch
        return spec


_finder = _PatchOnImport()


def when_imported(name: str, fn: Callable[[ModuleType], None]) -> None:
    """Call ``fn(module)`` once ``name`` is imported: now if it already is, else right after its import."""
    module = sys.modules.get(name)
    if module is not None:
        fn(module)
        return
    with _lock:
        _pending.setdefault(name, []).append(fn)
        if _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)
