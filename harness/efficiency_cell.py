"""One efficiency cell measured in the current process (the child that ``harness.efficiency.run_efficiency`` starts
per cell): the training step, inference and generation of one (model, length), and the model's recurrent mode that
benchmarks/generation.py also times. What is measured and how is harness/efficiency.py's docstring."""
from __future__ import annotations

import dataclasses
import time
from typing import Any

from harness.efficiency import EfficiencyConfig, cell_settings

__all__ = ["cell_job", "generation_model", "generation_rate", "measure_cell"]


# -- generation: the model's recurrent mode ---------------------------------------------------------------------
def generation_model(model: str, settings: dict[str, Any], l_max: int, device) -> Any:
    """The causal variant of ``model`` (``settings`` from ``cell_settings``) on the Text task's shape with positions
    (and a key/value cache) for ``l_max`` tokens, in eval mode on ``device``; a string "n/a: <why>" when it has no
    recurrent mode."""
    import torch

    from models.backbone import build_model
    from tasks import task_spec

    if settings.get("causal_hparams") is None:
        return f"n/a: {settings.get('causal_na', 'no causal form')}"
    torch.manual_seed(0)
    try:
        net = build_model(model, task_spec("text", l_max=l_max), settings["backbone"], settings["causal_hparams"])
    except ValueError as exc:  # no causal form
        return f"n/a: {exc}"
    if not all(hasattr(block.layer, "step") for block in net.blocks):
        return "n/a: no recurrent mode"
    return net.to(device).eval()


def _prefill(state: Any, context: int) -> Any:
    """``state`` as after ``context`` tokens: each key/value cache holds ``context`` positions (random keys and values:
    the cost of attending to them does not depend on their values); fixed-size states are used as they are (their
    per-token cost does not depend on the position)."""
    from models.transformer import KVCache

    blocks = []
    for s in state.blocks:
        if isinstance(s, KVCache):
            s.k[:, :, :context].normal_(), s.v[:, :, :context].normal_()
            s = dataclasses.replace(s, filled=context)
        blocks.append(s)
    return dataclasses.replace(state, blocks=tuple(blocks), position=context) if context else state


def generation_rate(net: Any, batch: int, n_tokens: int, device, context: int = 0, rounds: int = 1,
                    warmup: int = 4) -> dict[str, Any]:
    """Time ``batch`` sequences grown by ``n_tokens`` tokens through ``net.step`` from position ``context`` (state
    from ``net.default_state``, prefilled to ``context``): ``warmup`` steps first, then ``rounds`` timed runs from the
    same prefilled state; the fastest run gives tokens/s (all sequences' tokens) and ms per step. Also the SDPA
    kernel the steps ran. The tokens fed are random ids (the model has no language-model head to sample from)."""
    import torch

    from harness.measure import SDPABackends, time_calls

    ids = torch.randint(1, net.encoder.embed.num_embeddings, (n_tokens, batch), device=device)
    with torch.inference_mode():
        start = _prefill(net.default_state(batch), context)

        def run(steps: int = n_tokens) -> None:
            state = start
            for t in range(steps):
                _, state = net.step(ids[t], state)

        with SDPABackends() as sdpa:
            run(min(warmup, n_tokens))   # the first steps build what a layer caches (S4's discrete matrices)
        seconds = min(time_calls(run, device, rounds))
    return {"gen_tokens_per_s": batch * n_tokens / seconds, "gen_step_ms": 1000 * seconds / n_tokens,
            "sdpa_backend": str(sdpa)}


def _generation(model: str, settings: dict, cfg: EfficiencyConfig, length: int, device) -> dict[str, Any]:
    """tokens/s of growing ``gen_batch`` sequences from the zero state through the model's recurrent mode."""
    n_tokens = min(length, cfg.gen_max_len)
    net = generation_model(model, settings, n_tokens, device)
    if isinstance(net, str):
        return {"gen_status": net}
    rate = generation_rate(net, cfg.gen_batch, n_tokens, device)
    return {"gen_status": "ok", "gen_tokens_per_s": rate["gen_tokens_per_s"], "gen_len": n_tokens,
            "gen_batch": cfg.gen_batch}


def measure_cell(model: str, length: int, cfg: EfficiencyConfig, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every figure of one (model, length), in this process; the fields of an EfficiencyRecord. ``settings``: the
    model's resolved settings (``cell_settings``; resolved here from ``cfg`` when not given)."""
    import torch
    import torch.nn.functional as F

    import models  # noqa: F401  (registers the layers)
    from core.env import resolve_device
    from harness.measure import PeakMemory, SDPABackends, median_time, synchronize
    from harness.optim import param_groups
    from models.backbone import build_model
    from models.registry import kernel_backends
    from tasks import task_spec

    device = resolve_device(cfg.device)
    settings = settings if settings is not None else cell_settings(model, cfg)
    spec = task_spec("text", l_max=length)      # the byte-level Text task's shape: vocabulary 257, 2 classes
    torch.manual_seed(0)
    net = build_model(model, spec, settings["backbone"], settings["hparams"]).to(device)
    opt = torch.optim.AdamW(param_groups(net, 1e-4, 0.0))
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(1, spec.vocab_size, (cfg.batch_size, length), generator=gen).to(device)
    lengths = torch.full((cfg.batch_size,), length, dtype=torch.long, device=device)
    y = torch.randint(0, spec.n_classes, (cfg.batch_size,), generator=gen).to(device)

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x, lengths), y).backward()
        opt.step()

    out: dict[str, Any] = {"n_params": sum(p.numel() for p in net.parameters()), "warmup": cfg.warmup,
                           "repeats": cfg.repeats, "settings": settings,
                           "attn_dropout": settings["hparams"].get("attn_dropout")}
    net.train()
    synchronize(device)
    t0 = time.perf_counter()
    with PeakMemory(device) as mem, SDPABackends() as sdpa:
        train_step()
    first = time.perf_counter() - t0
    out.update(peak_mem_mib=mem.peak_mib, peak_mem_kind=mem.kind, sdpa_backend=str(sdpa))
    out["kernel_backend"] = kernel_backends(net)
    if first > cfg.cell_budget_s:
        return {**out, "status": "over_budget", "train_step_ms": 1000 * first}
    for _ in range(cfg.warmup - 1):
        train_step()
    step = median_time(train_step, device, cfg.repeats)
    out.update(status="ok", train_step_ms=1000 * step, train_steps_per_s=1 / step)
    del opt
    net.eval()
    with torch.inference_mode():
        with SDPABackends() as sdpa:
            net(x, lengths)
        infer = median_time(lambda: net(x, lengths), device, cfg.repeats)
    out.update(infer_samples_per_s=cfg.batch_size / infer, sdpa_backend_infer=str(sdpa))
    out.update(_generation(model, settings, cfg, length, device))
    return out


def cell_job(job: dict[str, Any]) -> dict[str, Any]:
    """The child process's side of ``_run_child`` (through ``harness.measure.run_child``)."""
    return measure_cell(job["model"], int(job["length"]), EfficiencyConfig(**job["cfg"]), job.get("settings"))
