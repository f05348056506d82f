"""bf16 autocast (models/precision.py): every registered layer trains under it, close to its float32 output, and the
parts that must stay in full precision do: the S4 / S4D kernel and FFT convolution, the recurrences of S5, LRU,
Mamba, LSTM and GRU, and the kernelised attention of the Performer and the linear Transformer.

The dtype checks spy on the real functions (the spy records, then calls through), inside a whole SequenceModel.
"""
from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.utils._pytree import tree_leaves

import models  # noqa: F401  (registers the layers)
import models.efficient_attention as efficient_attention
import models.s4.kernel as s4_kernel
import models.scan as scan_mod
from models.backbone import build_model
from models.precision import at_least_float32, float32_backward
from models.registry import build_layer, list_layers
from models.s4.layer import _FFTConv
from tasks import task_spec

BF16_EPS = 2.0 ** -8  # spacing of bfloat16 numbers just below 1 (8 significant bits)
LOW = {torch.bfloat16, torch.float16}
CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "model"
TINY = {"s4": {"d_state": 8}, "s4d": {"d_state": 8}, "s5": {"d_state": 8, "blocks": 2}, "lru": {"d_state": 8},
        "mamba": {"d_state": 4}, "performer": {"n_features": 32}}


def _tiny_model(name: str, task: str, options: dict, backbone: dict):
    """The layer with its config file's hyperparameters, narrowed: 2 blocks of width 16."""
    spec = task_spec(task, **options)
    cfg = OmegaConf.to_container(OmegaConf.load(CONFIGS / f"{name}.yaml"))
    hparams = {**(cfg.get("hparams") or {}), **TINY.get(name, {})}
    torch.manual_seed(0)
    return build_model(name, spec, {**(cfg.get("backbone") or {}), "d_model": 16, "n_layers": 2, **backbone},
                       hparams), spec


def inputs_for(spec, batch: int, length: int, gen: torch.Generator) -> torch.Tensor:
    if spec.vocab_size:
        return torch.randint(1, spec.vocab_size, (batch, length), generator=gen)
    return torch.randn(batch, length, spec.d_input, generator=gen)


@pytest.mark.parametrize("name", list_layers())
@pytest.mark.parametrize("task,options,backbone", [("listops", {"l_max": 64}, {}),
                                                   ("image", {"input_mode": "real"}, {"norm": "batch"})],
                         ids=["tokens-layernorm", "real-batchnorm"])
def test_bf16_autocast_trains_and_stays_close_to_float32(name, task, options, backbone):
    net, spec = _tiny_model(name, task, options, backbone)
    gen = torch.Generator().manual_seed(1)
    x, lengths = inputs_for(spec, 3, 40, gen), torch.tensor([40, 29, 7])
    y = torch.randint(0, spec.n_classes, (3,), generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = net(x, lengths)
    loss = F.cross_entropy(logits.float(), y)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads), name

    net.eval()
    with torch.no_grad():
        ref = net(x, lengths)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(x, lengths).float()
    # bf16 rounds each projection's output by up to half its spacing; through two blocks the logits measured
    # 1-1.5 x BF16_EPS of their scale (every layer, both inputs). 4 x still catches a path that loses a digit.
    assert (out - ref).abs().max() <= 4 * BF16_EPS * ref.abs().max(), name


# -- the parts that stay in full precision ------------------------------------------------------------------------
def _float_dtypes(obj) -> set[torch.dtype]:
    tensors = [t for t in tree_leaves(obj) if isinstance(t, torch.Tensor)]
    return {t.dtype for t in tensors if t.is_floating_point() or t.is_complex()}


def _spy(monkeypatch, owner, attr: str, calls: list) -> None:
    """Replace owner.attr by a wrapper that records (input dtypes, output dtypes, CPU autocast on?) and calls it."""
    real = getattr(owner, attr)
    static = isinstance(inspect.getattr_static(owner, attr), staticmethod)

    def spy(*args, **kwargs):
        enabled = torch.is_autocast_enabled("cpu")
        out = real(*args, **kwargs)
        calls.append((attr, _float_dtypes((args, kwargs)), _float_dtypes(out), enabled))
        return out

    monkeypatch.setattr(owner, attr, staticmethod(spy) if static else spy)


# layer -> the functions that must run in float32 / complex64 with autocast off. A layer not listed (the softmax
# attention layers use autocast's fused attention by design; a new layer until someone lists its parts) is still
# checked end to end by test_bf16_autocast_trains_and_stays_close_to_float32, which covers every registered layer.
FULL_PRECISION = {
    "s4": [(s4_kernel, "cauchy_conj"), (_FFTConv, "forward")],
    "s4d": [(s4_kernel, "vandermonde"), (_FFTConv, "forward")],
    "s5": [(scan_mod._Scan, "forward")],
    "lru": [(scan_mod._Scan, "forward")],
    "mamba": [(scan_mod._SelectiveScanChunked, "forward")],
    "lstm": [(torch.nn.LSTM, "forward")],
    "gru": [(torch.nn.GRU, "forward")],
    "performer": [(efficient_attention, "favor_features"), (efficient_attention, "linear_attention")],
    "linear_transformer": [(efficient_attention, "linear_attention")],
}


@pytest.mark.parametrize("name", sorted(FULL_PRECISION))
def test_full_precision_parts_never_see_bf16(name, monkeypatch):
    net, spec = _tiny_model(name, "image", {"input_mode": "real"}, {})  # real inputs: a bf16 encoder output
    calls: list = []
    for owner, attr in FULL_PRECISION[name]:
        _spy(monkeypatch, owner, attr, calls)
    gen = torch.Generator().manual_seed(1)
    x, lengths = inputs_for(spec, 2, 24, gen), torch.tensor([24, 13])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        net(x, lengths).float().sum().backward()  # backward inside the region too: the backwards turn it off
    assert {attr for attr, *_ in calls} == {attr for _, attr in FULL_PRECISION[name]}
    for attr, inputs, outputs, enabled in calls:
        assert not enabled, f"{attr} ran with autocast on"
        assert inputs and outputs and not (inputs | outputs) & LOW, (attr, inputs, outputs)
        assert (inputs | outputs) <= {torch.float32, torch.complex64}, (attr, inputs, outputs)


@pytest.mark.parametrize("name", ["s4", "s4d"])
def test_s4_kernel_and_convolution_are_bitwise_float32_under_autocast(name):
    """Kernel generation (discretisation, Cauchy / Vandermonde, inverse FFT) and the FFT convolution, forward and
    backward, give exactly their float32 results when called inside a bf16 autocast region."""
    torch.manual_seed(0)
    layer = build_layer(name, d_model=8, l_max=64, d_state=8, bidirectional=True)
    gen = torch.Generator().manual_seed(1)
    w, u = torch.randn(2, 8, 37, generator=gen), torch.randn(3, 8, 37, generator=gen, requires_grad=True)

    def run(autocast: bool):
        layer.zero_grad()
        u.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            k = layer.kernel(37)                                   # (C, H, L)
            y = _FFTConv.apply(u, k[0])                            # (B, H, L)
            ((k * w).sum() + (y * u.detach()).sum()).backward()
        return [k.detach(), y.detach(), u.grad] + [p.grad for p in layer.kernel.parameters()]

    plain, mixed = run(False), run(True)
    assert mixed[0].dtype == mixed[1].dtype == torch.float32
    assert all(torch.equal(a, b) for a, b in zip(plain, mixed))


def test_float32_backward_turns_autocast_off():
    seen = []

    class Probe(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        @float32_backward
        def backward(ctx, g):
            seen.append(torch.is_autocast_enabled("cpu"))
            return g

    x = torch.ones(3, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        Probe.apply(x).sum().backward()
    assert seen == [False]


def test_at_least_float32():
    assert at_least_float32(torch.ones(2, dtype=torch.bfloat16)).dtype == torch.float32
    assert at_least_float32(torch.ones(2, dtype=torch.float16)).dtype == torch.float32
    for dtype in (torch.float32, torch.float64, torch.complex64, torch.int64):
        assert at_least_float32(torch.ones(2, dtype=dtype)).dtype == dtype
