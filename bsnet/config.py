"""RunConfig: every option of a search run, in one place.

The command line's options, the YAML file (`--config`, a run's `config.yaml`), the check that `--resume` does not
change a run, and the defaults are all derived from this dataclass: an option is added here and nowhere else.
A RunConfig is checked as it is built (types, finite numbers, ranges, registered names, the budgets' form, the super
network's and the search's settings), so that a bad value is one `ConfigError` line before any work starts; a file
is data, and nothing it names is imported here.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

# Search settings that were removed because they did not help (CHANGELOG.md). A config.yaml written before keeps
# working when it holds them at the value that meant "off"; any other value is refused with a pointer.
REMOVED_SEARCH_SETTINGS: dict[str, Any] = {"warmup": 0.0, "paired": False, "logit_clip": 0.0, "anneal": 0.0,
                                           "cost_credit": "live", "explore": 0.0, "init_probs": {}, "ema_decay": 0.9}
# Written by the options themselves, not by a user: kept out of the resume comparison.
_KEY_VALUE_OPTIONS = ("supernet_config", "search_config")


class ConfigError(ValueError):
    """An option or config file that cannot be used: reported as one line."""


def _option(default: Any, help: str, **extra: Any) -> Any:
    meta = {"help": help, **extra}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RunConfig:
    """A search run: the super network, the data, the budgets, the schedule, and what follows the search."""

    supernet: str = _option("cnf", "registered super network (bsnet.list_supernets())")
    supernet_config: dict[str, Any] = _option({}, "the super network's settings, e.g. layers=4 channels=16",
                                              metavar="KEY=VALUE")
    dataset: str = _option("digits", "data set (bsnet.data.list_datasets())")
    data_dir: str | None = _option(None, "the data set's folder, or the folder that holds it")
    val_size: float | None = _option(None, "validation images held out of training: a fraction or a count "
                                           "(default: the data set's)")
    budget: list[str] = _option(["30%"], "one per cost: 30% (FLOPs), params=1.2M, "
                                         "latency=3ms, parallel=6, mypkg.costs:energy=2e-3", metavar="[COST=]VALUE")
    parallel_workers: int | None = _option(None, "workers of the parallel cost (default: the live graph's depth)",
                                           metavar="N")
    latency_table: str | None = _option(None, "JSON table written by `bsnet profile` on the target device",
                                        metavar="FILE")
    epochs: int = _option(12, "search epochs", metavar="N")
    finetune_epochs: int = _option(4, "fine-tune epochs of the found architecture", metavar="N")
    select: int = _option(1, "choose among the found architecture and K - 1 tempered samples of the gates, each "
                             "fine-tuned, best on validation", metavar="K")
    select_temperature: float = _option(3.0, "temperature of --select's samples", metavar="T")
    batch_size: int = _option(64, "mini-batch size", metavar="N")
    seed: int = _option(0, "seed of the weights, the data order and the gates", metavar="N")
    device: str = _option("cpu", "cpu, cuda or cuda:N")
    search_config: dict[str, Any] = _option({}, "search settings (bsnet.search.SearchConfig), e.g. "
                                                "lambda_mode=fixed fixed_lambda=1e-7", metavar="KEY=VALUE")
    width_groups: int | None = _option(None, "channel groups of each split layer pair, each a gated branch (1: no "
                                             "width gates); for a fabric the same as --supernet-config "
                                             "width_groups=N", metavar="N")
    model: str | None = _option(None, "package.module:factory returning your own model (a torch module or a bsnet "
                                      "SuperNetwork); recorded, never imported from a run", metavar="PKG.MOD:FACTORY")
    leaf_modules: list[str] = _option([], "layers of your model that tracing keeps whole: class names "
                                          "(module.Class) or module paths", metavar="NAME")
    input_shape: list[int] | None = _option(None, "the model's input shape, where the data set does not say it",
                                            metavar="C,H,W")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, _checked(f.name, getattr(self, f.name), f.type))
        if self.epochs < 1 or self.batch_size < 1 or self.finetune_epochs < 0:
            raise ConfigError(f"epochs and batch_size must be >= 1, finetune_epochs >= 0, got {self.epochs}, "
                              f"{self.batch_size}, {self.finetune_epochs}")
        if self.select < 1:
            raise ConfigError(f"select must be an integer >= 1, got {self.select!r}")
        if not self.select_temperature > 0:
            raise ConfigError(f"select_temperature must be a number > 0, got {self.select_temperature!r}")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed must be an integer in [0, 2**32), got {self.seed!r}")
        if self.val_size is not None and not (0 < self.val_size < 1 or self.val_size >= 1
                                              and self.val_size.is_integer()):
            raise ConfigError(f"val_size must be a fraction in (0, 1) or a whole count >= 1, got {self.val_size!r}")
        if self.parallel_workers is not None and self.parallel_workers < 1:
            raise ConfigError(f"parallel_workers must be an integer >= 1, got {self.parallel_workers!r}")
        if not DEVICE.fullmatch(self.device):
            raise ConfigError(f"device must be cpu, cuda or cuda:N, got {self.device!r}")
        if self.input_shape is not None and (not self.input_shape or min(self.input_shape) < 1):
            raise ConfigError(f"input_shape must be positive sizes like 3,32,32, got {self.input_shape!r}")
        if self.model is not None and not _CODE.fullmatch(self.model):
            raise ConfigError(f"model must be package.module:factory, got {self.model!r}")
        self.search_config = _without_removed(self.search_config)
        self._merge_width_groups()
        _check_parts(self)

    def _merge_width_groups(self) -> None:
        """`width_groups` means one thing: for a fabric it is its `width_groups` setting, written there too."""
        if self.width_groups is None:
            return
        if self.width_groups < 1:
            raise ConfigError(f"width_groups must be an integer >= 1, got {self.width_groups!r}")
        if self.model is not None:  # from_model splits its residual branches' layer pairs
            return
        from bsnet.fabrics.registry import supernet_config
        try:
            fields = {f.name for f in dataclasses.fields(supernet_config(self.supernet))}
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if "width_groups" not in fields:
            if self.width_groups > 1:
                raise ConfigError(f"super network {self.supernet} has no width groups (its layers form no pairs to "
                                  "split); resnet_fabric has")
            return
        given = self.supernet_config.get("width_groups", self.width_groups)
        if given != self.width_groups:
            raise ConfigError(f"width_groups {self.width_groups} and supernet_config width_groups={given} disagree")
        self.supernet_config = {**self.supernet_config, "width_groups": self.width_groups}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def code(self) -> list[str]:
        """The code this configuration names, to be imported when it runs: `--model` and budgets of the user's own
        costs, as the command line would give them."""
        return ([f"--model {self.model}"] if self.model else []) + [f"--budget {b}" for b in self.budget
                                                                    if ":" in b.rpartition("=")[0]]


DEVICE = re.compile(r"cpu|cuda(:[0-9]+)?")  # the devices a run names (the command line checks the same)
_CODE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")  # package.module:name


def _check_parts(config: RunConfig) -> None:
    """The names and settings a RunConfig holds, checked against the registries and the settings' own checks, so
    that a bad one is refused before any data is read or any network built."""
    from bsnet.budgets import check_budget
    from bsnet.data import list_datasets
    from bsnet.fabrics import supernet_config
    from bsnet.search import SearchConfig
    if config.dataset not in list_datasets():
        raise ConfigError(f"unknown dataset {config.dataset!r} (known: {', '.join(list_datasets())})")
    if config.model is None:
        given = [o for o, v in (("leaf_modules", config.leaf_modules), ("input_shape", config.input_shape)) if v]
        if given:
            raise ConfigError(f"{' and '.join(given)} apply to a model of your own that bsnet converts (--model "
                              "returning a torch module), not to a super network")
        try:
            supernet_config(config.supernet, **config.supernet_config)
        except (TypeError, ValueError) as e:
            raise ConfigError(str(e)) from None
    try:
        costs = [check_budget(b) for b in config.budget]
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if len(set(costs)) != len(costs):
        raise ConfigError(f"one budget per cost, got {', '.join(config.budget)}")
    search = typed(SearchConfig, {"seed": config.seed, **config.search_config}, "search")
    if search.sampling == "grouped" and 2 * search.groups > config.batch_size:
        raise ConfigError(f"search setting groups={search.groups} needs batches of at least {2 * search.groups} "
                          f"examples (2 per group), but batch_size is {config.batch_size}")


def _checked(name: str, value: Any, kind: str) -> Any:
    """`value` checked against the field's annotation (a string under `from __future__ import annotations`)."""
    optional = kind.endswith("| None")
    base = kind.removesuffix(" | None")
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name} must be given, got nothing")
    if base == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
    elif base == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
        value = float(value)
    elif base == "str":
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{name} must be a non-empty string, got {value!r}")
    elif base == "list[str]":
        value = [value] if isinstance(value, (str, int, float)) and not isinstance(value, bool) else value
        if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool)
                                                  and str(v).strip() for v in value):
            raise ConfigError(f"{name} must be a list like {'[30%, params=1.2M]' if name == 'budget' else '[a, b]'}, "
                              f"got {value!r}")
        value = [str(v) for v in value]
    elif base == "list[int]":
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{name} must be a list of integers, got {value!r}")
    elif base == "dict[str, Any]":
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{name} must be a mapping of setting: value, got {value!r}")
    return value


def _without_removed(search_config: dict[str, Any]) -> dict[str, Any]:
    out = {}
    if search_config.get("baseline") == "ema":
        raise ConfigError("search setting baseline=ema was removed (it did not help: BENCHMARKS.md, CHANGELOG.md)")
    for key, value in search_config.items():
        if key in REMOVED_SEARCH_SETTINGS:
            if value != REMOVED_SEARCH_SETTINGS[key]:
                raise ConfigError(f"search setting {key} was removed (it did not help: BENCHMARKS.md, CHANGELOG.md)")
            continue
        out[key] = value
    return out


def key_values(items: Sequence[str] | None, option: str) -> dict[str, Any]:
    """`["a=1", "b=x"]` -> `{"a": 1, "b": "x"}`, each value read as YAML (`1e30` as a number)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{option} takes KEY=VALUE, got {item!r}")
        try:
            parsed = yaml.safe_load(value)
        except (yaml.YAMLError, RecursionError):
            raise ConfigError(f"{option} {item!r}: the value is not valid YAML (quote a string, write a list as "
                              "[1, 2])") from None
        if isinstance(parsed, str):  # YAML reads 1e30 as a string
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        out[key.strip().replace("-", "_")] = parsed
    return out


def typed(config_cls: type, values: Mapping[str, Any], what: str) -> Any:
    """`config_cls(**values)` with each value checked against (and converted to) its field's default type."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    out = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"unknown {what} setting {key!r} (known: {', '.join(sorted(fields))})")
        default = fields[key].default
        kind = type(default) if default is not dataclasses.MISSING and default is not None else None
        if kind in (int, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
            if kind is int and not (math.isfinite(value) and float(value).is_integer()):
                raise ConfigError(f"{what} setting {key} must be an integer, got {value!r}")
            value = kind(value)
        elif kind is not None and not isinstance(value, kind):
            raise ConfigError(f"{what} setting {key} must be a {kind.__name__}, got {value!r}")
        out[key] = value
    try:
        return config_cls(**out)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The options a YAML file sets (`--config`, or a run's config.yaml), checked for unknown keys."""
    try:
        doc = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config {path} is not a text file (YAML)") from None
    except RecursionError:
        raise ConfigError(f"config {path} is nested too deeply to be a bsnet config") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"config {path} must be a mapping of option: value")
    unknown = sorted(map(str, set(doc) - {f.name for f in dataclasses.fields(RunConfig)}))
    if unknown:
        raise ConfigError(f"unknown key(s) in {path}: {', '.join(map(str, unknown))}")
    return doc


def resolve(file_values: Mapping[str, Any], options: Mapping[str, Any]) -> RunConfig:
    """Defaults, then the config file's values, then the options given on the command line (`None`: not given;
    the KEY=VALUE options are merged key by key). `--seed` also seeds the gates, over a file's recorded seed."""
    values = {**RunConfig().to_dict(), **copy.deepcopy(dict(file_values))}
    for key, value in options.items():
        if value is None:
            continue
        if key in _KEY_VALUE_OPTIONS:
            values[key] = {**(values.get(key) or {}), **value}
        else:
            values[key] = value
    if options.get("seed") is not None and isinstance(values.get("search_config"), dict) \
            and "seed" not in (options.get("search_config") or {}):
        values["search_config"] = {k: v for k, v in values["search_config"].items() if k != "seed"}
    return RunConfig(**values)


def resume_conflicts(recorded: Mapping[str, Any], file_values: Mapping[str, Any],
                     options: Mapping[str, Any]) -> str | None:
    """What a `--resume` would change in a run configured as `recorded` (None: nothing). `--device` may change."""
    given: dict[str, Any] = {}  # what the config file and the options ask for, as "key" or "group.key"
    for source in (file_values, options):
        for key, value in source.items():
            if value is None or key == "device":
                continue
            if key in _KEY_VALUE_OPTIONS and isinstance(value, dict):
                given.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                given[key] = [value] if key == "budget" and isinstance(value, str) else value
    if options.get("seed") is not None:
        given.pop("search_config.seed", None)  # --seed seeds the gates too (see resolve)
    for key, value in given.items():
        group, _, sub = key.partition(".")
        have = recorded.get(group) if not sub else (recorded.get(group) or {}).get(sub)
        if key == "budget" and isinstance(value, list):
            value = [str(b) for b in value]
        if value != have:
            return f"{key} is {have!r} in its config.yaml, not {value!r}"
    return None
