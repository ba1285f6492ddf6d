"""A Hydra sweeper that searches hyper-parameters with Optuna and continues an interrupted search in place.

A search config (conf/hparams_search/*.yaml) selects it with `override /hydra/sweeper: s18exp_optuna`.

Why our own sweeper rather than hydra-optuna-sweeper: the plugin's newest release (1.3.0) pins optuna<3,
which holds SQLAlchemy below 2 and alembic below 1.14, and it cannot continue a search in place: its
n_trials counts only the trials of one call, and every call writes a new sweep dir. This one is a few
hundred lines on current Optuna (>=4) and:

- keeps the study in `<sweep dir>/optuna.db` (SQLite) under `study_name`: rerunning the same command with
  the same sweep dir continues it, and `n_trials` is the study's total, earlier calls' trials included;
- runs trial N as Hydra job N, so that its run dir is `<sweep dir>/<N>_<run name>` every time;
- runs a trial that a dead sweep left running (killed, Ctrl-C, a lost node) again, with the same number
  and parameters, in the same run dir, where `trainer.resume=auto` continues it from its last checkpoint;
- tells the study FAILED, with the reason in the trial's user attribute `fail_reason`, for a trial whose
  run fails (an error, a composition error, a missing or non-finite objective); the search goes on;
- launches trials in batches of `n_jobs` through whatever launcher the config names (joblib, SLURM); only
  this process opens the SQLite file, so the trials need no access to it.

The search space (`params`, and any sweep on the command line) is in Hydra's override grammar:
`choice(a, b)`, `range(lo, hi, step=s)`, `interval(lo, hi)` and `tag(log, interval(lo, hi))`. A plain
`key=value` on the command line fixes that key for every trial, taking it out of the search space.
"""

# No `from __future__ import annotations`: Hydra runs this module before it is in sys.modules, where
# dataclasses cannot resolve string annotations.
import difflib
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from hydra.core.utils import JobReturn, configure_log
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import MISSING, DictConfig, OmegaConf

log = logging.getLogger(__name__)

STUDY_FILE = "optuna.db"
DIRECTIONS = ("maximize", "minimize")
SAMPLERS = ("tpe", "random")
# User attributes of each trial, read by the report (s18exp/report/search.py).
OVERRIDES_ATTR, RUN_DIR_ATTR, FAIL_REASON_ATTR = "overrides", "run_dir", "fail_reason"
# User attributes of the study: a rerun that changes any of them would mix trials of different searches.
STUDY_ATTRS = ("objective", "fixed_overrides", "search_space")
STUDY_ATTR_LABELS = {"objective": "objective", "fixed_overrides": "set of fixed overrides", "search_space": "search space"}


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.s18exp_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    objective: str = MISSING  # the summary.json key to optimise, e.g. best_val/miou
    direction: str = "maximize"  # maximize | minimize
    study_name: str = MISSING
    n_trials: int = 20  # the study's total: trials of earlier calls with the same sweep dir count
    # Trials launched together: null = the launcher's n_jobs (joblib) or array_parallelism (SLURM), else 1.
    n_jobs: Optional[int] = None
    sampler: str = "tpe"  # tpe | random
    # The sampler's seed, plus the number of trials already in the study, so that a continued search does
    # not draw its first trials' parameters again; null: unseeded.
    seed: Optional[int] = 0
    params: Dict[str, str] = field(default_factory=dict)  # config key -> search expression


ConfigStore.instance().store(group="hydra/sweeper", name="s18exp_optuna", node=OptunaSweeperConf, provider="s18exp")


@dataclass
class SearchSpace:
    distributions: Dict[str, Any]  # override key (e.g. trainer.lr, loss) -> optuna distribution
    fixed: List[str]  # the overrides every trial gets, as written
    origin: Dict[str, str]  # override key -> where it was given, for error messages


def override_value(value: Any) -> str:
    """A value as the right-hand side of an override that Hydra parses back to the same value: floats
    through repr, so that the trial's config holds exactly the number Optuna suggested."""
    return Transformer.str(value)


def trial_overrides(space: SearchSpace, params: Dict[str, Any]) -> List[str]:
    return [*space.fixed, *(f"{key}={override_value(value)}" for key, value in params.items())]


def _distribution(override: Override) -> Any:
    """The Optuna distribution of a sweep override, or None when the override is a plain value."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from s18exp.errors import UserError

    if not override.is_sweep_override():
        return None
    value = override.value()
    if override.is_choice_sweep():
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if override.is_range_sweep():
        values = list(override.sweep_iterator(transformer=Transformer.encode))
        if value.shuffle or not values:
            return CategoricalDistribution(values)
        # Optuna's bounds are values the range takes (Hydra's stop is excluded): its first and last.
        low, high, step = min(values), max(values), abs(value.step)
        if any(isinstance(x, float) for x in (low, high, step)):
            return FloatDistribution(low, high, step=step)
        return IntDistribution(low, high, step=step)
    if override.is_interval_sweep():  # Hydra's interval is always of floats
        return FloatDistribution(value.start, value.end, log="log" in value.tags)
    raise UserError(
        f"{override.input_line} is a sweep the search cannot sample; use choice(...), range(...), interval(...) "
        "or tag(log, interval(...))"
    )


def parse_search_space(params: Dict[str, str], arguments: Sequence[str], parser: OverridesParser) -> SearchSpace:
    """The search space from the config's params and the command line; a later override of a key wins."""
    from hydra.errors import OverrideParseException

    from s18exp.errors import UserError

    lines = [(f"{key}={expression}", "hydra.sweeper.params") for key, expression in params.items()]
    lines += [(argument, "the command line") for argument in arguments]
    distributions: Dict[str, Any] = {}
    fixed: Dict[str, str] = {}
    origin: Dict[str, str] = {}
    for line, where in lines:
        try:
            (override,) = parser.parse_overrides([line])
        except OverrideParseException as exc:
            raise UserError(f"{line} in {where} is not a valid override ({str(exc).splitlines()[0]}); fix its syntax") from None
        key = override.get_key_element()
        distribution = _distribution(override)
        distributions.pop(key, None)
        fixed.pop(key, None)
        origin[key] = where
        if distribution is None:
            fixed[key] = line
        else:
            distributions[key] = distribution
    if not distributions:
        raise UserError("the search space is empty; give hydra.sweeper.params, or a sweep such as trainer.lr=interval(1e-4,1e-2)")
    return SearchSpace(distributions, list(fixed.values()), origin)


def _dotted_keys(node: Any, prefix: str = "") -> Iterator[str]:
    for key, value in node.items():
        path = f"{prefix}{key}"
        yield path
        if isinstance(value, dict):
            yield from _dotted_keys(value, f"{path}.")


def consecutive_runs(numbers: Sequence[int], size: int) -> Iterator[List[int]]:
    """`numbers` (ascending) in chunks of at most `size` consecutive numbers: a launcher numbers the jobs of
    one call consecutively from its first, and each trial must run as the job of its own number."""
    chunk: List[int] = []
    for number in numbers:
        if chunk and (number != chunk[-1] + 1 or len(chunk) == size):
            yield chunk
            chunk = []
        chunk.append(number)
    if chunk:
        yield chunk


def trial_outcome(result: JobReturn, objective: str) -> tuple[Optional[float], Optional[str]]:
    """The trial's value, or None and the reason it failed."""
    try:
        value = result.return_value  # re-raises what the job raised
    except Exception as exc:
        return None, (str(exc) or type(exc).__name__)[:500]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None, f"the run returned {value!r}, not a number for {objective}"
    if not math.isfinite(value):
        return None, f"{objective} is {value}"
    return float(value), None


class OptunaSweeper(Sweeper):
    def __init__(
        self,
        objective: str,
        direction: str,
        study_name: str,
        n_trials: int,
        n_jobs: Optional[int],
        sampler: str,
        seed: Optional[int],
        params: Dict[str, str],
    ) -> None:
        self.objective = objective
        self.direction = direction
        self.study_name = study_name
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.sampler = sampler
        self.seed = seed
        self.params = dict(params or {})
        self.hydra_context: Optional[HydraContext] = None
        self.config: Optional[DictConfig] = None
        self.launcher: Optional[Launcher] = None
        self.storage: Any = None  # the study's optuna RDBStorage, once opened
        self.study_id: Optional[int] = None
        self.lock: Any = None  # the open lock file of the sweep dir, held while this search runs

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: List[str]) -> None:
        from s18exp.errors import UserError

        try:
            self._search(arguments)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)

    # --- checks before any trial ---------------------------------------------------------------------

    def _check_settings(self) -> None:
        from s18exp.errors import UserError

        if self.direction not in DIRECTIONS:
            raise UserError(f"hydra.sweeper.direction={self.direction} is not one of {'|'.join(DIRECTIONS)}; e.g. hydra.sweeper.direction=maximize")
        if self.sampler not in SAMPLERS:
            raise UserError(f"hydra.sweeper.sampler={self.sampler} is not one of {'|'.join(SAMPLERS)}; e.g. hydra.sweeper.sampler=tpe")
        if isinstance(self.n_trials, bool) or not isinstance(self.n_trials, int) or self.n_trials < 1:
            raise UserError(f"hydra.sweeper.n_trials={self.n_trials} must be a positive integer (the study's total); e.g. hydra.sweeper.n_trials=20")
        if self.n_jobs is not None and self.n_jobs < 1:
            raise UserError(f"hydra.sweeper.n_jobs={self.n_jobs} must be at least 1, or null to follow the launcher")
        if not self.objective or not self.study_name:
            raise UserError("hydra.sweeper.objective and hydra.sweeper.study_name must be set; see conf/hparams_search/")

    def _check_keys(self, space: SearchSpace) -> None:
        """Every searched key must exist in the config and every searched group option must exist, so that a
        typo stops the search before its first trial instead of failing every trial."""
        from optuna.distributions import CategoricalDistribution

        from s18exp.errors import UserError

        assert self.config is not None and self.hydra_context is not None
        groups = self.config.hydra.runtime.choices
        task_keys = OmegaConf.to_container(self.config, resolve=False)
        task_keys.pop("hydra", None)
        for key, distribution in space.distributions.items():
            where = space.origin[key]
            if key in groups:
                options = self.hydra_context.config_loader.get_group_options(key)
                choices = distribution.choices if isinstance(distribution, CategoricalDistribution) else []
                unknown = [c for c in choices if c not in options] or ([] if choices else ["a range"])
                if unknown:
                    raise UserError(
                        f"{where} searches the group {key} over {unknown[0]}, which is not one of its options "
                        f"({', '.join(options)}); search it with choice(...) of those"
                    )
            elif not key.startswith("+"):
                parent, _, leaf = key.rpartition(".")
                node = OmegaConf.select(self.config, parent, default=None) if parent else self.config
                if not OmegaConf.is_dict(node) or leaf not in node:
                    close = difflib.get_close_matches(key, list(_dotted_keys(task_keys)), n=1)
                    hint = f"did you mean {close[0]}? " if close else ""
                    raise UserError(
                        f"{where} searches {key}, which is not a key of the config; {hint}"
                        f"fix the name, or write +{key} to add a new key"
                    )

    def _compose_error(self, overrides: List[str]) -> Optional[str]:
        """Why a trial's config cannot be composed, or None when it can: such a trial fails alone."""
        assert self.config is not None and self.hydra_context is not None
        try:
            self.hydra_context.config_loader.load_sweep_config(master_config=self.config, sweep_overrides=overrides)
        except Exception as exc:
            return f"its config does not compose: {str(exc).strip().splitlines()[0]}"
        return None

    # --- the study -----------------------------------------------------------------------------------

    def _batch_size(self) -> int:
        assert self.config is not None
        if self.n_jobs is not None:
            return self.n_jobs
        launcher = self.config.hydra.launcher
        n_jobs = launcher.get("n_jobs")
        if isinstance(n_jobs, int) and n_jobs != 0:
            return n_jobs if n_jobs > 0 else max(1, (os.cpu_count() or 1) + 1 + n_jobs)  # joblib: -1 = all cores
        parallelism = launcher.get("array_parallelism")
        return parallelism if isinstance(parallelism, int) and parallelism > 0 else 1

    def _open_study(self, sweep_dir: Path, space: SearchSpace) -> Any:
        import optuna
        from optuna.distributions import distribution_to_json
        from optuna.trial import TrialState

        from s18exp.errors import UserError

        self.storage = optuna.storages.RDBStorage(f"sqlite:///{sweep_dir / STUDY_FILE}")
        study = optuna.create_study(storage=self.storage, study_name=self.study_name, direction=self.direction, load_if_exists=True)
        self.study_id = self.storage.get_study_id_from_name(self.study_name)
        where = f"study {self.study_name} in {sweep_dir / STUDY_FILE}"
        if study.direction.name.lower() != self.direction:
            raise UserError(
                f"{where} is set to {study.direction.name.lower()}; keep hydra.sweeper.direction="
                f"{study.direction.name.lower()} or give another hydra.sweep.dir"
            )
        wanted = {
            "objective": self.objective,
            "fixed_overrides": sorted(space.fixed),
            "search_space": {key: json.loads(distribution_to_json(d)) for key, d in space.distributions.items()},
        }
        recorded = study.user_attrs
        started = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
        if not started and any(sweep_dir.glob("*/.hydra")):
            raise UserError(
                f"{sweep_dir} already holds runs, but {where} has no trial; their run dirs would be taken "
                "for this study's trials: give an empty hydra.sweep.dir"
            )
        for key in STUDY_ATTRS:
            if key not in recorded:
                study.set_user_attr(key, wanted[key])
            elif recorded[key] != wanted[key]:
                raise UserError(
                    f"{where} was made with a different {STUDY_ATTR_LABELS[key]} ({_difference(recorded[key], wanted[key])}); "
                    "continue it with the same settings, or give another hydra.sweep.dir for a new study"
                )
        return study

    def _search(self, arguments: List[str]) -> None:
        import optuna
        from optuna.trial import TrialState

        from s18exp.atomic_files import atomic_write_text

        assert self.config is not None and self.hydra_context is not None and self.launcher is not None
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweeper's own lines say what happens
        self._check_settings()
        space = parse_search_space(self.params, arguments, OverridesParser.create(config_loader=self.hydra_context.config_loader))
        self._check_keys(space)
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        self.lock = hold_search_lock(sweep_dir)
        study = self._open_study(sweep_dir, space)
        atomic_write_text(OmegaConf.to_yaml(self.config), sweep_dir / "multirun.yaml")

        trials = study.get_trials(deepcopy=False)
        left_running = [t for t in trials if t.state == TrialState.RUNNING]
        for trial in left_running:
            check_trial_params(trial.number, trial.params, space, sweep_dir)
        counted = [t for t in trials if t.state != TrialState.WAITING]  # waiting ones are taken by ask()
        to_start = max(0, self.n_trials - len(counted))
        seed = None if self.seed is None else self.seed + len(trials)
        study.sampler = (
            optuna.samplers.TPESampler(seed=seed, constant_liar=True)  # a batch's trials count the running ones as pending
            if self.sampler == "tpe"
            else optuna.samplers.RandomSampler(seed=seed)
        )
        log.info(
            f"study {self.study_name} in {sweep_dir / STUDY_FILE}: {len(counted) - len(left_running)} trial(s) finished, "
            f"{len(left_running)} left running by an earlier call (continued now), {to_start} to start; "
            f"n_trials={self.n_trials}"
        )
        batch = self._batch_size()
        unfinished = {t.number: t.params for t in left_running}
        for numbers in consecutive_runs(sorted(unfinished), batch):
            self._run_trials(study, space, sweep_dir, {n: unfinished[n] for n in numbers})
        while to_start > 0:
            asked = [study.ask(space.distributions) for _ in range(min(batch, to_start))]
            to_start -= len(asked)
            self._run_trials(study, space, sweep_dir, {t.number: t.params for t in asked})
        self._log_end(study)

    def _run_trials(self, study: Any, space: SearchSpace, sweep_dir: Path, params_by_number: Dict[int, Dict[str, Any]]) -> None:
        """Launch a batch of trials, each as the Hydra job of its own number (one launcher call per run of
        consecutive numbers), then tell the study each one's result."""
        assert self.launcher is not None and self.config is not None
        launch: List[tuple[int, List[str]]] = []
        for number, params in params_by_number.items():
            overrides = trial_overrides(space, params)
            self._set_attr(number, OVERRIDES_ATTR, overrides)
            problem = self._compose_error(overrides)
            if problem:
                self._finish(study, number, None, problem)
            else:
                launch.append((number, overrides))
        for numbers in consecutive_runs([n for n, _ in launch], max(1, len(launch))):
            jobs = [overrides for n, overrides in launch if n in numbers]
            results = self.launcher.launch(jobs, initial_job_idx=numbers[0])
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)  # the jobs reconfigured it
            for number, result in zip(numbers, results):
                output_dir = OmegaConf.select(result.hydra_cfg, "hydra.runtime.output_dir", default=None) if result.hydra_cfg else None
                if output_dir:
                    self._set_attr(number, RUN_DIR_ATTR, os.path.relpath(output_dir, sweep_dir))
                value, reason = trial_outcome(result, self.objective)
                self._finish(study, number, value, reason)

    def _set_attr(self, number: int, key: str, value: Any) -> None:
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)
        self.storage.set_trial_user_attr(trial_id, key, value)

    def _finish(self, study: Any, number: int, value: Optional[float], reason: Optional[str]) -> None:
        from optuna.trial import TrialState

        if reason is not None:
            self._set_attr(number, FAIL_REASON_ATTR, reason)
            study.tell(number, state=TrialState.FAIL)
            log.info(f"trial {number} failed: {reason}")
            return
        study.tell(number, value)
        best = study.best_trial
        log.info(f"trial {number}: {self.objective}={value:.6g}; best so far: trial {best.number} with {best.value:.6g}")

    def _log_end(self, study: Any) -> None:
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        failed = sum(t.state == TrialState.FAIL for t in trials)
        line = f"study {self.study_name}: {len(complete)} complete, {failed} failed of {len(trials)} trial(s)"
        if complete:
            best = study.best_trial
            log.info(f"{line}; best trial {best.number}: {self.objective}={best.value:.6g} with {best.params}")
        else:
            log.warning(f"{line}; no trial completed, the report lists why")


def hold_search_lock(sweep_dir: Path) -> Any:
    """An exclusive lock on `<sweep dir>/optuna.db.lock`, held (by the open file returned) until this process
    ends: a second search on the same study would take the first one's running trials for abandoned ones and
    train them again in the same run dirs. The lock is the operating system's, so a search that dies frees it."""
    import fcntl

    from s18exp.errors import UserError

    handle = open(sweep_dir / f"{STUDY_FILE}.lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise UserError(
            f"another search is running in {sweep_dir} ({holder}); wait for it to end, or give another hydra.sweep.dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    return handle


def check_trial_params(number: int, params: Dict[str, Any], space: SearchSpace, sweep_dir: Path) -> None:
    """A trial left running, to be launched again, must hold exactly the search space's keys with values the
    space can take: its parameters come from optuna.db, a file that could have been edited, and become
    command-line overrides (a value such as `${oc.create:...}` would be a resolver call)."""
    from s18exp.errors import UserError

    problem = None
    if set(params) != set(space.distributions):
        problem = f"its parameters {sorted(params)} are not the search space's {sorted(space.distributions)}"
    for key, value in params.items():
        distribution = space.distributions.get(key)
        if problem is None and (distribution is None or not _takes(distribution, value)):
            problem = f"{key}={str(value)[:60]!r} is not a value of the search space"
    if problem:
        raise UserError(
            f"trial {number} in {sweep_dir / STUDY_FILE} cannot run again: {problem}; the study file was edited or "
            "comes from another search: give another hydra.sweep.dir"
        )


def _takes(distribution: Any, value: Any) -> bool:
    """Whether `distribution` can yield `value` (a categorical one only its own choices, by type and value)."""
    from optuna.distributions import CategoricalDistribution

    if isinstance(distribution, CategoricalDistribution):
        return any(type(choice) is type(value) and choice == value for choice in distribution.choices)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return distribution.low <= value <= distribution.high


def _difference(recorded: Any, wanted: Any) -> str:
    """What changed between a study's recorded setting and this call's, in a few words."""
    if isinstance(recorded, list) and isinstance(wanted, list):
        added, removed = sorted(set(wanted) - set(recorded)), sorted(set(recorded) - set(wanted))
        return "; ".join(part for part in (f"now {', '.join(added)}" if added else "", f"before {', '.join(removed)}" if removed else "") if part)
    if isinstance(recorded, dict) and isinstance(wanted, dict):
        keys = sorted(k for k in set(recorded) | set(wanted) if recorded.get(k) != wanted.get(k))
        return "; ".join(f"{k}: {_describe(recorded.get(k))} before, {_describe(wanted.get(k))} now" for k in keys)
    return f"{recorded} before, {wanted} now"


def _describe(distribution: Optional[Dict[str, Any]]) -> str:
    """A distribution as Optuna stores it in JSON, in the search grammar's words."""
    if distribution is None:
        return "not searched"
    attributes = distribution["attributes"]
    if "choices" in attributes:
        return f"choice({', '.join(map(str, attributes['choices']))})"
    scale = ", log" if attributes.get("log") else ""
    step = f", step={attributes['step']}" if attributes.get("step") is not None else ""
    return f"{attributes['low']}..{attributes['high']}{scale}{step}"
