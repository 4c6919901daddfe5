"""Name registries with aliases and "did you mean" (in the manner of lm-evaluation-harness), filled
by plugin modules that register themselves when their package is first asked for a name."""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from typing import Callable, Generic, Iterator, TypeVar

from eebench.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from canonical names (and aliases) to registered objects.

    Args:
        kind: what is registered ("method", "dataset", "backbone"); used in error messages.
        package: the package whose modules register the plugins (``methods``,
            ``eebench.datasets``, ``eebench.backbones``): every module of it not starting with "_"
            is imported on the first lookup, so a new plugin is a new file, with no other edit.

    Raises:
        UnknownNameError: from :meth:`get` for a name that is neither registered nor an alias.
        ValueError: from :meth:`register` when a name or alias is registered twice.
    """

    def __init__(self, kind: str, package: str | None = None):
        self.kind = kind
        self.package = package
        self._discovered = package is None
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}
        self._resolvers: list[Callable[[str], tuple[str, T] | None]] = []
        self._resolved: set[str] = set()   # names a resolver answered: not listed by names()
        self._forms: list[str] = []

    def discover(self) -> "Registry[T]":
        """Import every plugin module of :attr:`package` once (each registers itself)."""
        if not self._discovered:
            self._discovered = True
            pkg = importlib.import_module(self.package)
            for info in pkgutil.iter_modules(pkg.__path__):
                if not info.name.startswith("_"):
                    importlib.import_module(f"{self.package}.{info.name}")
        return self

    def register(self, name: str, obj: T, aliases: tuple[str, ...] = ()) -> T:
        for key in (name, *aliases):
            if key in self._items or key in self._aliases:
                raise ValueError(f"{self.kind} '{key}' is registered twice")
        self._items[name] = obj
        for alias in aliases:
            self._aliases[alias] = name
        return obj

    def add_resolver(self, resolver: Callable[[str], tuple[str, T] | None], form: str) -> None:
        """Answer names no plugin registered (``timm:NAME``, ``hf:OWNER/NAME``, a folder):
        ``resolver(name)`` returns ``(canonical name, object)``, registered on first use, or None for
        a name it does not recognise; it raises :class:`~eebench.errors.UsageError` for a name it
        recognises but cannot serve. ``form`` ("timm:NAME") is listed among the valid names in errors."""
        self._resolvers.append(resolver)
        self._forms.append(form)

    def canonical(self, name: str) -> str:
        """Return the canonical name for ``name`` or an alias of it (or one a resolver answers).

        Raises:
            UnknownNameError: nothing registered or resolvable under ``name``.
        """
        self.discover()
        if name in self._items:
            return name
        if name in self._aliases:
            return self._aliases[name]
        for resolver in self._resolvers:
            found = resolver(name)
            if found is not None:
                key, obj = found
                if key not in self._items:
                    self._items[key] = obj
                    self._resolved.add(key)
                if key != name and name not in self._aliases:
                    self._aliases[name] = key
                return key
        folded = name.lower().replace("_", "-")
        for key in [*self._items, *self._aliases]:
            if key.lower().replace("_", "-") == folded:
                return self._aliases.get(key, key)
        close = difflib.get_close_matches(name, [*self._items, *self._aliases], n=1, cutoff=0.6)
        suggestion = self._aliases.get(close[0], close[0]) if close else None
        raise UnknownNameError(self.kind, name, [*self.names(), *self._forms], suggestion)

    def get(self, name: str) -> T:
        return self._items[self.canonical(name)]

    def names(self) -> list[str]:
        self.discover()
        return sorted(k for k in self._items if k not in self._resolved)

    def aliases_of(self, name: str) -> list[str]:
        return sorted(a for a, n in self._aliases.items() if n == name)

    def __contains__(self, name: object) -> bool:
        self.discover()
        return name in self._items or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
