"""One dispatch for the S4 kernel ops: which backend computes ``cauchy`` and ``vandermonde``.

``auto`` picks, once per (op, device type), and logs the choice:
    CUDA tensors: Triton if it imports, else KeOps if it passes a real compile-and-run check, else the reference;
    CPU tensors:  the reference (chunked matmuls on the CPU BLAS). KeOps also runs on a CPU, but there it is
                  slower than the reference (see benchmarks/kernels.py), so it is used only when asked for.
An explicitly requested backend that cannot run raises a RuntimeError naming the install command; nothing
falls back silently. The backend used is what the kernel modules' ``kernel_backend`` reports, and it goes into each
RunRecord.
Every op runs with autocast off (models/precision.py): called from a bf16 autocast region, it still computes in
the complex64 / complex128 (and float32 / float64 nodes) it is given.
"""
from __future__ import annotations

import os
from functools import lru_cache
from typing import Callable

import torch

from models.backends import Backends
from models.precision import autocast_off
from models.s4.kernels.reference import cauchy_conj_ref, cauchy_ref, vandermonde_blocked

BACKENDS = ("ref", "keops", "triton")
INSTALL_HINT = {
    "keops": "pip install pykeops (needs a C++ compiler; and the CUDA toolkit for GPU tensors)",
    "triton": "pip install -e '.[triton]' (Triton runs on CUDA GPUs; on CPU only with TRITON_INTERPRET=1)",
}


@lru_cache(maxsize=None)
def keops_status() -> str:
    """'' when KeOps compiles and runs a small Cauchy sum correctly here, else the reason it cannot be used."""
    try:
        from models.s4.kernels.keops import keops_self_check
        return keops_self_check()
    except Exception as exc:  # any failure to build or run means: not usable
        return f"{type(exc).__name__}: {exc}"


@lru_cache(maxsize=None)
def triton_status(device_type: str) -> str:
    """'' when Triton kernels can run on tensors of this device type, else the reason."""
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return f"triton is not installed ({exc})"
    if device_type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "Triton runs CPU tensors only in interpreter mode (TRITON_INTERPRET=1, set before triton is imported)"
    if device_type == "cuda" and not torch.cuda.is_available():
        return "no CUDA device"
    return ""


_BACKENDS = Backends("S4 kernel", {"ref": lambda _: "", "keops": lambda _: keops_status(),
                                    "triton": lambda device_type: triton_status(device_type)},
                     order={"cuda": ("triton", "keops", "ref"), "cpu": ("ref",)}, install=INSTALL_HINT)


def resolve_backend(requested: str, device: torch.device | str) -> str:
    """The backend that will run for tensors on ``device``; raises if an explicit request cannot run."""
    return _BACKENDS.resolve(requested, device)


def _impl(op: str, backend: str) -> Callable:
    if backend == "ref":
        return {"cauchy": cauchy_ref, "vandermonde": vandermonde_blocked}[op]
    if backend == "keops":
        from models.s4.kernels import keops
        return getattr(keops, f"{op}_keops")
    from models.s4.kernels import triton_ops
    return getattr(triton_ops, f"{op}_triton")


def cauchy(v: torch.Tensor, z: torch.Tensor, w: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """sum_n v[r, h, n] / (z[l] - w[h, n]): v (R, H, N), z (L,), w (H, N) complex -> (R, H, L)."""
    with autocast_off(v):
        return _impl("cauchy", resolve_backend(backend, v.device))(v, z, w)


def cauchy_conj(v: torch.Tensor, y: torch.Tensor, w: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """S4's case: N/2 conjugate pairs at imaginary nodes, sum_n v/(iy_l - w) + conj(v)/(iy_l - conj(w)).

    v (R, H, N/2), y (L,) real, w (H, N/2) complex -> (R, H, L). The reference folds each pair into one
    real-coefficient term (``cauchy_conj_ref``, half the work); KeOps and Triton sum both members with ``cauchy``.
    """
    backend = resolve_backend(backend, v.device)
    with autocast_off(v):
        if backend == "ref":
            return cauchy_conj_ref(v, y, w)
        full = lambda t: torch.cat([t, t.conj()], dim=-1)  # noqa: E731
        return _impl("cauchy", backend)(full(v), (1j * y).to(v.dtype), full(w))


def vandermonde(v: torch.Tensor, x: torch.Tensor, length: int, backend: str = "auto") -> torch.Tensor:
    """sum_n v[r, h, n] * exp(x[h, n] * l), l < length: v (R, H, N), x (H, N) complex -> (R, H, L).

    The reference backend is ``vandermonde_blocked`` (exp tables for blocks of l and matrix products; the plain
    per-element ``vandermonde_ref`` stays as the ground reference it is tested against)."""
    with autocast_off(v):
        return _impl("vandermonde", resolve_backend(backend, v.device))(v, x, length)
