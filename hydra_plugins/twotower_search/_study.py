"""The parts of the Optuna sweeper (sweeper.py) that hold no Hydra plugin: the search space, the
best recipe as an experiment file, the study's lock and bookkeeping. Hydra's plugin scan runs
every module of hydra_plugins again, except those whose name starts with an underscore; here the
classes are defined once, so an error raised by them is the class a caller catches."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer, ValueType
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf

RECIPE_GROUP = "experiment"  # the config group the best recipe is written for
RECIPE_NAME = "best_recipe"
FIXED_OVERRIDES = "fixed_overrides"  # study user attribute: the command line the study runs
INTERRUPTED = "interrupted_trials"  # study user attribute: trials a killed sweep left running
# Overrides that say where files go or which search runs, not what a trial trains: left out of
# the best recipe.
NOT_RECIPE_GROUPS = ("hparams_search",)
NOT_RECIPE_KEYS = ("paths", "hydra")


class SearchSpaceError(ValueError):
    """A search-space entry the sweeper cannot turn into an Optuna distribution."""

    def __init__(self, entry: str, reason: str):
        self.entry, self.reason = entry, reason
        super().__init__(f"search space entry {entry!r}: {reason}")


class StudyMismatchError(ValueError):
    """A rerun whose command line differs from the one the existing study was run with."""

    def __init__(self, study_name: str, storage: str, before: list[str], now: list[str]):
        self.study_name, self.storage, self.before, self.now = study_name, storage, before, now
        super().__init__(
            f"study {study_name!r} in {storage} was run with the overrides {before}, this command "
            f"has {now}: its trials would not be comparable. Rerun with the same overrides to "
            "continue it, or give the new search its own hydra.sweep.dir=DIR (or "
            "hydra.sweeper.study_name=NAME)"
        )


class TrialsFailedError(RuntimeError):
    """More of a batch's trials failed (an error, not pruning) than max_failure_rate allows."""

    def __init__(self, failed: list[int], batch: int, max_failure_rate: float):
        self.failed, self.batch, self.max_failure_rate = failed, batch, max_failure_rate
        super().__init__(
            f"trials {failed} failed, {len(failed)} of a batch of {batch} "
            f"(hydra.sweeper.max_failure_rate={max_failure_rate}); their errors are in the log "
            "above and in each trial's directory. A rerun continues the study without them"
        )


class StudyBusyError(RuntimeError):
    """Another sweep holds the study's lock."""

    def __init__(self, lock_path: Path):
        self.lock_path = lock_path
        super().__init__(
            f"{lock_path}: another sweep is running this study; wait for it to end, or give this "
            "one its own hydra.sweep.dir=DIR"
        )


class SearchSpace:
    """What the trials sample: `params` always, each of `conditional` when its condition holds,
    and the `fixed` overrides every trial gets (the command line's and the space's plain
    values, by key)."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}  # name -> optuna distribution
        self.conditional: list[tuple[Override, dict[str, Any]]] = []
        self.fixed: dict[str, str] = {}  # name -> override as written

    @classmethod
    def parse(
        cls,
        params: Mapping[str, str] | None,
        conditional: Mapping[str, Mapping[str, str]] | None,
        arguments: Sequence[str],
    ) -> SearchSpace:
        """`params` ({key: "choice(...)"}, the sweeper's config) and then the command line's
        `arguments`: a later entry for the same key wins, so `model=simplex` on the command line
        fixes a parameter the space would sample."""
        space = cls()
        entries = [f"{key}={value}" for key, value in (params or {}).items()]
        for text, override in zip(
            [*entries, *arguments], parse_overrides([*entries, *arguments]), strict=True
        ):
            name = _name(override)
            space.params.pop(name, None)
            space.fixed.pop(name, None)
            if override.is_sweep_override():
                space.params[name] = _distribution(text, override)
            else:
                space.fixed[name] = text
        for condition_text, entries_by_key in (conditional or {}).items():
            condition = parse_overrides([condition_text])[0]
            if condition.is_sweep_override() or condition.is_delete():
                raise SearchSpaceError(condition_text, "a condition is one key=value")
            texts = [f"{key}={value}" for key, value in entries_by_key.items()]
            sampled = {
                _name(override): _distribution(text, override, constant_ok=True)
                for text, override in zip(texts, parse_overrides(texts), strict=True)
            }
            space.conditional.append((condition, sampled))
        return space

    def suggest(self, trial, config: DictConfig) -> list[str]:
        """The trial's overrides: the fixed ones, then every sampled value (conditional ones
        where the condition holds on the values so far, the fixed ones, or `config`)."""
        values = {name: _suggest(trial, name, d) for name, d in self.params.items()}
        for condition, sampled in self.conditional:
            if self._holds(condition, values, config):
                values |= {
                    name: _suggest(trial, name, d)
                    for name, d in sampled.items()
                    if name not in self.fixed
                }
        return [*self.fixed.values(), *(f"{k}={format_value(v)}" for k, v in values.items())]

    def _holds(self, condition: Override, values: dict[str, Any], config: DictConfig) -> bool:
        name = _name(condition)
        if name in values:
            actual = values[name]
        elif name in self.fixed:
            actual = parse_overrides([self.fixed[name]])[0].value()
        else:  # the composed config: a group's chosen option, or a key's value
            choices = config.hydra.runtime.choices
            actual = choices[name] if name in choices else OmegaConf.select(config, name)
        return actual == condition.value()


def parse_overrides(overrides: Sequence[str]) -> list[Override]:
    """Hydra's command-line grammar: the same parse a trial's overrides get."""
    return OverridesParser.create().parse_overrides(list(overrides))


def _name(override: Override) -> str:
    """The key an override sets (group or config key, with its package), without +/++/~."""
    package = f"@{override.package}" if override.package else ""
    return f"{override.key_or_group}{package}"


def _distribution(text: str, override: Override, constant_ok: bool = False):
    """An Optuna distribution from Hydra's sweep syntax: choice(a, b) or a,b; range(start, stop,
    step); interval(low, high), tagged `log` for a log scale and `int` for integers."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if override.value_type is ValueType.GLOB_CHOICE_SWEEP:
        raise SearchSpaceError(text, "glob(...) names config options: list them in choice(...)")
    if override.is_choice_sweep() or (override.is_range_sweep() and override.value().shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(Transformer.encode)))
    if override.is_range_sweep():
        values = list(override.sweep_iterator(Transformer.encode))
        if not values:
            raise SearchSpaceError(text, "an empty range")
        if all(isinstance(v, int) for v in values):
            step = values[1] - values[0] if len(values) > 1 else 1
            return IntDistribution(values[0], values[-1], step=step)
        return CategoricalDistribution(values)
    if override.is_interval_sweep():
        interval = override.value()
        log_scale = "log" in interval.tags
        if "int" in interval.tags:
            return IntDistribution(int(interval.start), int(interval.end), log=log_scale)
        return FloatDistribution(float(interval.start), float(interval.end), log=log_scale)
    if constant_ok and not override.is_delete():
        return CategoricalDistribution([override.value()])
    raise SearchSpaceError(text, "expected choice(...), range(...) or interval(...)")


def _suggest(trial, name: str, distribution) -> Any:
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(name, distribution.choices)
    suggest = (
        trial.suggest_int if isinstance(distribution, IntDistribution) else trial.suggest_float
    )
    return suggest(
        name, distribution.low, distribution.high, step=distribution.step, log=distribution.log
    )


def format_value(value: Any) -> str:
    """A sampled value as an override's value (choices arrive encoded by Hydra's parser)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def recipe_yaml(overrides: Sequence[str], is_group) -> tuple[str, list[str]]:
    """The body of an experiment file (`# @package _global_`) that sets what `overrides` set:
    group choices in its defaults list, values as keys. Returns it and the overrides a config
    file cannot say (deletions), which go on the command line. Where files go and which search
    ran are left out (NOT_RECIPE_GROUPS, NOT_RECIPE_KEYS)."""
    defaults: list[Any] = []
    values = OmegaConf.create({})
    command_line: list[str] = []
    for text, override in zip(overrides, parse_overrides(overrides), strict=True):
        key = override.key_or_group
        if key.split("/")[0] in NOT_RECIPE_GROUPS or key.split(".")[0] in NOT_RECIPE_KEYS:
            continue
        if override.is_delete():
            command_line.append(text)
        elif is_group(key):
            option = override.get_value_element_as_str()
            target = f"/{_name(override)}"
            if key == RECIPE_GROUP:  # another experiment under this one: included as a config
                defaults.append(f"/{RECIPE_GROUP}/{option}")
            elif override.is_add() or override.is_force_add():
                defaults.append({target: option})
            else:
                defaults.append({f"override {target}": option})
        else:
            OmegaConf.update(values, key, override.value(), force_add=True)
    body = OmegaConf.create({"defaults": defaults} if defaults else {})
    return OmegaConf.to_yaml(OmegaConf.merge(body, values)), command_line


def plain(node: Any) -> Any:
    """A config node as plain dicts and lists (Hydra hands the sweeper either)."""
    if OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def job_outcome(job: JobReturn) -> float | BaseException:
    """The job's objective, or the exception it ended with (optuna.TrialPruned when pruned)."""
    if job.status is not JobStatus.COMPLETED:
        return job._return_value  # the exception; `return_value` would re-raise it
    try:
        return float(job.return_value)
    except (TypeError, ValueError) as error:
        return TypeError(f"the job returned {job.return_value!r}, not a number: {error}")


def finished_trials(study) -> int:
    """Trials that count towards n_trials: completed, pruned, or failed by an error of their own
    (not those a killed sweep interrupted, which run again)."""
    from optuna.trial import TrialState

    interrupted = set(study.user_attrs.get(INTERRUPTED, []))
    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return sum(t.number not in interrupted for t in study.get_trials(deepcopy=False, states=done))


def trials_table(study, monitor: str) -> str:
    """Every trial of the study: number, state, objective (a pruned trial's last reported
    value), parameters."""
    lines = [f"{'trial':>5}  {'state':<9}{monitor:>16}  params"]
    for trial in study.get_trials(deepcopy=False):
        value = f"{trial.value:>16.4f}" if trial.value is not None else " " * 16
        lines.append(f"{trial.number:>5}  {trial.state.name:<9}{value}  {trial.params}")
    return "\n".join(lines)


class StudyLock:
    """An exclusive lock beside a SQLite study for as long as a sweep runs it (released by the
    system when the process ends, killed or not); other storages are not locked."""

    def __init__(self, storage: str):
        prefix = "sqlite:///"
        self.path = Path(storage[len(prefix) :] + ".lock") if storage.startswith(prefix) else None
        self.file = None

    def __enter__(self) -> None:
        if self.path is None:
            return
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = self.path.open("w")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.close()
            raise StudyBusyError(self.path) from None

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.close()  # closing releases the lock
