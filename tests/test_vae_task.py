"""The VAE task in-process: config composition, bad input, wrong labels, evaluation, pictures and scores."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import numpy as np
from PIL import Image

from s18exp.config import validate
from s18exp.data import Batches
from s18exp.errors import UserError
from s18exp.runtime import Runtime
from s18exp.models.vae import LabelVAE
from s18exp.tasks.vae import FILES, VAETask, other_labels, spanning_selection
from s18exp.tracking import Tracker
from vae_data import CLASSES, compose_vae, image_folder, one_thread, tiny_overrides  # noqa: F401

CPU = Runtime(torch.device("cpu"), "fp32", channels_last=False)


def test_task_vae_defaults_to_mnist_and_the_command_line_wins():
    cfg = compose_vae([])
    assert cfg.data.name == "mnist" and cfg.data.image_size == 32 and cfg.model.condition == "both"
    assert cfg.decoder.name == "nearest" and cfg.decoder.upsample.mode == "nearest"  # no transposed convolution
    assert cfg.run_name == "vae_mnist_both_mp_nn-s0"
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
    # Neither the batch size nor a split shared out among ranks changes the scores: each item's z noise is
    # picked by its index in the split. A large posterior variance makes the recon term depend on which noise
    # each item gets (an untrained decoder barely reads a z of unit scale).
    with torch.no_grad():
        model.encoder.heads.bias[model.latent_dim :] = 6.0
    scores = task.evaluate(model, Batches(data.test, 5), CPU)
    assert task.evaluate(model, Batches(data.test, 12), CPU) == pytest.approx(scores, rel=1e-6)
    shards = [task.evaluate(model, Batches(data.test, 4, rank=rank, world_size=2), CPU) for rank in (0, 1)]
    assert {key: shards[0][key] + shards[1][key] for key in scores} == pytest.approx(scores, rel=1e-6)


def test_finalize_writes_the_three_pictures_and_the_scores(image_folder: Path, tmp_path: Path, one_thread):
    cfg = compose_vae(tiny_overrides(image_folder, tmp_path))
    task = VAETask(cfg)
    data = task.build_data()
    model = task.build_model().eval()
    tracker = Tracker(mode="disabled", project="p", entity=None, run_dir=tmp_path, name="n", group="g",
                      job_type="vae", tags=[], config={})
    scores = task.finalize(model, data, CPU, tmp_path, tracker)
    panel = ("resnet", "mixer", "wide")
    measures = ("label_follow", "input_keep", "recon_read", "sample_follow")
    assert set(scores) == {
        "test/elbo", "test/recon", "test/kl", "judge/test_acc", "test/label_follow_spread",
        *(f"test/{m}_{stat}" for m in measures for stat in ("acc", "mean")),
        *(f"test/{m}/{name}" for m in measures for name in panel),
        *(f"judge/{m}_acc" for m in measures),
        *(f"panel/{what}/{name}" for what in ("test_acc", "train_seconds") for name in panel),
    }
    assert all(0.0 <= v <= 1.0 for k, v in scores.items() if k.startswith(("judge/", "test/", "panel/test_acc")) and "elbo" not in k and k not in ("test/recon", "test/kl"))
    # a wrong label never equals the true one, so following it and keeping the input are exclusive
    for reader in panel:
        assert scores[f"test/label_follow/{reader}"] + scores[f"test/input_keep/{reader}"] <= 1.0
    assert scores["test/label_follow_acc"] == min(scores[f"test/label_follow/{reader}"] for reader in panel)
    for name in FILES.values():
        assert (tmp_path / name).is_file()
    # wrong_labels.png: two grids of 5 columns (inputs, outputs) of 16 px images enlarged 8x to 128 px tiles,
    # 4 px padding, 14 px captions, a 24 px gap between the grids and a title row above them; 25 tiles
    # in 5 rows, since the test split has 25 images or more.
    tile, pad, caption = 128, 4, 14
    assert len(data.test) >= 25
    rows = 5
    grid_w = 5 * (tile + pad) + pad
    grid_h = rows * (tile + caption + pad) + pad
    with Image.open(tmp_path / "wrong_labels.png") as figure:
        title_h = figure.height - grid_h
        assert figure.width == 2 * grid_w + 24 and title_h >= 16  # room for a line of text
        # the first input tile is the first chosen test image (class 0), enlarged
        first = spanning_selection(data.test.targets, 25, 0)[0]
        expected = Image.fromarray(data.test.images[first].permute(1, 2, 0).numpy()).resize((tile, tile), Image.NEAREST)
        assert figure.crop((pad, title_h + pad, pad + tile, title_h + pad + tile)).tobytes() == expected.tobytes()
    with Image.open(tmp_path / "samples.png") as samples:  # one row per class, 8 samples a row, under a title
        grid_h = len(CLASSES) * (tile + caption + pad) + pad
        assert samples.width == 8 * (tile + pad) + pad and samples.height - grid_h >= 16
    # a second run reads the cached judge and readers: the same scores, no retraining
    judges = list((tmp_path / "cache" / "judges").glob("*.pt"))
    readers = sorted((tmp_path / "cache" / "readers").glob("*.pt"))
    assert len(judges) == 1 and len(readers) == len(panel)
    stamps = [path.stat().st_mtime_ns for path in readers]
    again = task.finalize(model, data, CPU, tmp_path, tracker)
    assert again == scores
    assert list((tmp_path / "cache" / "judges").glob("*.pt")) == judges
    assert [path.stat().st_mtime_ns for path in sorted((tmp_path / "cache" / "readers").glob("*.pt"))] == stamps


def test_outputs_follow_the_given_label_through_the_decoder(image_folder: Path, tmp_path: Path):
    task = VAETask(compose_vae(tiny_overrides(image_folder, tmp_path)))
    model = task.build_model().eval()
    assert isinstance(model, LabelVAE) and model.num_classes == len(CLASSES)
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    a = task.outputs(model, images, torch.tensor([0, 0, 0, 0]), CPU)
    b = task.outputs(model, images, torch.tensor([1, 1, 1, 1]), CPU)
    assert a.dtype == torch.uint8 and a.shape == images.shape and not torch.equal(a, b)


def test_the_judge_and_readers_learn_from_the_whole_training_split_whatever_the_vae_used(image_folder: Path, tmp_path: Path):
    task = VAETask(compose_vae([*tiny_overrides(image_folder, tmp_path), "data.limit_train=6"]))
    data = task.build_data()
    assert len(data.train) == 6
    whole = task.classifier_train_split(data, None)
    assert len(whole) == len(task.build_data(limit_train=None).train) > 6
    assert len(task.classifier_train_split(data, 9)) == 9
    assert task.classifier_train_split(data, 6) is data.train


class _LabelPainter(torch.nn.Module):
    """A stand-in VAE whose decoder paints the grey level of a class: label k -> class k for k < 2, every
    other label -> class 0. Its outputs follow labels 0 and 1 and nothing else."""

    latent_dim = 4

    def encode(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(len(x), self.latent_dim), torch.zeros(len(x), self.latent_dim)

    def decode(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        painted = torch.where(labels < 2, labels, torch.zeros_like(labels)).float()
        level = (painted + 0.5) / len(CLASSES)  # a grey level in (0, 1) that names the class
        return torch.logit(level).view(-1, 1, 1, 1).expand(-1, 3, 16, 16)

    def reconstruct(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decode(self.encode(x, labels)[0], labels))


class _GreyLevelJudge(torch.nn.Module):
    """Reads the class from an image's mean grey level, the inverse of _LabelPainter."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        level = x.float().mean(dim=(1, 2, 3))
        return -(level[:, None] * len(CLASSES) - 0.5 - torch.arange(len(CLASSES))[None, :]).abs()


class _ClassZeroReader(torch.nn.Module):
    """Reads every image as class 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.zeros(len(x), dtype=torch.long), len(CLASSES)).float()


def test_the_panel_and_judge_scores_and_test_items_match_a_count_by_hand(image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import s18exp.judge_training as judge_training
    import s18exp.tasks.vae as vae_task
    from s18exp import test_items
    from s18exp.readers.panel import Reader

    task = VAETask(compose_vae(tiny_overrides(image_folder, tmp_path)))
    data = task.build_data()
    # The judge and reader "grey" read the painter's grey levels back; reader "zero" always says class 0.
    monkeypatch.setattr(judge_training, "judge_for", lambda *args, **kwargs: _GreyLevelJudge())
    panel = [Reader("grey", _GreyLevelJudge(), 1.0, 1, 2.0), Reader("zero", _ClassZeroReader(), 1.0, 1, 3.0)]
    monkeypatch.setattr(vae_task, "panel_for", lambda *args, **kwargs: panel)
    tracker = Tracker(mode="disabled", project="p", entity=None, run_dir=tmp_path, name="n", group="g", job_type="vae", tags=[], config={})
    scores = task.finalize(_LabelPainter(), data, CPU, tmp_path, tracker)

    true = data.test.targets.tolist()
    given = other_labels(data.test.targets, len(CLASSES), torch.Generator().manual_seed(0)).tolist()  # the run's wrong labels
    n = len(true)
    painted = lambda label: label if label < 2 else 0  # what _LabelPainter draws for a label
    share = lambda hits: sum(hits) / n
    by_hand = {
        "grey": {
            "label_follow": share(painted(g) == g for g in given),
            "input_keep": share(painted(g) == t for g, t in zip(given, true)),
            "recon_read": share(painted(t) == t for t in true),
            "sample_follow": share(painted(i % 3) == i % 3 for i in range(n)),  # sample labels cycle 0, 1, 2, ...
        },
        "zero": {
            "label_follow": share(g == 0 for g in given),
            "input_keep": share(t == 0 for t in true),
            "recon_read": share(t == 0 for t in true),
            "sample_follow": share(i % 3 == 0 for i in range(n)),
        },
    }
    for measure in ("label_follow", "input_keep", "recon_read", "sample_follow"):
        grey, zero = by_hand["grey"][measure], by_hand["zero"][measure]
        assert scores[f"test/{measure}/grey"] == pytest.approx(grey) and scores[f"test/{measure}/zero"] == pytest.approx(zero)
        assert scores[f"test/{measure}_acc"] == pytest.approx(min(grey, zero))
        assert scores[f"test/{measure}_mean"] == pytest.approx((grey + zero) / 2)
        assert scores[f"judge/{measure}_acc"] == pytest.approx(grey)  # the judge reads as "grey" does
    follow = by_hand["grey"]["label_follow"], by_hand["zero"]["label_follow"]
    assert scores["test/label_follow_spread"] == pytest.approx(max(follow) - min(follow)) and min(follow) < max(follow)
    assert scores["panel/test_acc/zero"] == pytest.approx(share(t == 0 for t in true))
    assert (scores["panel/train_seconds/grey"], scores["panel/train_seconds/zero"]) == (2.0, 3.0)

    # test_items.npz: the same outcomes item by item, the judge's column first; its means are the summary's, exactly
    items = test_items.load(tmp_path / test_items.TEST_ITEMS)
    assert items["readers"].tolist() == ["judge", "grey", "zero"]
    assert items["true_labels"].dtype == items["given_labels"].dtype == np.int64
    assert items["true_labels"].tolist() == true and items["given_labels"].tolist() == given
    assert items["follow"].dtype == items["keep"].dtype == items["recon_right"].dtype == np.bool_
    assert items["follow"].shape == items["keep"].shape == items["recon_right"].shape == (n, 3)
    assert items["follow"][:, 2].tolist() == [g == 0 for g in given]
    assert items["keep"][:, 1].tolist() == [painted(g) == t for g, t in zip(given, true)]
    assert items["recon_right"][:, 0].tolist() == [painted(t) == t for t in true]
    for array, measure in (("follow", "label_follow"), ("keep", "input_keep"), ("recon_right", "recon_read")):
        assert float(items[array][:, 0].mean()) == scores[f"judge/{measure}_acc"]
        assert [float(items[array][:, i].mean()) for i in (1, 2)] == [scores[f"test/{measure}/grey"], scores[f"test/{measure}/zero"]]
        assert min(float(items[array][:, i].mean()) for i in (1, 2)) == scores[f"test/{measure}_acc"]
    assert items["elbo"].dtype == np.float64 and items["elbo"].shape == (n,)
    assert float(items["elbo"].mean()) == scores["test/elbo"]
    # each item's -ELBO is its reconstruction and KL terms as evaluate() computes them over the split
    evaluated = task.evaluate(_LabelPainter(), Batches(data.test, 4), CPU)
    assert scores["test/elbo"] == pytest.approx(evaluated["elbo"], rel=1e-9)


def test_label_sweep_has_one_row_per_input_and_a_column_per_label(image_folder: Path, tmp_path: Path, one_thread):
    task = VAETask(compose_vae(tiny_overrides(image_folder, tmp_path)))
    data = task.build_data()
    model = task.build_model().eval()
    tracker = Tracker(mode="disabled", project="p", entity=None, run_dir=tmp_path, name="n", group="g", job_type="vae", tags=[], config={})
    task.finalize(model, data, CPU, tmp_path, tracker)
    # 3 classes: 3 rows (one test input per class), the input + one column per label; 16 px images enlarged
    # to 128 px tiles, 4 px padding, 14 px column titles and captions, a title line above the grid
    tile, pad, caption = 128, 4, 14
    rows, cols = len(CLASSES), 1 + len(CLASSES)
    with Image.open(tmp_path / FILES["label_sweep"]) as sweep:
        title = sweep.height - ((caption + pad) + rows * (tile + caption + pad) + pad)
        assert sweep.width == cols * (tile + pad) + pad and title >= 16  # room for a line of text
        pixels = torch.from_numpy(np.asarray(sweep.convert("RGB")).copy())
    chosen = spanning_selection(data.test.targets, 25, 0)[: len(CLASSES)]
    assert sorted(data.test.targets[chosen].tolist()) == list(range(len(CLASSES)))
    for row, index in enumerate(chosen):
        y0 = title + caption + pad + pad + row * (tile + caption + pad)
        first = pixels[y0 : y0 + tile, pad : pad + tile]
        expected = data.test.images[index].permute(1, 2, 0).repeat_interleave(8, 0).repeat_interleave(8, 1)
        assert torch.equal(first, expected)
        for label in range(len(CLASSES)):  # column 1 + k: the output under label k, enlarged
            x0 = pad + (1 + label) * (tile + pad)
            out = task.outputs(model, data.test.images[index : index + 1], torch.tensor([label]), CPU)[0]
            expected = out.permute(1, 2, 0).repeat_interleave(8, 0).repeat_interleave(8, 1)
            assert torch.equal(pixels[y0 : y0 + tile, x0 : x0 + tile], expected)


def test_beta_falls_from_beta_start_to_beta_over_the_warmdown(image_folder: Path, tmp_path: Path):
    base = tiny_overrides(image_folder, tmp_path)
    task = VAETask(compose_vae([*base, "task.beta=1", "task.beta_start=9", "task.beta_warmdown=0.25"]))
    assert task.beta_at(0.0) == 9.0
    assert task.beta_at(0.125) == pytest.approx(5.0)  # halfway through the warm-down
    assert task.beta_at(0.25) == task.beta_at(0.7) == task.beta_at(1.0) == 1.0
    assert VAETask(compose_vae([*base, "task.beta=2", "task.beta_warmdown=0"])).beta_at(0.0) == 2.0
    with pytest.raises(UserError, match="task.beta_warmdown=1.5"):
        VAETask(compose_vae([*base, "task.beta_warmdown=1.5"]))


def test_training_loss_weighs_the_kl_by_the_beta_of_its_progress(image_folder: Path, tmp_path: Path, one_thread):
    from s18exp.models.vae import gaussian_kl

    base = tiny_overrides(image_folder, tmp_path)
    task = VAETask(compose_vae([*base, "task.beta=1", "task.beta_start=5", "task.beta_warmdown=0.5", "task.encoder_label_noise=0", "task.prior_z_share=0"]))
    data = task.build_data()
    model = task.build_model().eval()
    images, labels = data.train.images[:6], data.train.targets[:6]
    x = task.to_input(images)
    losses = {}
    for progress in (0.0, 0.25, 1.0):
        torch.manual_seed(3)
        losses[progress] = task.training_loss(model, images, labels, progress).item()
    torch.manual_seed(3)
    logits, mu, logvar = model(x, labels)
    recon, kl = task.likelihood(logits, x).mean().item(), gaussian_kl(mu, logvar).mean().item()
    assert losses[0.0] == pytest.approx(recon + 5 * kl, rel=1e-5)
    assert losses[0.25] == pytest.approx(recon + 3 * kl, rel=1e-5)
    assert losses[1.0] == pytest.approx(recon + 1 * kl, rel=1e-5)


def test_encoder_label_noise_replaces_a_share_of_the_encoders_labels_only_with_both(image_folder: Path, tmp_path: Path):
    base = tiny_overrides(image_folder, tmp_path)
    task = VAETask(compose_vae([*base, "model.condition=both", "task.encoder_label_noise=0.5"]))
    labels = torch.zeros(6000, dtype=torch.long)
    torch.manual_seed(0)
    noisy = task.encoder_labels(labels)
    # half are redrawn uniformly over the 3 classes, so about 1/3 of those (1/6 of all) stay 0 by chance
    changed = (noisy != labels).double().mean().item()
    assert changed == pytest.approx(0.5 * (1 - 1 / len(CLASSES)), abs=0.02)
    assert set(noisy.tolist()) == set(range(len(CLASSES)))
    torch.manual_seed(0)
    assert torch.equal(task.encoder_labels(labels), noisy)  # drawn from the global, checkpointed generator
    decoder_only = VAETask(compose_vae([*base, "model.condition=decoder", "task.encoder_label_noise=0.5"]))
    assert torch.equal(decoder_only.encoder_labels(labels), labels)
    with pytest.raises(UserError, match="task.encoder_label_noise=2"):
        VAETask(compose_vae([*base, "task.encoder_label_noise=2"]))


def test_the_encoder_gets_encoder_labels_and_the_decoder_the_labels(image_folder: Path, tmp_path: Path, one_thread):
    task = VAETask(compose_vae([*tiny_overrides(image_folder, tmp_path), "model.condition=both"]))
    model = task.build_model().eval()
    x = task.to_input(task.build_data().test.images[:4])
    labels, other = torch.tensor([0, 1, 2, 0]), torch.tensor([1, 2, 0, 1])
    torch.manual_seed(0)
    logits, mu, logvar = model(x, labels, other)
    expected_mu, _ = model.encode(x, other)
    assert torch.allclose(mu, expected_mu)
    torch.manual_seed(0)
    plain_logits, plain_mu, _ = model(x, labels)
    assert not torch.allclose(plain_mu, mu)
    torch.manual_seed(0)
    z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
    assert torch.allclose(logits, model.decode(z, labels), atol=1e-6)


def test_prior_rows_decode_a_z_from_the_prior_with_the_true_label(image_folder: Path, tmp_path: Path, one_thread):
    base = [*tiny_overrides(image_folder, tmp_path), "model.condition=decoder"]
    task = VAETask(compose_vae([*base, "task.prior_z_share=0.25"]))
    torch.manual_seed(4)
    rows = task.prior_rows(8000, torch.device("cpu"))
    assert rows is not None and rows.double().mean().item() == pytest.approx(0.25, abs=0.02)
    torch.manual_seed(4)
    assert torch.equal(task.prior_rows(8000, torch.device("cpu")), rows)  # the global, checkpointed generator

    # training_loss hands the model the rows it drew, and the decoder the true labels
    model = task.build_model().eval()
    seen = {}

    class Spy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, x, labels, encoder_labels=None, from_prior=None):
            seen.update(labels=labels, from_prior=from_prior)
            return self.inner(x, labels, encoder_labels, from_prior)

    images, labels = task.build_data().test.images[:6], torch.tensor([0, 1, 2, 0, 1, 2])
    torch.manual_seed(5)
    expected_rows = torch.rand(6) < 0.25
    torch.manual_seed(5)
    task.training_loss(Spy(), images, labels)
    assert torch.equal(seen["from_prior"], expected_rows) and torch.equal(seen["labels"], labels)

    # the model decodes those rows from z ~ N(0, I), the others from q(z|x, y): same draws, by hand
    x = task.to_input(images)
    torch.manual_seed(6)
    logits, mu, logvar = model(x, labels, None, expected_rows | torch.tensor([True, False, False, False, False, False]))
    torch.manual_seed(6)
    posterior = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
    prior = torch.randn_like(mu)
    chosen = (expected_rows | torch.tensor([True, False, False, False, False, False]))[:, None]
    assert torch.allclose(logits, model.decode(torch.where(chosen, prior, posterior), labels), atol=1e-6)
    assert not torch.allclose(model.decode(prior, labels)[0], model.decode(posterior, labels)[0], atol=1e-6)

    assert VAETask(compose_vae([*base, "task.prior_z_share=0"])).prior_rows(5, x.device) is None
    with pytest.raises(UserError, match="task.prior_z_share=-1"):
        VAETask(compose_vae([*base, "task.prior_z_share=-1"]))


def test_the_console_table_shows_the_judge_and_readers_accuracy_beside_the_test_scores() -> None:
    from s18exp.summary import shown_metrics

    summary = {"test/elbo": 104.0, "judge/test_acc": 0.995, "panel/test_acc/resnet": 0.99, "params": 12345, "best_val/elbo": 105.0, "status": "complete"}
    assert shown_metrics(summary, VAETask.shown_scores) == {"test/elbo": 104.0, "judge/test_acc": 0.995, "panel/test_acc/resnet": 0.99}


def test_guide_term_adds_the_guides_cross_entropies_to_the_elbo(image_folder: Path, tmp_path: Path, one_thread):
    import torch.nn.functional as F
    from s18exp.models.vae import gaussian_kl

    base = [*tiny_overrides(image_folder, tmp_path), "model.condition=both", "task.encoder_label_noise=0",
            "task.prior_z_share=0", "task.beta=1", "task.beta_start=1", "model.guide_width=4", "task.guides=[judge]",
            *(f"task.guide_augment.{change}=0" for change in ("translation", "cutout", "brightness", "saturation", "contrast"))]
    task = VAETask(compose_vae([*base, "task.guide_weight=7", "task.guide_blur=0"]))
    model = task.build_model().eval()
    images, labels = task.build_data().train.images[:6], torch.tensor([0, 1, 2, 0, 1, 2])
    torch.manual_seed(2)
    loss = task.training_loss(model, images, labels).item()

    # by hand: one wrong label per image, then the encoder's draw of z, the reconstruction and the guide
    x = task.to_input(images)
    torch.manual_seed(2)
    given = other_labels(labels, len(CLASSES), None)
    mu, logvar = model.encode(x, labels)
    z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
    with torch.no_grad():
        elbo = (task.likelihood(model.decode(z, labels), x) + gaussian_kl(mu, logvar)).mean()
        on_real = F.cross_entropy(model.guides["judge"](x), labels)
        on_drawn = F.cross_entropy(model.guides["judge"](torch.sigmoid(model.decode(z, given))), given)
    assert loss == pytest.approx((elbo + on_real + 7 * on_drawn).item(), rel=1e-5)
    assert on_drawn.item() > 0.1  # an untrained guide: the term is far from zero

    # weight 0 builds no guide at all; the plain ELBO then is the whole loss
    assert VAETask(compose_vae([*base, "task.guide_weight=0"])).build_model().guides is None
    for bad in ("task.guide_weight=-1", "task.guide_weight=abc", "task.guide_weight=inf", "task.guide_blur=-2"):
        with pytest.raises(UserError, match=bad.split("=")[0] + "="):
            VAETask(compose_vae([*base, bad]))
    for bad in ("model.guide_width=-1", "model.guide_width=2.5", "model.guide_width=true"):
        with pytest.raises(UserError, match="model.guide_width="):
            VAETask(compose_vae([*base, "task.guide_weight=7", bad])).build_model()


def test_the_guide_is_on_by_default_for_cifar10_only_and_the_command_line_wins():
    assert compose_vae(["data=cifar10"]).task.guide_weight == 200
    assert compose_vae([]).task.guide_weight == 0  # MNIST
    assert compose_vae(["data=imagefolder", "data.root=/x"]).task.guide_weight == 0
    assert compose_vae(["data=cifar10", "task.guide_weight=5"]).task.guide_weight == 5
    assert compose_vae(["task.guide_weight=5"]).task.guide_weight == 5
