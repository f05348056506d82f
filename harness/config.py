"""One resolver for the configuration of every run, with the source of every value.

Every tool that needs a run's settings (the suite runner and its dry run, the efficiency sweep, ``python -m tasks``,
``harness.params``, benchmarks and tests) calls ``resolve_run``; config files are read in one way only
(``read_config``: a Hydra compose of the file under ``configs/``).

A run's configuration is built from layers, later ones winning, each value remembering the layer that set it:

    defaults        configs/train/<train>.yaml; configs/task/<task>.yaml ``options``
    model file      configs/model/<model>.yaml; its ``causal`` block when the task reads out causally
                    (``causal: true`` in the task file); its ``per_task.<task>`` block
    recipe          configs/recipes/<recipe>/<model>.yaml (its ``base`` model's blocks it takes, ``all_tasks``,
                    ``per_task.<task>``), when the suite names a recipe
    suite           configs/suite/<suite>.yaml ``train``, ``model_overrides.<model>``, ``task_overrides.<task>``
    command line    the same three keys given on the command line (``train.epochs=1``,
                    ``+model_overrides.s4.hparams.d_state=32``, ``+task_overrides.listops.batch_size=16``)

Nothing sits above the command line: a value set there reaches every run it applies to. Within a layer, the
``train`` block comes first, then ``model_overrides`` and then ``task_overrides`` (the more specific block wins); for
an efficiency sweep's cells the ``efficiency`` block's width, depth and heads come after ``model_overrides`` (one
size for every model: a suite's per-model training widths do not leak into the speed comparison).
A model or recipe block may hold ``task:`` (task options, e.g. a batch size) and ``train:`` entries beside the
model's ``name``, ``hparams`` and ``backbone``.

The resolved config is ``{suite, recipe, task: {name, options}, model: {name, hparams, backbone, comparison},
train: {...}, deviations: [...], data_dir}`` (``deviations``: what the recipe knowingly does differently from the
source it cites, copied into the record's task info); ``Run.sources`` maps every dotted leaf path of it (``train.lr``,
``model.backbone.d_model``) to the file and block, or the command-line override, that set it.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig, OmegaConf

from core.configs import CONFIGS, config_exists, hydra_context, read_config, task_options
from core.registry import check_names

__all__ = ["CONFIGS", "Run", "check_command_line", "suite_lists", "read_config", "config_exists", "command_line", "recipe_layers", "resolve_run",
           "resolve_run_config", "task_options", "efficiency_layer", "compose_config"]

log = logging.getLogger(__name__)
COMMAND_LINE = "command line"
RECIPE_KEYS = ("base", "all_tasks", "per_task", "comparison")
MODEL_FILE_KEYS = ("name", "hparams", "backbone", "train", "task", "per_task", "causal")
MODEL_KEYS = ("name", "hparams", "backbone", "comparison")  # what a resolved model block may hold


@dataclass(frozen=True)
class Run:
    """One planned (task, model, seed): its resolved config and the source of each of its values."""
    task: str
    model: str
    seed: int
    config: dict[str, Any]
    sources: dict[str, str] = field(default_factory=dict)

    def as_json_dict(self) -> dict[str, Any]:
        return {"task": self.task, "model": self.model, "seed": self.seed, "config": self.config,
                "sources": self.sources}


# -- the command line -------------------------------------------------------------------------------------------
GROUPS = ("suite", "train")  # config groups: `suite=lra` chooses a file, it sets no value


def command_line(cfg: DictConfig) -> list[str]:
    """The command-line overrides that made ``cfg``: from the running Hydra application (``run_suite.py``), else from
    its ``hydra`` node (``compose(..., return_hydra_config=True)``, as ``compose_config`` does), else none known (then
    ``cfg``'s values that differ from the files still rank as the command line's: ``_command_line_values``)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return list(HydraConfig.get().overrides.task)
    if "hydra" in cfg and OmegaConf.select(cfg, "hydra.overrides.task") is not None:
        return list(OmegaConf.select(cfg, "hydra.overrides.task"))
    return []


def _group_choice(cfg: DictConfig, group: str, default: str) -> str:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get(group)
    else:
        choice = OmegaConf.select(cfg, f"hydra.runtime.choices.{group}") if "hydra" in cfg else None
    for override in _parsed(command_line(cfg)):
        if override.key_or_group == group and isinstance(override.value(), str):
            choice = choice or override.value()
    return str(choice or default)


def _parsed(overrides: list[str]) -> tuple:
    return _parse(tuple(overrides)) if overrides else ()


@functools.lru_cache(maxsize=64)
def _parse(overrides: tuple[str, ...]) -> tuple:
    """Hydra's own parse of a command line, once per distinct command line (a suite resolves many runs from one)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return tuple(OverridesParser.create().parse_overrides(list(overrides)))


def _cli_deleted(cfg: DictConfig) -> list[str]:
    """Dotted keys the command line deleted (``~task_overrides.listops.variant``): the suite's value is withdrawn."""
    return [o.key_or_group for o in _parsed(command_line(cfg)) if o.is_delete()]


def _without(tree: Any, prefix: str, deleted: list[str]) -> Any:
    """``tree`` (found at dotted ``prefix``) without the leaves the command line deleted."""
    if not isinstance(tree, dict):
        return tree
    out = {}
    for k, v in tree.items():
        path = f"{prefix}.{k}" if prefix else str(k)
        if path in deleted:
            continue
        out[k] = _without(v, path, deleted)
    return out


def _cli_keys(cfg: DictConfig) -> list[tuple[str, str]]:
    """(dotted key, the override as typed) of every value the command line set, in command-line order."""
    out, typed = [], command_line(cfg)
    for override, text in zip(_parsed(typed), typed):
        key = override.key_or_group
        if override.is_delete() or (key in GROUPS and isinstance(override.value(), str)):
            continue
        out.append((key, text))
    return out


# -- layers -----------------------------------------------------------------------------------------------------
def _split_block(block: dict[str, Any]) -> dict[str, Any]:
    """A model/recipe/override block as a partial run config: its ``task`` entries are task options, its ``train``
    entries training settings, the rest the model's."""
    block = dict(block or {})
    out: dict[str, Any] = {}
    if "deviations" in block:  # a recipe's kept differences from its source, copied into the record's task info
        out["deviations"] = list(block.pop("deviations") or [])
    task, train = block.pop("task", None), block.pop("train", None)
    if task:
        out["task"] = {"options": task}
    if train:
        out["train"] = train
    if block:
        out["model"] = block
    return out


def recipe_layers(recipe: str | None, task: str, model: str, _seen: tuple[str, ...] = ()) -> list[tuple[str, dict]]:
    """The layers of ``configs/recipes/<recipe>/<model>.yaml`` for ``task``, lowest first ([] when the recipe has no
    file for the model). A recipe file has up to four keys:

        base: {model: transformer, take: [task, train]}   # start from those parts of another model's blocks
        all_tasks: {...}                                  # then settings shared by every task
        per_task: {<task>: {...}}                         # then this task's own
        comparison: apples-to-apples | free-for-all       # the parameter rule (harness/params.py), copied to records
    """
    if not recipe:
        return []
    folder = CONFIGS / "recipes" / recipe
    if not folder.is_dir():
        known = sorted(p.name for p in (CONFIGS / "recipes").iterdir() if p.is_dir())
        raise KeyError(f"unknown recipe {recipe!r}; known: {', '.join(known)}")
    if not config_exists(f"recipes/{recipe}/{model}"):
        return []
    name = f"configs/recipes/{recipe}/{model}.yaml"
    raw = read_config(f"recipes/{recipe}/{model}")
    unknown = sorted(set(raw) - set(RECIPE_KEYS))
    if unknown:
        raise KeyError(f"{name}: unknown key(s) {', '.join(unknown)}; a recipe file has {', '.join(RECIPE_KEYS)}")
    layers: list[tuple[str, dict]] = []
    if "comparison" in raw:  # the file's rule, which a task's own block may restate
        layers.append((f"{name}: comparison", {"model": {"comparison": raw["comparison"]}}))
    if raw.get("base"):
        base = raw["base"]
        if base.get("model") == model or base.get("model") in _seen:
            raise KeyError(f"{name}: base model {base.get('model')!r} leads back to {model!r}")
        take = list(base.get("take", []))
        for label, part in recipe_layers(recipe, task, base["model"], (*_seen, model)):
            kept = {k: v for k, v in _split_back(part).items() if k in take}
            if kept:
                layers.append((f"{label} (taken by {name}: base.take {take})", _split_block(kept)))
    if raw.get("all_tasks"):
        layers.append((f"{name}: all_tasks", _split_block(raw["all_tasks"])))
    if (raw.get("per_task") or {}).get(task):
        layers.append((f"{name}: per_task.{task}", _split_block(raw["per_task"][task])))
    return layers


def _split_back(part: dict[str, Any]) -> dict[str, Any]:
    """The inverse of ``_split_block``: a partial run config as a block (``task``, ``train``, model keys)."""
    out = dict(part.get("model") or {})
    out.pop("comparison", None)  # a model's parameter rule is its own recipe's, never inherited
    if (part.get("task") or {}).get("options"):
        out["task"] = part["task"]["options"]
    if part.get("train"):
        out["train"] = part["train"]
    if part.get("deviations"):
        out["deviations"] = part["deviations"]
    return out


def efficiency_layer(block: dict[str, Any], model: str) -> dict[str, Any]:
    """The model settings an efficiency sweep sets on every layer: width, depth and (attention layers) heads."""
    accepts_heads = _accepts_heads(model)
    out: dict[str, Any] = {"model": {"backbone": {}}}
    for key in ("d_model", "n_layers"):
        if key in block:
            out["model"]["backbone"][key] = block[key]
    if accepts_heads and "n_heads" in block:
        out["model"]["hparams"] = {"n_heads": block["n_heads"]}
    return out


def _layers(cfg: DictConfig, task: str, model: str, causal: bool | None,
            efficiency: bool) -> list[tuple[str, dict[str, Any]]]:
    task_file = read_config(f"task/{task}") if config_exists(f"task/{task}") else {}
    if not config_exists(f"model/{model}"):
        raise KeyError(f"model {model!r} is registered but has no configs/model/{model}.yaml")
    model_file = read_config(f"model/{model}")
    unknown = sorted(set(model_file) - set(MODEL_FILE_KEYS))
    if unknown:
        raise KeyError(f"configs/model/{model}.yaml: unknown key(s) {', '.join(unknown)}; a model file has "
                       f"{', '.join(MODEL_FILE_KEYS)}")
    train_choice = _group_choice(cfg, "train", "default")
    layers: list[tuple[str, dict]] = [
        (f"configs/train/{train_choice}.yaml", {"train": read_config(f"train/{train_choice}")}),
        (f"configs/task/{task}.yaml: options", {"task": {"options": task_file.get("options") or {}}}),
        (f"configs/model/{model}.yaml", _split_block({k: v for k, v in model_file.items()
                                                      if k not in ("per_task", "causal")})),
    ]
    if causal if causal is not None else bool(task_file.get("causal")):
        if "causal" not in model_file:
            raise ValueError(f"{model} has no causal form (configs/model/{model}.yaml has no causal: block), and "
                             f"{task if causal is None else 'this run'} reads out causally")
        layers.append((f"configs/model/{model}.yaml: causal", _split_block(model_file["causal"] or {})))
    if (model_file.get("per_task") or {}).get(task):
        layers.append((f"configs/model/{model}.yaml: per_task.{task}", _split_block(model_file["per_task"][task])))
    layers += recipe_layers(cfg.get("recipe"), task, model)

    suite_choice = _group_choice(cfg, "suite", str(cfg.get("suite_name", "")))
    suite_file = read_config(f"suite/{suite_choice}") if config_exists(f"suite/{suite_choice}") else {}
    deleted = _cli_deleted(cfg)
    if deleted:  # a suite (or default) value the command line withdrew
        suite_file = _without(suite_file, "", deleted)
        layers[0] = (layers[0][0], {"train": _without(layers[0][1]["train"], "train", deleted)})
    name = f"configs/suite/{suite_choice}.yaml"
    if suite_file.get("train"):
        layers.append((f"{name}: train", {"train": suite_file["train"]}))
    eff_block = dict(suite_file.get("efficiency") or {})
    if (suite_file.get("model_overrides") or {}).get(model):
        layers.append((f"{name}: model_overrides.{model}", _split_block(suite_file["model_overrides"][model])))
    if efficiency and eff_block:  # the sweep's one width, depth and head count for every model: above the training
        layers.append((f"{name}: efficiency", efficiency_layer(eff_block, model)))  # runs' per-model widths
    if (suite_file.get("task_overrides") or {}).get(task):
        layers.append((f"{name}: task_overrides.{task}", {"task": {"options": suite_file["task_overrides"][task]}}))

    base = {"train": {**layers[0][1]["train"], **(suite_file.get("train") or {})},
            "efficiency": eff_block, "model_overrides": suite_file.get("model_overrides") or {},
            "task_overrides": suite_file.get("task_overrides") or {}}
    cli: dict[str, list[tuple[str, dict]]] = {head: [] for head in LAYERED}
    for label, key, value in _command_line_values(cfg, base):
        head, *rest = key.split(".")
        if head == "train":
            cli[head].append((label, {"train": _nest(rest, value)}))
        elif head == "efficiency" and efficiency:
            cli[head].append((label, efficiency_layer(_nest(rest, value), model)))
        elif head == "model_overrides":
            block = _nest(rest, value)
            if isinstance(block, dict) and model in block:
                cli[head].append((label, _split_block(block[model])))
        elif head == "task_overrides":
            block = _nest(rest, value)
            if isinstance(block, dict) and task in block:
                cli[head].append((label, {"task": {"options": block[task] or {}}}))
    for head in LAYERED:
        layers += cli[head]
    return layers


LAYERED = ("train", "model_overrides", "efficiency", "task_overrides")  # top-level keys that feed run layers, in order


def _select(cfg: DictConfig, key: str) -> Any:
    node = OmegaConf.select(cfg, key)
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _lookup(tree: Any, path: str) -> tuple[bool, Any]:
    for part in path.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return False, None
        tree = tree[part]
    return True, tree


def _command_line_values(cfg: DictConfig, files: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """(source, dotted key, value) of everything above the suite file: each command-line override of ``train``,
    ``efficiency``, ``model_overrides`` or ``task_overrides``, in command-line order; then any value ``cfg`` holds
    there that neither the files (``files``: defaults and suite) nor the command line explain (a config edited in
    Python, or composed without keeping its command line), which ranks with the command line too."""
    out, covered = [], []
    for key, text in _cli_keys(cfg):
        if key.split(".")[0] in LAYERED:
            out.append((f"{COMMAND_LINE}: {text}", key, _select(cfg, key)))
            covered.append(key)
    for head in LAYERED:
        for path, value in _flatten(_select(cfg, head) or {}, head):
            if any(path == k or path.startswith(k + ".") for k in covered):
                continue
            found, stored = _lookup(files, path)
            if not found or stored != value:
                out.append((f"{COMMAND_LINE} (or the config object): {path}={value!r}", path, value))
    return out


def suite_lists(cfg: DictConfig, warn: bool = True) -> tuple[list[str], list[str], list[int]]:
    """The suite's ``tasks``, ``models`` and ``seeds`` as lists: a bare name (``models=lstm``) is a one-element list
    (not one model per character), a repeated entry is dropped (logged once, with ``warn``), seeds must be integers."""
    out: list[list] = []
    for key in ("tasks", "models", "seeds"):
        value = cfg.get(key)
        value = [] if value is None else [value] if isinstance(value, (str, int)) else list(value)
        if key == "seeds":
            if not all(isinstance(v, int) and not isinstance(v, bool) or str(v).lstrip("-").isdigit() for v in value):
                raise ValueError(f"seeds must be integers, e.g. 'seeds=[0,1,2]'; got {cfg.get(key)!r}")
            value = [int(v) for v in value]
        else:
            value = [str(v) for v in value]
        repeated = sorted({str(v) for v in value if value.count(v) > 1})
        if repeated and warn:
            log.warning("%s: %s repeated; each runs once", key, ", ".join(repeated))
        out.append(list(dict.fromkeys(value)))
    return out[0], out[1], out[2]


def check_command_line(cfg: DictConfig) -> list[str]:
    """Nothing set on the command line is silently ignored: a ``model_overrides`` / ``task_overrides`` entry naming
    no registered model or task (a misspelling) is refused with a ValueError; one naming a model or task this suite
    does not run is returned as a warning (the caller logs it). The ``logger`` setting is checked too: an unknown
    name is refused with the accepted ones, a logger whose package is missing with its install command
    (``harness.loggers.check_loggers``)."""
    import models  # noqa: F401  (registers the layers)
    import tasks  # noqa: F401  (registers the tasks)
    from harness.loggers import check_loggers
    from models.registry import list_layers
    from tasks.registry import list_tasks

    check_loggers(_select(cfg, "logger") if "logger" in cfg else None)
    warnings = []
    suite_tasks, suite_models, _ = suite_lists(cfg, warn=False)
    for key, text in _cli_keys(cfg):
        head, *rest = key.split(".")
        if head not in ("model_overrides", "task_overrides"):
            continue
        names = list(rest[:1]) if rest else list((_select(cfg, key) or {}).keys())
        if head == "model_overrides":
            registered, in_suite, kind = list_layers(), suite_models, "models"
        else:
            registered, in_suite, kind = list_tasks(), suite_tasks, "tasks"
        for name in names:
            if name not in registered:
                raise ValueError(f"command line {text!r} sets {head}.{name}, but there is no such {kind[:-1]}; "
                                 f"known: {', '.join(registered)}")
            if name not in in_suite:
                warnings.append(f"command line {text!r} reaches no run: {name!r} is not among this suite's {kind} "
                                f"({', '.join(in_suite)})")
    return warnings


def _accepts_heads(model: str) -> bool:
    import inspect

    import models  # noqa: F401  (registers the layers)
    from models.registry import layer_factory

    return "n_heads" in inspect.signature(layer_factory(model)).parameters


def _nest(path: list[str], value: Any) -> Any:
    for part in reversed(path):
        value = {part: value}
    return value


def _flatten(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(tree, dict) and (tree or not prefix):
        for k, v in tree.items():
            yield from _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif prefix and not isinstance(tree, dict):
        yield prefix, tree


def _set(tree: dict, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for part in parents:
        if not isinstance(tree.get(part), dict):
            tree[part] = {}
        tree = tree[part]
    tree[leaf] = value


# -- resolving --------------------------------------------------------------------------------------------------
def resolve_run(cfg: DictConfig, task: str, model: str, seed: int = 0, *, causal: bool | None = None,
                efficiency: bool = False, extra: list[tuple[str, dict[str, Any]]] | tuple = ()) -> Run:
    """The fully resolved configuration of one (task, model, seed) run of suite ``cfg``, and each value's source.

    ``causal``: None follows the task file (``causal: true`` applies the model's causal block); True/False force it
    (the efficiency sweep's generation uses the causal form). ``efficiency``: apply the suite's ``efficiency:`` width,
    depth and heads (the sweep's cells). ``extra``: (source, partial run config) layers above all others (for
    callers that set values in Python)."""
    import models  # noqa: F401  (registers the layers)
    import tasks  # noqa: F401  (registers the tasks)
    from harness.train import TrainConfig
    from models.registry import list_layers
    from tasks.registry import list_tasks

    for group, name, known in (("task", task, list_tasks()), ("model", model, list_layers())):
        if name not in known:
            raise KeyError(f"unknown {group} {name!r}; known: {', '.join(known)}")
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for label, part in [*_layers(cfg, task, model, causal, efficiency), *extra]:
        for path, value in _flatten(part):
            # a value set to a block replaces the leaves under it (and a block set to a value replaces the block)
            for old in [p for p in values if p.startswith(path + ".") or path.startswith(p + ".")]:
                del values[old], sources[old]
            values[path], sources[path] = value, label
    typed = dict(_cli_keys(cfg))
    top_source = {k: f"{COMMAND_LINE}: {typed[k]}" if k in typed else "configs/config.yaml or the suite file"
                  for k in ("device", "data_dir")}
    values["train.seed"], sources["train.seed"] = seed, "the suite's seeds"
    values["train.device"], sources["train.device"] = str(cfg.device), top_source["device"]
    config: dict[str, Any] = {"suite": cfg.get("suite_name"), "recipe": cfg.get("recipe"),
                              "task": {"name": task, "options": {}}, "model": {"name": model}, "train": {}}
    for path, value in values.items():
        _set(config, path, value)
    config["model"]["name"] = model if config["model"].get("name") in (None, model) else config["model"]["name"]
    config.setdefault("deviations", [])
    config["data_dir"] = str(Path(str(cfg.data_dir)).expanduser())
    sources["data_dir"] = top_source["data_dir"]
    stray = sorted(set(config["model"]) - set(MODEL_KEYS))
    if stray:  # e.g. +model_overrides.lstm.trian.lr: a block no builder reads would be silently ignored
        where = "; ".join(f"{k!r} from {sorted({v for p, v in sources.items() if p.split('.')[:2] == ['model', k]})[0]}"
                          for k in stray)
        raise TypeError(f"unknown model setting(s) {', '.join(map(repr, stray))}; a model block has "
                        f"{', '.join(MODEL_KEYS)} (and task, train) ({where})")
    accepted = [f.name for f in fields(TrainConfig)]
    try:
        check_names(config["train"], accepted, "train")
    except TypeError as exc:  # and where each unknown name was set
        unknown = sorted(set(config["train"]) - set(accepted))
        where = "; ".join(f"{b!r} from {sources.get('train.' + b, '?')}" for b in unknown)
        raise TypeError(f"{exc} ({where})") from None
    _check_values(config, sources)
    return Run(task=task, model=model, seed=int(seed), config=config, sources=dict(sorted(sources.items())))


def _check_values(config: dict[str, Any], sources: dict[str, str]) -> None:
    """Refuse, before anything runs, a value of the wrong type (``train.grad_clip=abc``, an empty ``train.max_steps=``,
    ``length=abc``) or a size that trains or selects nothing (``train.epochs=-1``, ``backbone.n_layers=0``): the
    message names the option, the value and the file or command line that set it."""
    from core.registry import check_types
    from harness.train import TrainConfig
    from models.backbone import BackboneConfig
    from models.registry import layer_factory
    from tasks.registry import task_builder

    model = config["model"]
    checks = [("task.options", lambda: check_types(task_builder(config["task"]["name"]), config["task"]["options"],
                                                  f"task {config['task']['name']!r} option ")),
              ("model.hparams", lambda: check_types(layer_factory(model["name"]), model.get("hparams") or {},
                                                    f"layer {model['name']!r} option ")),
              ("model.backbone", lambda: BackboneConfig(**(model.get("backbone") or {}))),
              ("train", lambda: TrainConfig(**config["train"]))]
    for block, check in checks:
        try:
            check()
        except (TypeError, ValueError) as exc:
            name = getattr(exc, "option", None)  # set by check_types / check_ranges
            if name is None:  # a misspelt name or an unknown choice: the builder's own check says it when the run
                continue      # starts, with the accepted names
            where = sources.get(f"{block}.{name}")
            raise type(exc)(f"{exc}" + (f" (set by {where})" if where else "")) from None


def resolve_run_config(cfg: DictConfig, task: str, model: str, seed: int = 0) -> dict[str, Any]:
    """``resolve_run(...).config``: the fully resolved, JSON-able configuration of one run."""
    return resolve_run(cfg, task, model, seed).config


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The top-level config as ``run_suite.py <overrides>`` builds it, remembering the command line (for scripts and
    tests; ``run_suite.py`` itself gets it from Hydra)."""
    from hydra import compose

    overrides = list(overrides or [])
    with hydra_context():
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    return cfg
