"""The report's rows are what a sweep varies (s18exp/report/variants.py), from configs composed by Hydra as a
real sweep composes them, read as data (s18exp/report/configs.py): no resolver of a foreign config ever runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from rich.console import Console

from s18exp.paths import CONFIG_DIR
from s18exp.report.build import make_report
from s18exp.report.collect import collect
from s18exp.report.configs import read, resolve_plain
from s18exp.report.table import build_sections
from s18exp.tasks.segmentation import SegmentationTask

COMBOS = ("mp_tr_bce", "mp_tr_dice", "strconv_tr_bce", "strconv_ups_dice")


def composed_sweep(root: Path, jobs: list[list[str]]) -> Path:
    """A sweep dir with one complete run per job, each written as `python -m s18exp --multirun` writes it: the
    composed config unresolved, Hydra's choices, the job's overrides, and a summary of the task's own keys."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        configs = [compose("config", overrides=overrides, return_hydra_config=True) for overrides in jobs]
    for job, (overrides, cfg) in enumerate(zip(jobs, configs)):
        run = root / f"{job}_run"
        (run / ".hydra").mkdir(parents=True)
        choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
        OmegaConf.save(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), run / ".hydra" / "config.yaml")
        OmegaConf.save(OmegaConf.create({"hydra": {"mode": "MULTIRUN", "runtime": {"choices": choices}}}), run / ".hydra" / "hydra.yaml")
        OmegaConf.save(OmegaConf.create(overrides), run / ".hydra" / "overrides.yaml")
        task = SegmentationTask(cfg)
        summary: dict[str, Any] = {
            "test/miou": 0.5 + 0.01 * job, "train_seconds": 1.0, "params": 10, "status": "complete",
            **task.describe(), "run_name": f"{cfg.combo}-s{cfg.seed}", "report": task.report_spec().as_dict(),
        }
        (run / "summary.json").write_text(json.dumps(summary))
    return root


def sweep_of(root: Path, *axes: list[str], common: tuple[str, ...] = ()) -> Path:
    """Every combination of the overrides of `axes` (a multirun's cross product), with `common` for all."""
    jobs = [[]]
    for axis in axes:
        jobs = [job + [override] for job in jobs for override in axis]
    return composed_sweep(root, [[*common, *job] for job in jobs])


def report(sweep: Path, **options: Any) -> int:
    return make_report(sweep, console=Console(record=True, width=250), **options)


def test_a_plain_four_combo_sweep_keeps_its_combo_names(tmp_path: Path) -> None:
    sweep = sweep_of(tmp_path / "s", [f"experiment={c}" for c in COMBOS], ["seed=0", "seed=1"])
    (section,) = build_sections(collect(sweep))
    assert [row.label for row in section.rows] == list(COMBOS)
    assert [len(row.runs) for row in section.rows] == [2, 2, 2, 2]
    assert "encoder.name" in section.varying and "loss.criterion._target_" in section.varying
    assert report(sweep) == 0
    md = (sweep / "report.md").read_text()
    assert "| combo | encoder | decoder | loss | n | test mIoU | 95% CI |" in md
    assert "Settings: data pets · image size 128 · classes trimap · epochs 60 · batch 8 · lr 0.001 · width 24 · depth 4" in md


def test_a_width_sweep_gives_one_row_per_width_labelled_by_the_width(tmp_path: Path) -> None:
    sweep = sweep_of(tmp_path / "s", ["model.width=8", "model.width=16", "model.width=24"], ["seed=0", "seed=1"])
    (section,) = build_sections(collect(sweep))
    assert [row.label for row in section.rows] == ["model.width=8", "model.width=16", "model.width=24"]
    assert [row.settings for row in section.rows] == [{"model.width": "8"}, {"model.width": "16"}, {"model.width": "24"}]
    assert [sorted(r.identity["seed"] for r in row.runs) for row in section.rows] == [[0, 1]] * 3
    assert section.varying == ["model.width"]
    assert "width" not in section.settings and section.settings["depth"] == "4"  # common settings only
    assert report(sweep) == 0
    md = (sweep / "report.md").read_text()
    assert "| variant | encoder | decoder | loss | n |" in md and "| model.width=16 | maxpool |" in md


def test_two_swept_keys_and_combos_name_every_key_that_the_combo_does_not(tmp_path: Path) -> None:
    sweep = sweep_of(tmp_path / "s", ["experiment=mp_tr_bce", "experiment=mp_tr_dice"], ["model.width=8", "model.width=16"], ["trainer.lr=0.001", "trainer.lr=3e-3"])
    (section,) = build_sections(collect(sweep))
    # keys in the order of the config (trainer before model), values as a command line writes them (3e-3: 0.003)
    assert [row.label for row in section.rows] == [
        f"{combo}, trainer.lr={lr}, model.width={width}" for combo in ("mp_tr_bce", "mp_tr_dice") for width in (8, 16) for lr in ("0.001", "0.003")
    ]


def test_bookkeeping_and_copied_keys_split_no_rows_and_a_copied_key_is_named_by_its_source(tmp_path: Path) -> None:
    jobs = [
        ["data.root=/data/a", "paths.cache_dir=/cache/a", "wandb.mode=offline", "trainer.device=cpu", "trainer.num_threads=1", "seed=0"],
        ["data.root=/data/b", "paths.cache_dir=/cache/b", "wandb.mode=disabled", "trainer.device=auto", "trainer.num_threads=2", "seed=1"],
    ]
    (section,) = build_sections(collect(composed_sweep(tmp_path / "a", jobs)))
    assert [row.label for row in section.rows] == ["mp_tr_dicece"] and section.varying == []
    # eval_batch_size, the optimiser's lr and OneCycle's max_lr copy other keys: only those keys are named
    (section,) = build_sections(collect(sweep_of(tmp_path / "b", ["trainer.batch_size=4", "trainer.batch_size=8"], ["trainer.lr=0.001", "trainer.lr=0.002"])))
    assert section.varying == ["trainer.batch_size", "trainer.lr"]
    assert section.rows[0].label == "trainer.batch_size=4, trainer.lr=0.001"


def test_a_key_that_only_some_runs_set_splits_the_rows(tmp_path: Path) -> None:
    sweep = sweep_of(tmp_path / "s", ["trainer.lr=0.001", "+trainer.optimizer.betas=[0.9,0.95]"])
    (section,) = build_sections(collect(sweep))
    assert [row.label for row in section.rows] == ["trainer.optimizer.betas=unset", "trainer.optimizer.betas=[0.9,0.95]"]


def test_a_foreign_config_is_read_without_running_any_resolver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run's config that calls resolvers: an environment variable (a secret would end up in the report) and a
    resolver registered in this process that would leave a marker file. Neither is evaluated; the values stay
    their raw text, while plain interpolations of other keys are resolved."""
    marker = tmp_path / "resolver-ran"
    OmegaConf.register_new_resolver("s18exp_test_marker", lambda: marker.touch() or "ran", replace=True)
    monkeypatch.setenv("S18EXP_TEST_SECRET", "s3cret-value")
    sweep = sweep_of(tmp_path / "s", ["seed=0", "seed=1"])
    for config_file in sweep.glob("*/.hydra/config.yaml"):
        config = OmegaConf.load(config_file)
        config.data.name = "${oc.env:S18EXP_TEST_SECRET}"
        config.model.block = "${s18exp_test_marker:}"
        config.augment.name = "${oc.create:{a: 1}}"
        OmegaConf.save(config, config_file)
    assert report(sweep) == 0
    written = "".join((sweep / name).read_text() for name in ("report.md", "report.html", "report.json"))
    assert not marker.exists()
    assert "s3cret-value" not in written
    assert "data ${oc.env:S18EXP_TEST_SECRET}" in (sweep / "report.md").read_text()
    config, problem = read(next(sweep.glob("*/.hydra/config.yaml")))
    assert problem is None and not marker.exists()
    assert config.values["trainer"]["optimizer"]["lr"] == 0.001 and config.values["combo"] == "mp_tr_dicece"


def test_plain_interpolations_resolve_and_anything_else_stays_raw() -> None:
    raw = {
        "a": {"b": 3, "c": "${a.b}", "d": "x${a.b}-${e}", "f": "${a.missing}", "g": "${oc.env:HOME}", "h": "${a.g}-y"},
        "e": "${a.c}", "loop": "${loop}", "list": ["${a.b}", "\\${a.b}"], "node": "${a}",
    }
    resolved = resolve_plain(raw, raw)
    assert resolved["a"]["c"] == 3 and resolved["e"] == 3  # a whole-value reference keeps the type, through a chain
    assert resolved["a"]["d"] == "x3-3"
    assert resolved["a"]["f"] == "${a.missing}" and resolved["a"]["g"] == "${oc.env:HOME}" and resolved["a"]["h"] == "${a.g}-y"
    assert resolved["loop"] == "${loop}" and resolved["list"] == [3, "\\${a.b}"]
    assert resolved["node"]["b"] == 3
