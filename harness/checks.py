"""Option checking shared by the registries: a misspelt option names the accepted ones."""
from __future__ import annotations

import inspect
from typing import Callable


def check_kwargs(fn: Callable, kw: dict, what: str, skip: tuple[str, ...] = ()) -> None:
    """Raise a TypeError naming the accepted options when ``kw`` has a key ``fn`` does not take."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [p for p in params if p not in skip]
    bad = sorted(set(kw) - set(accepted))
    if bad:
        raise TypeError(f"{what} got unknown option(s) {', '.join(map(repr, bad))}; accepted: {', '.join(accepted)}")
