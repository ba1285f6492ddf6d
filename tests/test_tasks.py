"""The task contract (s18exp.tasks.Task): both tasks keep it, say how the report shows them, and are built the
one way that every command builds them."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch
from conftest import TinyPets
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from vae_data import compose_vae

from s18exp.paths import CONFIG_DIR
from s18exp.report.spec import TaskSpec, spec_in
from s18exp.tasks import Task, build, task_for
from s18exp.tasks.segmentation import SegmentationTask
from s18exp.tasks.vae import VAETask

TASK_CLASSES = {"unet": SegmentationTask, "vae": VAETask}
CONTRACT_METHODS = sorted(name for name, value in vars(Task).items() if inspect.isfunction(value) and not name.startswith("_"))


def unet_config(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=["data.image_size=32", "model.width=4", "model.depth=2", *overrides])


def vae_config(*overrides: str) -> DictConfig:
    return compose_vae(["data.image_size=16", "model.width=4", "model.depth=2", "model.latent_dim=4", "model.embed_dim=4", *overrides])


def config_of(name: str) -> DictConfig:
    return unet_config() if name == "unet" else vae_config()


@pytest.mark.parametrize("name", TASK_CLASSES)
def test_each_task_keeps_the_contract(name: str) -> None:
    task = task_for(config_of(name))
    assert type(task) is TASK_CLASSES[name] and task.name == name
    assert isinstance(task, Task)
    assert task.monitor_mode in ("max", "min")
    assert list(task.describe()) == ["task", *task.combo_keys, "seed", "combo"]
    assert all(isinstance(c, str) for c in task.class_names) and len(task.class_names) >= 2


@pytest.mark.parametrize("name", TASK_CLASSES)
def test_each_task_method_takes_the_arguments_of_the_contract(name: str) -> None:
    """What a type checker would say of the signatures: each method takes the contract's parameters in the same
    positions (callers pass them positionally; a task names them its way, e.g. masks or labels for the targets),
    with a default where the contract has one; anything more is optional."""
    assert {"build_data", "evaluate", "test", "finalize", "report_spec", "example_input"} <= set(CONTRACT_METHODS)
    for method in CONTRACT_METHODS:
        wanted = list(inspect.signature(getattr(Task, method)).parameters.values())
        own = list(inspect.signature(getattr(TASK_CLASSES[name], method)).parameters.values())
        assert len(own) >= len(wanted), method
        for mine, theirs in zip(own, wanted):
            assert mine.kind == theirs.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD, (method, mine.name)
            assert theirs.default is inspect.Parameter.empty or mine.default == theirs.default, (method, mine.name)
        extra = own[len(wanted):]
        assert all(p.default is not inspect.Parameter.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in extra), method


@pytest.mark.parametrize("name", TASK_CLASSES)
def test_the_example_input_goes_through_the_model(name: str) -> None:
    cfg = config_of(name)
    task = task_for(cfg)
    model = task.build_model().eval()
    inputs = task.example_input(int(cfg.data.image_size))
    assert all(t.shape[0] == 1 for t in inputs)
    with torch.no_grad():
        out = model(*inputs)
    first = out[0] if isinstance(out, tuple) else out
    assert first.shape[-2:] == (cfg.data.image_size, cfg.data.image_size)


@pytest.mark.parametrize("name", TASK_CLASSES)
def test_the_report_spec_survives_summary_json(name: str) -> None:
    task = task_for(config_of(name))
    spec = task.report_spec()
    summary = json.loads(json.dumps({"task": name, "report": spec.as_dict()}))
    assert spec_in(summary) == spec
    assert spec.name == name and spec.identity == task.combo_keys
    assert spec.required == f"test/{task.monitor}" and spec.required in [c.key for c in spec.columns]


def test_the_unet_spec_names_the_classes_of_its_scheme() -> None:
    for scheme, classes in (("trimap", ("pet", "background", "border")), ("binary", ("background", "pet"))):
        spec = SegmentationTask(unet_config(f"data.classes={scheme}")).report_spec()
        assert spec.picture_legend == classes and spec.picture == "predictions.png"
        assert [key for key, _ in spec.bar_keys] == [f"test/iou_{c}" for c in classes]
        assert [c.key for c in spec.columns if c.key.startswith("test/iou_")] == [f"test/iou_{c}" for c in classes]


def test_a_block_that_is_not_a_spec_reads_as_none() -> None:
    block = SegmentationTask(unet_config()).report_spec().as_dict()
    assert spec_in({}) is None and spec_in(None) is None and spec_in({"report": [1]}) is None
    assert spec_in({"report": {**block, "columns": [{"key": "test/miou"}]}}) is None
    assert spec_in({"report": {k: v for k, v in block.items() if k != "title"}}) is None
    assert isinstance(spec_in({"report": block}), TaskSpec)


def test_a_spec_from_before_item_metrics_reads_with_none_and_a_hostile_one_as_no_spec() -> None:
    block = json.loads(json.dumps(SegmentationTask(unet_config()).report_spec().as_dict()))  # as summary.json holds it
    assert block["item_metrics"] == [
        {"key": "test/miou", "label": "test mIoU", "better": "max", "stat": "miou", "array": "confusion", "columns": [], "column_names": ""}
    ]
    older = spec_in({"report": {k: v for k, v in block.items() if k not in ("item_metrics", "settings")}})
    assert older is not None and older.item_metrics == () and older.settings == ()
    metric = block["item_metrics"][0]
    for hostile in ({**metric, "key": ["test/miou"]}, {**metric, "stat": "median"}, {**metric, "columns": ["a"]}, {**metric, "run": "code"}):
        assert spec_in({"report": {**block, "item_metrics": [hostile]}}) is None
    assert spec_in({"report": {**block, "columns": [{"key": "test/miou", "label": "m", "better": "max", "kind": "weird"}]}}) is None


def test_build_makes_the_task_its_data_and_its_model(tiny_pets: TinyPets, tmp_path: Path) -> None:
    cfg = unet_config(f"data.root={tiny_pets.root}", "data.download=false", f"paths.cache_dir={tmp_path / 'cache'}")
    task, data, model = build(cfg)
    assert isinstance(task, SegmentationTask) and task.cfg is cfg
    assert len(data.train) + len(data.val) == len(tiny_pets.trainval) and len(data.test) == len(tiny_pets.test)
    assert model(*task.example_input(32)).shape == (1, 3, 32, 32)
