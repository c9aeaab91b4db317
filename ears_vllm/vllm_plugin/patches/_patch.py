"""The one way the plugin changes vLLM: run a patch when its module is imported, wrap or replace one attribute.

- ``when_imported(module_name, apply)``: call ``apply(module)`` now if the module is loaded, else right after its
  import. ``register()`` stays cheap: the front-end never imports the model runner just to patch it.
- ``wrap(owner, name)``: a decorator; ``@wrap(cls, "verify") def verify(original, self, ...)`` replaces
  ``cls.verify`` by a wrapper that calls the decorated function with the original first. Guarded (installing twice
  wraps once), keeps the original (``__wrapped__``, ``functools.wraps``), logs once per process at debug level.
- ``replace(owner, name, value)``: the same for an attribute replaced outright (a function vLLM looks up by name).
- ``restore()``: put every original back, newest first (tests).
"""

from __future__ import annotations

import functools
import importlib.abc
import logging
import sys
import threading
from types import ModuleType
from typing import Any, Callable

logger = logging.getLogger("vllm.ears_vllm")

MARK = "__ears_patch__"  # on every wrapper: the patch's name, so that a second install finds it

_pending: dict[str, list[Callable[[ModuleType], None]]] = {}
_lock = threading.Lock()
_logged: set[str] = set()
_applied: list[tuple[Any, str, Any]] = []  # (owner, name, original), in the order applied


def log_once(key: str, msg: str, *args, level: int = logging.INFO) -> None:
    if key not in _logged:
        _logged.add(key)
        logger.log(level, msg, *args)


def _target(owner, name: str) -> str:
    """``module.Class.name`` or ``module.name``, for the log line."""
    if isinstance(owner, type):
        return f"{owner.__module__}.{owner.__qualname__}.{name}"
    return f"{owner.__name__}.{name}"


def _is_patched(value, key: str) -> bool:
    """Whether ``key``'s wrapper is anywhere in the chain of wrappers of ``value``."""
    while value is not None:
        if getattr(value, MARK, None) == key:
            return True
        value = getattr(value, "__wrapped__", None)
    return False


def _install(owner, name: str, original, new, key: str) -> None:
    setattr(new, MARK, key)
    setattr(owner, name, new)
    _applied.append((owner, name, original))
    log_once(f"patch:{key}", "EARS plugin: patched %s", _target(owner, name), level=logging.DEBUG)


def wrap(owner, name: str):
    """Decorator: wrap ``owner.<name>`` (a class's own method, or a module's function) by ``fn(original, ...)``."""

    def decorator(fn: Callable) -> Callable:
        # A class's own attribute: a subclass's method must not be taken for it.
        original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        key = f"{fn.__module__}.{fn.__qualname__}"
        if _is_patched(original, key):
            return getattr(owner, name)

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            return fn(original, *args, **kwargs)

        _install(owner, name, original, wrapper, key)
        return wrapper

    return decorator


def replace(owner, name: str, value: Callable) -> None:
    """Replace ``owner.<name>`` by ``value`` (guarded: nothing happens if it already is ``value``)."""
    original = getattr(owner, name)
    if original is value:
        return
    value.__wrapped__ = original
    _install(owner, name, original, value, f"{value.__module__}.{value.__qualname__}")


def restore() -> None:
    """Undo every patch applied in this process, newest first (the import hooks still pending stay pending)."""
    while _applied:
        owner, name, original = _applied.pop()
        setattr(owner, name, original)


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
