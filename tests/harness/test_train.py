"""Training: parameter groups from hints, the schedule, learning above chance, and divergence handling."""
import math

import pytest
import torch
from torch import nn

from harness.optim import cosine_with_warmup, param_groups
from harness.train import TrainConfig, fit
from models.backbone import build_model
from tasks.registry import build_task


def test_param_groups_follow_hints_and_skip_decay_for_norms_biases_embeddings():
    model = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 4), nn.LayerNorm(4))
    ssm = nn.Parameter(torch.zeros(4, 4))
    ssm._optim = {"lr": 1e-3, "weight_decay": 0.0}
    model.register_parameter("A", ssm)
    groups = {(g["lr"], g["weight_decay"]): {id(p) for p in g["params"]} for g in param_groups(model, 0.01, 0.05)}
    assert groups[(0.01, 0.05)] == {id(model[1].weight)}
    assert groups[(0.01, 0.0)] == {id(model[0].weight), id(model[1].bias), id(model[2].weight), id(model[2].bias)}
    assert groups[(1e-3, 0.0)] == {id(ssm)}


def test_cosine_with_warmup_shape():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = cosine_with_warmup(opt, warmup_steps=4, total_steps=14)
    lrs = []
    for _ in range(14):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[9] == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 10)))
    assert lrs[-1] < 0.03


@pytest.fixture(scope="module")
def shallow_listops(tmp_path_factory):
    return build_task("listops", tmp_path_factory.mktemp("data"), variant="shallow", l_max=32, batch_size=32)


@pytest.mark.parametrize("layer", ["lstm", "transformer"])
def test_short_fit_learns_easy_listops_clearly_above_chance(shallow_listops, layer):
    torch.manual_seed(0)
    model = build_model(layer, shallow_listops.spec, {"d_model": 64, "n_layers": 2, "dropout": 0.0,
                                                      "pos_encoding": "sinusoidal"})
    rec = fit(model, shallow_listops, TrainConfig(epochs=4, lr=3e-3, warmup_steps=20, seed=0, progress=False),
              model_name=layer)
    assert rec.status == "ok" and rec.steps == 4 * math.ceil(len(shallow_listops.train) / shallow_listops.batch_size)
    # chance is 10% (majority class ~11%); one operator over a few digits is learnable well beyond that
    assert rec.test_acc > 0.35, rec
    assert rec.best_val_acc > 0.35
    assert rec.train_samples_per_s > 0 and rec.train_tokens_per_s > rec.train_samples_per_s
    assert rec.n_params == sum(p.numel() for p in model.parameters())
    assert rec.peak_mem_kind == "cpu_rss_growth" and rec.peak_mem_mib >= 0
    assert rec.device == "cpu" and rec.torch_version == torch.__version__


class _NaNLayer(nn.Module):
    """A model whose loss is NaN from the first step."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, inputs, lengths):
        return torch.full((inputs.shape[0], 10), float("nan")) * self.w


def test_nan_loss_is_recorded_as_diverged(shallow_listops):
    rec = fit(_NaNLayer(), shallow_listops, TrainConfig(max_steps=5, progress=False), model_name="nan")
    assert rec.status == "diverged" and rec.test_acc is None and rec.steps == 0


def test_budget_cut_still_validates_and_tests(shallow_listops):
    torch.manual_seed(0)
    model = build_model("lstm", shallow_listops.spec, {"d_model": 16, "n_layers": 1})
    rec = fit(model, shallow_listops, TrainConfig(epochs=10, max_steps=7, progress=False), model_name="lstm")
    assert rec.steps == 7 and rec.best_val_acc is not None and rec.test_acc is not None
    rec = fit(model, shallow_listops, TrainConfig(epochs=10, time_budget_s=1e-9, progress=False), model_name="lstm")
    assert rec.steps == 1 and rec.test_acc is not None


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("layer", ["transformer", "s4"])
def test_mixed_precision_training_runs_and_learns(shallow_listops, layer, precision):
    torch.manual_seed(0)
    model = build_model(layer, shallow_listops.spec, {"d_model": 32, "n_layers": 1, "dropout": 0.0})
    rec = fit(model, shallow_listops, TrainConfig(max_steps=30, lr=3e-3, precision=precision, progress=False),
              model_name=layer)
    assert rec.status == "ok" and rec.steps == 30 and rec.final_train_loss < 2.2  # ln 10 = 2.30 at the start
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay float32


def test_unknown_precision_is_named():
    with pytest.raises(ValueError, match="unknown precision 'fp8'; known: fp32, bf16, fp16"):
        TrainConfig(precision="fp8")


class _NaNWhenEvaluating(nn.Module):
    """Finite logits while training; NaN ones in eval mode on the splits named in ``nan_on``."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.nan_on = inner, set()

    def forward(self, inputs, lengths):
        out = self.inner(inputs, lengths)
        return out * float("nan") if not self.training and "now" in self.nan_on else out


def test_non_finite_evaluation_outputs_are_never_an_accuracy(shallow_listops):
    """An argmax over NaN logits is class 0, a plausible number: validation NaNs make the run diverged, test
    NaNs an error naming the split; no accuracy either way."""
    import harness.train as train

    torch.manual_seed(0)
    model = _NaNWhenEvaluating(build_model("lstm", shallow_listops.spec, {"d_model": 16, "n_layers": 1}))
    model.nan_on.add("now")
    rec = fit(model, shallow_listops, TrainConfig(max_steps=3, progress=False), model_name="lstm")
    assert rec.status == "diverged" and rec.test_acc is None and rec.best_val_acc is None

    model.nan_on.clear()
    real = train.evaluate_with_loss

    def nan_on_test(m, loader, device, max_batches=None, precision="fp32", split="evaluation"):
        if split == "test":
            m.nan_on.add("now")
        return real(m, loader, device, max_batches, precision, split)

    train.evaluate_with_loss = nan_on_test  # the model itself turns NaN only for the test split
    try:
        rec = fit(model, shallow_listops, TrainConfig(max_steps=3, progress=False), model_name="lstm")
    finally:
        train.evaluate_with_loss = real
    assert rec.status.startswith("error: non-finite outputs in test: ") and rec.test_acc is None
    assert rec.best_val_acc is not None
