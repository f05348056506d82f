"""Which implementation of a kernel runs: one resolver for S4's Cauchy/Vandermonde backends and Mamba's scans.

A ``Backends`` table knows each backend's availability check (``status(device_type) -> ''`` when it can run, else
the reason) and, per device type, the order in which ``auto`` tries them. ``auto`` picks once per device type and
logs the choice and the reasons for what it passed over; an explicitly requested backend that cannot run raises a
RuntimeError naming its install command; an unknown name raises a ValueError naming the known ones. Nothing falls
back silently; the backend chosen is what the layers report as ``kernel_backend`` in each record.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch

__all__ = ["Backends"]

log = logging.getLogger(__name__)


class Backends:
    def __init__(self, what: str, status: dict[str, Callable[[str], str]], order: dict[str, tuple[str, ...]],
                 install: dict[str, str]):
        """``what``: the kernel's name in messages ("S4 kernels"); ``status``: backend -> availability check;
        ``order``: device type -> the backends ``auto`` tries (the last must always run; other device types use
        the ``cpu`` order); ``install``: backend -> the command that makes it available."""
        self.what, self.status, self.order, self.install = what, status, order, install
        self._auto: dict[str, str] = {}

    def names(self) -> tuple[str, ...]:
        return tuple(self.status)

    def reason(self, backend: str, device_type: str) -> str:
        """'' when ``backend`` can run tensors of ``device_type``, else why not."""
        if backend not in self.status:
            raise ValueError(f"unknown {self.what} backend {backend!r}; known: auto, {', '.join(self.status)}")
        return self.status[backend](device_type)

    def resolve(self, requested: str, device: torch.device | str) -> str:
        """The backend that will run for tensors on ``device``."""
        device_type = torch.device(device).type
        if requested == "auto":
            if device_type not in self._auto:
                self._auto[device_type] = self._pick(device_type)
            return self._auto[device_type]
        reason = self.reason(requested, device_type)
        if reason:
            raise RuntimeError(f"{self.what} backend {requested!r} is unavailable on {device_type}: {reason}. "
                               f"Install: {self.install.get(requested, '')}")
        return requested

    def _pick(self, device_type: str) -> str:
        order = self.order.get(device_type, self.order["cpu"])
        for backend in order:
            reason = self.reason(backend, device_type)
            if not reason:
                log.info("%s on %s: using the %s backend", self.what, device_type, backend)
                return backend
            log.info("%s on %s: %s backend unavailable (%s)", self.what, device_type, backend, reason)
        return order[-1]
