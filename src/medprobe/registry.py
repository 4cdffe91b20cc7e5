"""One registry mechanism for every plug-in kind (datasets, encoder families, encoders, heads, task families,
extraction units).

A :class:`Registry` maps names to objects. Built-in entries live in modules that register themselves on import;
the registry imports those modules lazily, the first time it is asked anything, so it is complete in a fresh
process whatever was imported first. An unknown name is one line naming the kind, the closest known name and
the known names. Plug-ins register with the same call (``REG.register(name, obj)`` or ``@REG.decorator(name)``).
Torch-free and at the bottom of the layer order: every subpackage may import it.
"""

from __future__ import annotations

import difflib
import importlib
import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from medprobe.errors import ConfigError

T = TypeVar("T")
K = TypeVar("K")


class Registry(Generic[T]):
    """Named entries of one kind, with lazily imported built-in modules.

    ``kind``: what an entry is, for messages ("dataset kind", "head", ...). ``builtin``: modules whose import
    registers the built-in entries (dotted names, imported by :mod:`importlib` on first use, so the registry's
    module never imports a plug-in module and no import cycle arises). ``where``: the source named by error
    messages (``None``: none).
    """

    def __init__(self, kind: str, builtin: tuple[str, ...] = (), where: str | None = None) -> None:
        self.kind, self.builtin, self.where = kind, tuple(builtin), where
        self._entries: dict[Any, T] = {}
        self._loaded = False
        self._loading: set[int] = set()  # threads importing the built-ins now (re-entry from those imports)
        self._lock = threading.RLock()

    # -- loading ---------------------------------------------------------------------------------------------
    def load_builtins(self) -> None:
        """Import every built-in module once (a module that fails to import is an error, never skipped).

        No lock is held while importing (Python's per-module import locks serialise concurrent imports); a
        query made by a built-in module while it is being imported sees the entries registered so far."""
        if self._loaded:
            return
        me = threading.get_ident()
        if me in self._loading:
            return
        self._loading.add(me)
        try:
            for mod in self.builtin:
                importlib.import_module(mod)
            self._loaded = True
        finally:
            self._loading.discard(me)

    # -- writing ---------------------------------------------------------------------------------------------
    def register(self, name: Any, obj: T, *, replace: bool = True) -> T:
        """Add ``obj`` under ``name`` (replacing an entry of that name unless ``replace=False``); returns it."""
        if name is None or name == "" or (isinstance(name, tuple) and not all(name)):
            raise ConfigError(f"every {self.kind} needs a name", self.where)
        with self._lock:
            if not replace and name in self._entries and self._entries[name] is not obj:
                raise ConfigError(f"{self.kind} {self._show(name)} is registered twice", self.where)
            self._entries[name] = obj
        return obj

    def decorator(self, name: Any, **kw: Any) -> Callable[[T], T]:
        """``@REG.decorator("name")``: register the decorated object under ``name``."""

        def deco(obj: T) -> T:
            return self.register(name, obj, **kw)

        return deco

    def unregister(self, name: Any) -> None:
        """Remove an entry (no error when absent): tests and plug-ins that register temporary entries."""
        with self._lock:
            self._entries.pop(name, None)

    # -- reading ---------------------------------------------------------------------------------------------
    def __contains__(self, name: object) -> bool:
        self.load_builtins()
        return name in self._entries

    def __iter__(self) -> Iterator[Any]:
        self.load_builtins()
        return iter(list(self._entries))

    def __len__(self) -> int:
        self.load_builtins()
        return len(self._entries)

    def items(self) -> list[tuple[Any, T]]:
        self.load_builtins()
        return list(self._entries.items())

    def names(self) -> list[Any]:
        """Every registered name, sorted."""
        self.load_builtins()
        return sorted(self._entries, key=str)

    def registered(self, name: Any) -> bool:
        """Whether ``name`` is registered now, without importing the built-ins (checks made while a built-in
        module is being imported, which must not start importing the others)."""
        return name in self._entries

    def find(self, name: Any, load: bool = True) -> T | None:
        """The entry or ``None`` (``load=False``: without importing the built-ins, see :meth:`registered`)."""
        if load:
            self.load_builtins()
        return self._entries.get(name)

    def get(self, name: Any, where: str | None = None) -> T:
        """The entry ``name``; unknown -> one-line :class:`ConfigError` with the closest name and the known ones."""
        self.load_builtins()
        if name in self._entries:
            return self._entries[name]
        raise ConfigError(self.unknown_message(name), where or self.where)

    def unknown_message(self, name: Any, known: list[Any] | None = None) -> str:
        """``unknown <kind> 'x' (did you mean 'y'?; known: a, b, c)``."""
        names = [str(n) for n in (known if known is not None else self.names())]
        close = difflib.get_close_matches(str(name), names, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?; " if close else ""
        return f"unknown {self.kind} {self._show(name)} ({hint}known: {', '.join(names) or 'none'})"

    @staticmethod
    def _show(name: Any) -> str:
        return repr(name[0] if isinstance(name, tuple) and len(name) == 1 else name)


__all__ = ["Registry"]
