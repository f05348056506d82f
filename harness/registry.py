"""The one registry mechanism behind layers and tasks: a decorator registers a factory under its name.

Unknown or duplicate names raise with the list of known names; a misspelt option names the accepted ones.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Generic, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class Registry(Generic[F]):
    """Name -> factory, for one kind of thing ("layer", "task")."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        def deco(fn: F) -> F:
            if name in self._items:
                raise KeyError(f"{self.kind} {name!r} is already registered (by {self._items[name].__module__})")
            self._items[name] = fn
            return fn
        return deco

    def names(self) -> list[str]:
        return sorted(self._items)

    def get(self, name: str) -> F:
        if name not in self._items:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return self._items[name]

    def build(self, name: str, fixed: dict[str, Any], options: dict[str, Any]) -> Any:
        """Call the factory with its fixed arguments and the user's options, checking the option names first."""
        fn = self.get(name)
        check_kwargs(fn, options, what=f"{self.kind} {name!r}", skip=tuple(fixed))
        return fn(**fixed, **options)


def check_kwargs(fn: Callable, kw: dict, what: str, skip: tuple[str, ...] = ()) -> None:
    """Raise a TypeError naming the accepted options when ``kw`` has a key ``fn`` does not take."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [p for p in params if p not in skip]
    bad = sorted(set(kw) - set(accepted))
    if bad:
        raise TypeError(f"{what} got unknown option(s) {', '.join(map(repr, bad))}; accepted: {', '.join(accepted)}")
