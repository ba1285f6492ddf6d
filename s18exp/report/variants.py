"""The rows of a task's table: one per distinct setting of every config key that differs between its runs.

Which keys count: every leaf of the runs' `.hydra/config.yaml` (read as data, configs.py), except
- `seed` (the runs of a row are its seeds), `run_name` and `combo` (names made from other keys);
- bookkeeping that changes where or how a run works, not what it trains: `hydra.*`, `paths.*`, `wandb.*`,
  `data.root`, `data.download`, `data.cache`, `trainer.device`, `trainer.progress`, `trainer.num_threads`,
  `trainer.resume`;
- keys whose value is an interpolation of other keys and nothing else (`trainer.optimizer.lr: ${trainer.lr}`):
  the key they copy is compared itself.
A key missing from some runs' configs (written before it existed, or added with `+`) differs from a set value:
the rows split rather than mix what may be different runs, and the row says `unset`.

The label of a row names what sets it apart: `key=value` for each differing key (`model.width=16`). When the
runs' combos differ (mp_tr_bce, mp_tr_dice, ...), the row starts with its combo, and the keys of a config group
that the combo chose (the group's option, from Hydra's choices, is the same for every run of a combo, and the
key's value is the same for every run of that option: encoder.*, decoder.*, loss.* of the four combos) are
left to the combo's name, as are the keys the combo's own value interpolates; without Hydra's choices, a
summary's identity field of the group's name stands in. So a plain sweep over combos keeps its combo names as labels.

The settings line above a table names what every run shares: the settings the task lists (TaskSpec
`settings`), then the other command-line overrides every run was given; values that differ are in the rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from s18exp.report import configs
from s18exp.report.collect import Run
from s18exp.report.spec import TaskSpec

EXCLUDED = (
    "seed", "run_name", "combo", "hydra", "paths", "wandb", "data.root", "data.download", "data.cache",
    "trainer.device", "trainer.progress", "trainer.num_threads", "trainer.resume",
)
UNSET = "unset"
MISSING = configs.MISSING


@dataclass
class Variant:
    label: str
    settings: dict[str, str]  # every differing key -> this row's value, as text
    runs: list[Run] = field(default_factory=list)


def excluded(key: str) -> bool:
    return any(key == name or key.startswith(name + ".") for name in EXCLUDED)


def value_text(value: Any) -> str:
    """A config value as a command line writes it."""
    if value is MISSING:
        return UNSET
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(value_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return " ".join(str(value).splitlines())  # one line, whatever a foreign config holds


def _flat(run: Run) -> dict[str, Any]:
    assert run.config is not None
    return configs.flatten(run.config.values)


def varying_keys(runs: list[Run]) -> list[str]:
    """The counted keys (see the module's docstring) whose value is not the same in every run, in config order."""
    flats = [_flat(run) for run in runs]
    keys = list(dict.fromkeys(key for flat in flats for key in flat))
    derived = [run.config.derived for run in runs if run.config is not None]
    return [
        key for key in keys
        if not excluded(key)
        and not all(key in d for d, flat in zip(derived, flats) if key in flat)
        and len({value_text(flat.get(key, MISSING)) for flat in flats}) > 1
    ]


def variants(runs: list[Run], spec: TaskSpec) -> tuple[list[Variant], list[str]]:
    """The rows of `runs` (in order of first appearance) and the keys they differ in. When any run lacks a
    readable config, the rows are the combos instead (the task's identity fields, as the summaries name them)."""
    if any(run.config is None for run in runs):
        return _by_identity(runs, spec), []
    keys = varying_keys(runs)
    rows: dict[tuple[str, ...], Variant] = {}
    for run, flat in zip(runs, map(_flat, runs)):
        settings = {key: value_text(flat.get(key, MISSING)) for key in keys}
        rows.setdefault(tuple(settings.values()), Variant("", settings)).runs.append(run)
    ordered = list(rows.values())
    _label(ordered, keys, spec)
    return ordered, keys


def _by_identity(runs: list[Run], spec: TaskSpec) -> list[Variant]:
    rows: dict[tuple[str, ...], Variant] = {}
    for run in runs:
        rows.setdefault(tuple(str(run.identity.get(k)) for k in spec.identity), Variant("", {})).runs.append(run)
    ordered = list(rows.values())
    _label(ordered, [], spec)
    return ordered


def _combo(row: Variant, spec: TaskSpec) -> str:
    run = row.runs[0]
    return str(run.identity.get("combo") or "-".join(str(run.identity.get(k)) for k in spec.identity))


def _label(rows: list[Variant], keys: list[str], spec: TaskSpec) -> None:
    combos = [_combo(row, spec) for row in rows]
    named_by_combo = len(set(combos)) > 1 or not keys
    left_to_combo = _chosen_with_combo([run for row in rows for run in row.runs], keys) if len(set(combos)) > 1 else set()
    for row, combo in zip(rows, combos):
        parts = [combo] if named_by_combo else []
        row.label = ", ".join(parts + [f"{key}={row.settings[key]}" for key in keys if key not in left_to_combo])
    if len({row.label for row in rows}) < len(rows):  # never two rows under one name
        for row, combo in zip(rows, combos):
            row.label = ", ".join([combo] + [f"{key}={value}" for key, value in row.settings.items()])


def _function_of(inputs: list[str], outputs: list[str]) -> bool:
    """Whether equal inputs always come with equal outputs."""
    seen: dict[str, str] = {}
    return all(seen.setdefault(i, o) == o for i, o in zip(inputs, outputs))


def _chosen_with_combo(runs: list[Run], keys: list[str]) -> set[str]:
    """The keys that the combo's name already says: those its config value interpolates (`combo:
    vae_${data.name}_${model.condition}_...`), and those of a config group whose option differs between runs,
    goes with the combo, and sets the key. The option is Hydra's choice, else (a run without
    .hydra/hydra.yaml) the identity field of that name in its summary (encoder, decoder, loss)."""
    combos = [str(run.identity.get("combo")) for run in runs]
    flats = [_flat(run) for run in runs]
    said = set.intersection(*(set(run.config.references("combo")) for run in runs if run.config is not None))
    for key in keys:
        group = key.split(".", 1)[0]
        options = [value_text(run.choices.get(group, run.identity.get(group, MISSING))) for run in runs]
        values = [value_text(flat.get(key, MISSING)) for flat in flats]
        if UNSET not in options and len(set(options)) > 1 and _function_of(combos, options) and _function_of(options, values):
            said.add(key)
    return said


def common_settings(runs: list[Run], spec: TaskSpec, varying: list[str]) -> dict[str, str]:
    """What every run shares, for the line above the table: label -> value."""
    def differs(key: str) -> bool:
        return any(k == key or k.startswith(key + ".") for k in varying)

    settings: dict[str, str] = {}
    read = [run for run in runs if run.config is not None]
    for label, key in spec.settings:
        values = {value_text(configs.lookup(run.config.values, key, MISSING)) for run in read}  # type: ignore[union-attr]
        if len(values) == 1 and not differs(key) and (value := values.pop()) not in ("null", UNSET):
            settings[label] = value
    listed = {key for _, key in spec.settings}
    shared = set.intersection(*(set(run.overrides) for run in runs)) if runs else set()
    for override in sorted(shared, key=runs[0].overrides.index if runs else None):
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        if key not in listed and not excluded(key) and not differs(key):
            settings[key] = value
    return settings
