"""The search part of a report: the Optuna study that a search (conf/hparams_search/) keeps in
`<sweep dir>/optuna.db`. Its trials sorted by objective, the best trial's parameters as a command line that
trains the same config as a single run, the objective against trial number, and parameter importances.

Optuna is imported only when the folder holds a study, so that a plain report does not pay for it.
"""

from __future__ import annotations

import math
import shlex
import sqlite3
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra_plugins.s18exp_optuna_sweeper.optuna_sweeper import FAIL_REASON_ATTR, OVERRIDES_ATTR, RUN_DIR_ATTR, STUDY_FILE
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from s18exp.report.figures import _save

SEARCH_GROUP = "hparams_search"  # selecting it makes a run a search; the best trial's command leaves it out
STATE_NAMES = {"COMPLETE": "complete", "FAIL": "failed", "RUNNING": "unfinished", "WAITING": "waiting", "PRUNED": "pruned"}


@dataclass
class TrialRow:
    number: int
    state: str  # complete | failed | unfinished | waiting | pruned
    value: float | None
    params: dict[str, Any]
    run_dir: str | None  # relative to the sweep dir
    reason: str | None  # why a failed trial failed


@dataclass
class Search:
    study_name: str
    objective: str = "objective"
    direction: str = "maximize"
    trials: list[TrialRow] = field(default_factory=list)  # complete ones best first, then the rest by number
    param_names: list[str] = field(default_factory=list)
    command: str | None = None  # trains the best trial's config as a single run
    importances: dict[str, float] = field(default_factory=dict)
    importance_note: str | None = None  # why there are no importances
    figure: Path | None = None
    problem: str | None = None  # why the study could not be read

    @property
    def best(self) -> TrialRow | None:
        return self.trials[0] if self.trials and self.trials[0].state == "complete" else None

    def count(self, state: str) -> int:
        return sum(t.state == state for t in self.trials)


def best_command(overrides: list[str]) -> str:
    """`python -m s18exp` with a trial's overrides, shell-quoted, without the search config: it holds only
    hydra keys, so the single run composes the trial's config exactly."""
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != SEARCH_GROUP]
    return " ".join(["python -m s18exp", *(shlex.quote(o) for o in kept)])


def _rows(trials: list[Any], maximize: bool) -> list[TrialRow]:
    rows = [
        TrialRow(
            number=t.number,
            state=STATE_NAMES.get(t.state.name, t.state.name.lower()),
            value=t.value if t.state.name == "COMPLETE" else None,
            params=dict(t.params),
            run_dir=t.user_attrs.get(RUN_DIR_ATTR),
            reason=t.user_attrs.get(FAIL_REASON_ATTR),
        )
        for t in trials
    ]
    complete = sorted((r for r in rows if r.value is not None), key=lambda r: (-r.value if maximize else r.value, r.number))
    return complete + sorted((r for r in rows if r.value is None), key=lambda r: r.number)


def _importances(study: Any, complete: list[Any]) -> tuple[dict[str, float], str | None]:
    import optuna

    if len(complete) < 2:
        return {}, f"not computed: they need at least two complete trials, and the study has {len(complete)}"
    if len({t.value for t in complete}) == 1:
        return {}, "not computed: every complete trial has the same objective value"
    names = sorted({name for t in complete for name in t.params})
    varying = [n for n in names if len({repr(t.params.get(n)) for t in complete}) > 1]
    if not varying:
        return {}, "not computed: every complete trial has the same parameters"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # experimental-feature notices of some Optuna versions
            return optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(), params=varying
            ), None
    except Exception as exc:  # importances are a reading aid: without them the report still stands
        return {}, f"not computed ({type(exc).__name__}: {exc})"


def draw_objective(search: Search, path: Path) -> Path | None:
    """Each complete trial's objective against its number, the best so far as a step line, failed trials as
    crosses along the bottom."""
    complete = sorted((t for t in search.trials if t.value is not None), key=lambda t: t.number)
    if not complete:
        return None
    numbers = [t.number for t in complete]
    values = [t.value for t in complete]
    pick = max if search.direction == "maximize" else min
    best_so_far = [pick(values[: i + 1]) for i in range(len(values))]
    fig = Figure(figsize=(6.4, 3.8))
    ax = fig.subplots()
    ax.plot(numbers, values, "o", color="tab:blue", label="complete trial")
    ax.step(numbers, best_so_far, where="post", color="tab:green", label="best so far")
    failed = [t.number for t in search.trials if t.state == "failed"]
    if failed:
        ax.plot(failed, [0.03] * len(failed), "x", color="tab:red", label="failed trial", transform=ax.get_xaxis_transform())
    ax.set_xlabel("trial")
    ax.set_ylabel(search.objective)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(f"Study {search.study_name}: {search.objective} ({search.direction})", fontsize=10)
    return _save(fig, path)


def read_study(study: Any) -> Search:
    """A Search from an Optuna study, without its figure."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    direction = study.direction.name.lower()
    search = Search(
        study_name=study.study_name,
        objective=str(study.user_attrs.get("objective", "objective")),
        direction=direction,
        trials=_rows(trials, direction == "maximize"),
        param_names=list(dict.fromkeys(name for t in trials for name in t.params)),
    )
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    search.importances, search.importance_note = _importances(study, complete)
    best = search.best
    if best is not None:
        overrides = next(t.user_attrs.get(OVERRIDES_ATTR) for t in trials if t.number == best.number)
        if overrides:
            search.command = best_command(list(overrides))
    return search


def read_searches(root: Path) -> list[Search]:
    """The studies of `root/optuna.db`; none when there is no such file.

    The file is read as data: SQLite copies it, through a read-only connection, into a private temporary
    folder, and Optuna opens the copy without creating tables, so that nothing is ever written to the
    search's own file (Optuna's storage otherwise adds tables and version records to a file it opens), and a
    search still running elsewhere is read as one consistent state.
    """
    db = root / STUDY_FILE
    if not db.is_file():
        return []
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        with tempfile.TemporaryDirectory(prefix="s18exp-report-") as folder:
            copy = Path(folder) / STUDY_FILE
            _snapshot(db, copy)
            storage = optuna.storages.RDBStorage(f"sqlite:///{copy}", skip_table_creation=True)
            try:
                names = optuna.study.get_all_study_names(storage)
                return [read_study(optuna.load_study(study_name=name, storage=storage)) for name in names]
            finally:
                storage.engine.dispose()  # the copy's connections closed before its folder goes
    except Exception as exc:  # e.g. a file written by another Optuna version: the runs' report still stands
        return [Search(study_name=STUDY_FILE, problem=f"{db} could not be read ({type(exc).__name__}: {exc})")]


def _snapshot(db: Path, copy: Path) -> None:
    """A consistent copy of the SQLite file `db`, read through a read-only connection."""
    source = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        target = sqlite3.connect(copy)
        try:
            source.backup(target)
        finally:
            target.close()
    finally:
        source.close()


def format_value(value: Any) -> str:
    """A parameter or objective value for a table (the command line keeps every digit)."""
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4g}"
    return "–" if value is None else str(value)
