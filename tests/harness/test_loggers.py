"""Learning curves to TensorBoard (default) and Weights & Biases: the scalars arrive, a resumed run shows no point
twice, nothing is written before the first row, and a logger that cannot work is refused before anything runs
(the suite-level checks, on real runs, are in test_history.py)."""
import subprocess
import sys
import types
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from harness.config import compose_config, resolve_run_config
from harness.history import History
from harness.loggers import TensorBoardLogger, WandbLogger, build_loggers, logger_names
from harness.records import run_hash
from harness.suite import SuiteError, plan_runs, run_suite

ROOT = Path(__file__).resolve().parents[2]


def _row(step: int, acc: float, split: str = "validation") -> dict:
    extra = {} if split == "test" else {"train_loss": 1.0 / step, "train_acc": acc / 2, "lr": 0.01}
    return dict(step=step, epoch=step / 3, elapsed_s=0.5 * step, split=split, acc=acc, loss=2.0 - acc, **extra)


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in ``log_dir`` as TensorBoard shows it (purged points removed): tag -> [(step, value)]."""
    ea = EventAccumulator(str(log_dir))
    ea.Reload()
    return {tag: [(e.step, round(e.value, 6)) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}


def test_tensorboard_event_files_hold_every_scalar_against_step(tmp_path):
    history = History(tmp_path / "h.parquet", loggers=[TensorBoardLogger(tmp_path / "tb" / "run")])
    for step, acc in [(3, 0.25), (6, 0.5), (9, 0.75)]:
        history.add(**_row(step, acc))
    history.add(**_row(9, 0.7, split="test"))
    history.close()
    history.close()  # the suite closes again after fit: harmless
    got = read_scalars(tmp_path / "tb" / "run")
    assert set(got) == {"val/acc", "val/loss", "train/loss", "train/acc", "lr", "test/acc", "test/loss"}
    assert got["val/acc"] == [(3, 0.25), (6, 0.5), (9, 0.75)]
    assert got["train/loss"] == [(3, round(1 / 3, 6)), (6, round(1 / 6, 6)), (9, round(1 / 9, 6))]
    assert got["test/acc"] == [(9, 0.7)] and got["test/loss"] == [(9, 1.3)]
    ea = EventAccumulator(str(tmp_path / "tb" / "run"))
    ea.Reload()
    times = [e.wall_time for e in ea.Scalars("val/acc")]
    assert times[2] - times[0] == pytest.approx(3.0, abs=0.01)  # event time = start + elapsed_s (0.5 s per step)


def test_resumed_run_shows_no_point_twice(tmp_path):
    log_dir = tmp_path / "tb" / "run"
    first = History(None, loggers=[TensorBoardLogger(log_dir)])
    for step, acc in [(3, 0.25), (6, 0.5), (9, 0.6)]:  # killed after step 9; its checkpoint was at step 3
        first.add(**_row(step, acc))
    checkpoint_rows = first.state()[:1]
    first.close()

    again = History(None, loggers=[TensorBoardLogger(log_dir)])  # the next process, as train.fit resumes
    again.restore(checkpoint_rows)
    for step, acc in [(6, 0.55), (9, 0.65), (12, 0.8)]:
        again.add(**_row(step, acc))
    again.close()
    got = read_scalars(log_dir)
    assert got["val/acc"] == [(3, 0.25), (6, 0.55), (9, 0.65), (12, 0.8)]
    assert [s for s, _ in got["lr"]] == [3, 6, 9, 12]


def test_fresh_run_hides_an_earlier_attempt_of_the_same_run(tmp_path):
    log_dir = tmp_path / "tb" / "run"
    for accs in ([0.1, 0.2], [0.3, 0.4]):  # e.g. an oom attempt, then the retry from scratch (no checkpoint)
        history = History(None, loggers=[TensorBoardLogger(log_dir)])
        for step, acc in zip((3, 6), accs):
            history.add(**_row(step, acc))
        history.close()
    assert read_scalars(log_dir)["val/acc"] == [(3, 0.3), (6, 0.4)]


def test_loggers_write_nothing_before_the_first_row(tmp_path):
    history = History(None, loggers=build_loggers("tensorboard", tmp_path, "listops__s4__seed0__abc"))
    history.restore([])
    history.close()
    assert not (tmp_path / "tb").exists()


@pytest.mark.parametrize("value, names", [("tensorboard", ["tensorboard"]), ("none", []), (None, []), ([], []),
                                          (["tensorboard", "wandb", "tensorboard"], ["tensorboard", "wandb"]),
                                          ("WandB", ["wandb"])])
def test_logger_setting_names_loggers(value, names):
    assert logger_names(value) == names


@pytest.mark.parametrize("value", ["tensorbord", ["tensorboard", "none"], "mlflow"])
def test_misspelt_logger_is_refused_with_the_accepted_values(value):
    with pytest.raises(ValueError, match="accepted: tensorboard, wandb, none"):
        logger_names(value)


def test_a_misspelt_logger_refuses_the_dry_run_too():
    with pytest.raises(ValueError, match="unknown logger.*'tensorbord'.*accepted: tensorboard, wandb, none"):
        plan_runs(compose_config(["logger=tensorbord"]))


def test_missing_wandb_refuses_the_suite_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed, whatever this environment holds
    cfg = compose_config([f"results_dir={tmp_path / 'results'}", "logger=[tensorboard,wandb]", "models=[lstm]",
                          "tasks=[listops]", "efficiency=null"])
    with pytest.raises(SuiteError) as exc:
        run_suite(cfg)
    assert str(exc.value) == ("logger=wandb needs the wandb package, which is not installed: pip install wandb")
    assert not (tmp_path / "results").exists()


@pytest.mark.skipif(__import__("importlib").util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_missing_wandb_is_one_line_on_the_command_line(tmp_path):
    proc = subprocess.run([sys.executable, "run_suite.py", "logger=wandb", f"results_dir={tmp_path}/r",
                           "hydra.run.dir=" + str(tmp_path / "hydra")], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == ("error: logger=wandb needs the wandb package, which is not "
                                                    "installed: pip install wandb")
    assert not (tmp_path / "r").exists()


def test_logger_does_not_enter_the_config_hash():
    hashes = {run_hash(resolve_run_config(compose_config(o), "listops", "s4", 0))
              for o in ([], ["logger=none"], ["logger=[tensorboard,wandb]"])}
    assert len(hashes) == 1


class _FakeRun:
    def __init__(self, step: int):
        self.step, self.logged, self.finished = step, [], False

    def log(self, data, step):
        self.logged.append((step, data))

    def finish(self):
        self.finished = True


def test_wandb_resumes_its_run_and_skips_steps_it_holds(tmp_path, monkeypatch):
    inits, server = [], {}

    def init(**kw):  # a W&B server that remembers each run's last step
        inits.append(kw)
        run = _FakeRun(server.get(kw["id"], 0) if kw["resume"] == "allow" else 0)
        server.setdefault(kw["id"], 0)
        original = run.log
        run.log = lambda data, step: (original(data, step), server.__setitem__(kw["id"], step + 1))
        return run
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    monkeypatch.delenv("WANDB_PROJECT", raising=False)

    name = "listops__s4__seed0__abc"
    first = WandbLogger(tmp_path, name, {"train": {"lr": 0.01}}, group="quick")
    history = History(None, loggers=[first])
    for step in (3, 6, 9):
        history.add(**_row(step, 0.5))
    run_a = first._run
    history.close()
    assert run_a.finished and [s for s, _ in run_a.logged] == [3, 6, 9]
    assert run_a.logged[0][1]["val/acc"] == 0.5 and "test/acc" not in run_a.logged[0][1]

    again = WandbLogger(tmp_path, name, {}, group="quick")
    history = History(None, loggers=[again])
    history.restore([_row(3, 0.5)])
    for step in (6, 9, 12):
        history.add(**_row(step, 0.6))
    history.add(**_row(12, 0.7, split="test"))
    run_b = again._run
    history.close()
    assert inits[0]["id"] == inits[1]["id"] and inits[0]["name"] == name and inits[0]["project"] == "lrbench"
    assert inits[0]["group"] == "quick" and inits[0]["config"] == {"train": {"lr": 0.01}}
    assert [s for s, _ in run_b.logged] == [12, 12]  # 6 and 9 are on the server already
    assert run_b.logged[1][1]["test/acc"] == 0.7

    fresh = WandbLogger(tmp_path, name, {})  # a fresh start of the same run is a new W&B run
    History(None, loggers=[fresh]).add(**_row(3, 0.1))
    assert inits[2]["id"] != inits[0]["id"]
