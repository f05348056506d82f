"""The one registry mechanism behind layers and tasks: a decorator registers a factory under its name.

Unknown or duplicate names raise with the list of known names; a misspelt option names the accepted ones.
"""
from __future__ import annotations

import inspect
import types
import typing
from typing import Any, Callable, Generic, Iterable, TypeVar

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
        check_types(fn, options, what=f"{self.kind} {name!r} option ")
        return fn(**fixed, **options)


def check_names(given: Iterable[str], accepted: Iterable[str], what: str) -> None:
    """Raise a TypeError naming the accepted options when ``given`` holds a name ``accepted`` does not, e.g.
    ``unknown train option(s) 'learning_rate'; accepted: epochs, ...`` (``what`` = ``"train"``). The one check
    behind every "unknown option" message: layer, task, backbone, train and efficiency options."""
    accepted = list(accepted)
    bad = sorted(set(given) - set(accepted))
    if bad:
        raise TypeError(f"unknown {what} option(s) {', '.join(map(repr, bad))}; accepted: {', '.join(accepted)}")


def check_kwargs(fn: Callable, kw: dict, what: str, skip: tuple[str, ...] = ()) -> None:
    """``check_names`` for the keyword arguments ``fn`` takes (anything, if it takes ``**kwargs``)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    check_names(kw, [p for p in params if p not in skip], what)


def _accepts(tp: Any, value: Any) -> bool:
    """Whether ``value`` fits the annotation ``tp`` (int, float, bool, str, None, unions, Literal, list/tuple/dict);
    an annotation this does not know accepts anything (the builder judges)."""
    origin = typing.get_origin(tp)
    if tp is typing.Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(arg, value) for arg in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if tp in (list, tuple) or origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if tp is dict or origin is dict:
        return isinstance(value, dict)
    return True


def _describe(tp: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(tp))
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def check_types(fn: Callable | type, kw: dict, what: str) -> None:
    """Raise a TypeError naming the option (``what`` + its name, e.g. ``train.`` + ``grad_clip``), the expected type
    and the value when a value of ``kw`` does not fit the annotation of ``fn``'s parameter (or dataclass field) of that
    name, e.g. ``grad_clip='abc'`` for a float: said
    before anything runs, instead of a TypeError deep inside training that names no option."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - annotations that cannot be evaluated are not checked here
        return
    for name, value in kw.items():
        if name in hints and not _accepts(hints[name], value):
            raise option_error(TypeError, name, f"{what}{name} must be {_describe(hints[name])}, got {value!r} "
                                                f"({type(value).__name__})")


def check_ranges(what: str, values: dict, rules: list[tuple[str, bool, str]]) -> None:
    """Raise a ValueError for the first ``(name, ok, wanted)`` rule that does not hold, e.g. ``train.epochs must be a
    number > 0, got -1`` (``what`` + name)."""
    for name, ok, want in rules:
        if not ok:
            raise option_error(ValueError, name, f"{what}{name} must be {want}, got {values[name]!r}")


def option_error(kind: type[Exception], option: str, message: str) -> Exception:
    """``kind(message)`` that also says which option it is about (``.option``), so that a caller can name where the
    value came from without reading the message."""
    err = kind(message)
    err.option = option
    return err
