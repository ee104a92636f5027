"""A tiny named registry for interchangeable methods (matchers, Hessian estimators, costs, task orders,
layer forms). The registry owns its names: callers ask it, never compare a method's name."""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

from .errors import UsageError

F = TypeVar("F", bound=Callable)


class Registry(Generic[F]):
    """Maps names to functions of one signature. Unknown names raise :class:`UsageError`."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """A decorator that registers the function under ``name``."""
        def wrap(fn: F) -> F:
            self.add(name, fn)
            return fn
        return wrap

    def add(self, name: str, item: F) -> None:
        """Register ``item`` (a function, or a record of one family) under ``name``."""
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._items[name] = item

    def get(self, name: str) -> F:
        try:
            return self._items[name]
        except KeyError:
            raise UsageError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
