"""The VAE task in-process: config composition, bad input, wrong labels, evaluation, pictures and scores."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from s18exp.config import validate
from s18exp.data import Batches
from s18exp.errors import UserError
from s18exp.loop import Runtime
from s18exp.models.vae import LabelVAE
from s18exp.tasks.vae import FILES, VAETask, other_labels, spanning_selection
from s18exp.tracking import Tracker
from vae_data import CLASSES, compose_vae, image_folder, one_thread, tiny_overrides  # noqa: F401

CPU = Runtime(torch.device("cpu"), "fp32", channels_last=False)


def test_task_vae_defaults_to_mnist_and_the_command_line_wins():
    cfg = compose_vae([])
    assert cfg.data.name == "mnist" and cfg.data.image_size == 32 and cfg.model.condition == "both"
    assert cfg.run_name == "vae_mnist_both_mp_tr-s0"
    validate(cfg)
    cifar = compose_vae(["data=cifar10", "model.condition=encoder", "encoder=strided", "decoder=upsample", "seed=3"])
    assert cifar.data.name == "cifar10" and cifar.data.channels == cifar.model.in_channels == 3
    assert cifar.run_name == "vae_cifar10_encoder_strconv_ups-s3"
    assert compose_vae(["data=imagefolder", "data.root=/x"]).data.name == "imagefolder"


def test_bad_input_is_one_user_error_before_any_work(image_folder: Path, tmp_path: Path):
    base = tiny_overrides(image_folder, tmp_path)
    with pytest.raises(UserError, match="loss=dice cannot train a VAE"):
        VAETask(compose_vae([*base, "loss=dice"]))
    with pytest.raises(UserError, match="model.condition='label'"):
        VAETask(compose_vae([*base, "model.condition=label"]))
    with pytest.raises(UserError, match=r"test is missing"):
        (tmp_path / "only_train" / "train" / "a").mkdir(parents=True)
        VAETask(compose_vae([*base, f"data.root={tmp_path / 'only_train'}"]))
    with pytest.raises(UserError, match="needs data.root"):
        VAETask(compose_vae(["data=imagefolder"]))
    with pytest.raises(UserError, match="holds no class labels"):
        VAETask(compose_vae([*base, "data=pets"]))
    assert VAETask(compose_vae([*base, "loss=mse"])).likelihood.name == "mse"


def test_loss_mse_is_refused_by_the_unet():
    from s18exp.tasks.segmentation import SegmentationTask

    cfg = compose_vae(["loss=mse", "data=pets"])
    cfg.task._target_ = "s18exp.tasks.segmentation.SegmentationTask"
    with pytest.raises(Exception) as info:
        SegmentationTask(cfg)
    cause = info.value
    while cause is not None and not isinstance(cause, UserError):
        cause = cause.__cause__
    assert cause is not None and "task=unet takes loss=bce|dice" in str(cause)


def test_other_labels_never_equal_the_true_one_and_cover_the_others():
    true = torch.arange(10).repeat(300)
    given = other_labels(true, 10, torch.Generator().manual_seed(0))
    assert not (given == true).any()
    assert given.min() >= 0 and given.max() <= 9
    for label in range(10):  # uniform over the 9 others: 300 draws each, about 33 per other class
        counts = torch.bincount(given[true == label], minlength=10)
        assert counts[label] == 0 and counts.sum() == 300 and counts.max() < 60 and (counts > 0).sum() == 9


def test_spanning_selection_cycles_through_the_classes():
    labels = torch.tensor([2] * 20 + [0] * 5 + [1] * 3)
    chosen = spanning_selection(labels, 7, seed=0)
    assert [labels[i].item() for i in chosen] == [0, 1, 2, 0, 1, 2, 0]
    assert len(set(chosen)) == 7 and chosen == spanning_selection(labels, 7, seed=0)


def test_evaluate_reports_nats_per_image_over_the_whole_split(image_folder: Path, tmp_path: Path, one_thread):
    task = VAETask(compose_vae(tiny_overrides(image_folder, tmp_path)))
    data = task.build_data()
    model = task.build_model().eval()
    scores = task.evaluate(model, Batches(data.test, 5), CPU)
    assert set(scores) == {"elbo", "recon", "kl"}
    assert scores["elbo"] == pytest.approx(scores["recon"] + scores["kl"])
    assert scores["kl"] >= 0 and scores["recon"] > 0
    # the batch size does not change a mean over the split (the same z noise is drawn in the same order)
    assert task.evaluate(model, Batches(data.test, 12), CPU)["kl"] == pytest.approx(scores["kl"], rel=1e-5)


def test_finalize_writes_the_three_pictures_and_the_scores(image_folder: Path, tmp_path: Path, one_thread):
    cfg = compose_vae(tiny_overrides(image_folder, tmp_path))
    task = VAETask(cfg)
    data = task.build_data()
    model = task.build_model().eval()
    tracker = Tracker(mode="disabled", project="p", entity=None, run_dir=tmp_path, name="n", group="g",
                      job_type="vae", tags=[], config={})
    scores = task.finalize(model, data, CPU, tmp_path, tracker)
    assert set(scores) == {"judge/test_acc", "test/label_follow_acc", "test/input_keep_acc"}
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    # a wrong label never equals the true one, so following it and keeping the input are exclusive
    assert scores["test/label_follow_acc"] + scores["test/input_keep_acc"] <= 1.0
    for name in FILES.values():
        assert (tmp_path / name).is_file()
    # wrong_labels.png: two grids of 5 columns (inputs, outputs) of 16 px images enlarged 8x to 128 px tiles,
    # 4 px padding, 14 px captions, a 24 px gap between the grids and a 20 px title row above them; 25 tiles
    # in 5 rows, since the test split has 25 images or more.
    tile, pad, caption = 128, 4, 14
    assert len(data.test) >= 25
    rows = 5
    grid_w = 5 * (tile + pad) + pad
    grid_h = rows * (tile + caption + pad) + pad
    with Image.open(tmp_path / "wrong_labels.png") as figure:
        assert figure.size == (2 * grid_w + 24, 20 + grid_h)
        # the first input tile is the first chosen test image (class 0), enlarged
        first = spanning_selection(data.test.targets, 25, 0)[0]
        expected = Image.fromarray(data.test.images[first].permute(1, 2, 0).numpy()).resize((tile, tile), Image.NEAREST)
        assert figure.crop((pad, 20 + pad, pad + tile, 20 + pad + tile)).tobytes() == expected.tobytes()
    with Image.open(tmp_path / "samples.png") as samples:  # one row per class, 8 samples a row
        assert samples.size == (8 * (tile + pad) + pad, len(CLASSES) * (tile + caption + pad) + pad)
    # a second run reads the cached judge: same accuracy, no retraining
    judges = list((tmp_path / "cache" / "judges").glob("*.pt"))
    assert len(judges) == 1
    again = task.finalize(model, data, CPU, tmp_path, tracker)
    assert again["judge/test_acc"] == scores["judge/test_acc"]
    assert list((tmp_path / "cache" / "judges").glob("*.pt")) == judges


def test_outputs_follow_the_given_label_through_the_decoder(image_folder: Path, tmp_path: Path):
    task = VAETask(compose_vae(tiny_overrides(image_folder, tmp_path)))
    model = task.build_model().eval()
    assert isinstance(model, LabelVAE) and model.num_classes == len(CLASSES)
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    a = task.outputs(model, images, torch.tensor([0, 0, 0, 0]), CPU)
    b = task.outputs(model, images, torch.tensor([1, 1, 1, 1]), CPU)
    assert a.dtype == torch.uint8 and a.shape == images.shape and not torch.equal(a, b)


def test_the_judge_learns_from_the_whole_training_split_whatever_the_vae_used(image_folder: Path, tmp_path: Path):
    task = VAETask(compose_vae([*tiny_overrides(image_folder, tmp_path), "data.limit_train=6"]))
    data = task.build_data()
    assert len(data.train) == 6
    whole = task.judge_train_split(data, None)
    assert len(whole) == len(task.build_data(limit_train=None).train) > 6
    assert len(task.judge_train_split(data, 9)) == 9
    assert task.judge_train_split(data, 6) is data.train
