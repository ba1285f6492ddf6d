"""The label-conditioned VAE: shapes of every block combination, where the label enters, the ELBO terms."""

from __future__ import annotations

import inspect
import itertools
import math
from functools import partial

import pytest
import torch
from torch import nn

from s18exp.blocks import InterpolateUpsample, MaxPoolDownsample, StridedConvDownsample, TransposeUpsample
from s18exp.errors import UserError
from s18exp.models.judge import Judge
from s18exp.models.vae import (
    CONDITIONS,
    BernoulliLikelihood,
    GaussianLikelihood,
    LabelVAE,
    gaussian_kl,
)
from vae_data import one_thread  # noqa: F401  (fixture)

DOWNSAMPLES = {"maxpool": MaxPoolDownsample, "strided": StridedConvDownsample}
UPSAMPLES = {"transpose": TransposeUpsample, "upsample": partial(InterpolateUpsample, mode="bilinear"), "nearest": partial(InterpolateUpsample, mode="nearest")}
SHAPES = {"mnist": (1, 32), "cifar10": (3, 32)}  # channels, image size


def make(condition: str = "both", down: str = "maxpool", up: str = "transpose", channels: int = 1, size: int = 32,
         depth: int = 2, num_classes: int = 10, latent: int = 6, every_level: bool = True) -> LabelVAE:
    torch.manual_seed(0)
    return LabelVAE(num_classes, DOWNSAMPLES[down], UPSAMPLES[up], image_size=size, in_channels=channels,
                    latent_dim=latent, condition=condition, width=4, depth=depth, embed_dim=5,
                    label_every_level=every_level, guide_width=0, guide_arches=(), drawn_augment=None)


@pytest.mark.parametrize("down,up,condition", list(itertools.product(DOWNSAMPLES, UPSAMPLES, CONDITIONS)))
def test_shapes_of_every_combination_at_mnist_and_cifar_shapes(down, up, condition, one_thread):
    for (dataset, (channels, size)), depth, every_level in itertools.product(SHAPES.items(), (2, 3), (True, False)):
        model = make(condition, down, up, channels, size, depth, every_level=every_level).eval()
        x, y = torch.rand(3, channels, size, size), torch.tensor([0, 4, 9])
        logits, mu, logvar = model(x, y)
        assert logits.shape == (3, channels, size, size), (dataset, depth)
        assert mu.shape == logvar.shape == (3, 6)
        assert model.reconstruct(x, y).shape == (3, channels, size, size)
        assert model.decode(torch.randn(3, 6), y).shape == (3, channels, size, size)


def test_blocks_are_the_configured_ones():
    model = make(down="strided", up="upsample")
    assert any(isinstance(m, StridedConvDownsample) for m in model.encoder.modules())
    assert not any(isinstance(m, MaxPoolDownsample) for m in model.encoder.modules())
    assert any(isinstance(m, InterpolateUpsample) for m in model.decoder.modules())
    assert not any(isinstance(m, TransposeUpsample) for m in model.decoder.modules())


@pytest.mark.parametrize("every_level", [True, False])
def test_both_a_different_label_changes_the_decoder_output_for_a_fixed_z(every_level):
    model = make("both", every_level=every_level).eval()
    z = torch.randn(4, 6).repeat(2, 1)
    labels = torch.tensor([0, 1, 2, 3, 5, 6, 7, 8])
    with torch.no_grad():
        out = model.decode(z, labels)
        again = model.decode(z, labels)
    assert torch.equal(out, again)
    assert (out[:4] - out[4:]).abs().amax(dim=(1, 2, 3)).min() > 1e-4
    # with the label at every level, each up step gets a bias from it; without, only the input does
    assert (model.decoder.level_bias is not None) == every_level


def test_decoder_condition_the_label_reaches_the_decoder_not_the_encoder():
    model = make("decoder").eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.encode(x, torch.tensor([0, 1]))[0], model.encode(x, torch.tensor([5, 7]))[0])
        z = torch.randn(2, 6)
        assert not torch.equal(model.decode(z, torch.tensor([0, 1])), model.decode(z, torch.tensor([5, 7])))
    assert model.encoder.embedding is None


def test_encoder_condition_the_decoder_has_no_label_input_at_all():
    model = make("encoder").eval()
    assert list(inspect.signature(model.decoder.forward).parameters) == ["z"]
    assert not any(isinstance(m, nn.Embedding) for m in model.decoder.modules())
    assert isinstance(model.encoder.embedding, nn.Embedding)
    x, z = torch.rand(2, 1, 32, 32), torch.randn(2, 6)
    with torch.no_grad():
        assert torch.equal(model.decode(z, torch.tensor([0, 1])), model.decode(z, torch.tensor([5, 7])))
        # the label still acts, through the encoder (multiplied into its features)
        assert not torch.equal(model.encode(x, torch.tensor([0, 1]))[0], model.encode(x, torch.tensor([5, 7]))[0])


@pytest.mark.parametrize("up", list(UPSAMPLES))
def test_only_the_transposed_convolution_draws_a_grid_over_a_flat_input(up: str):
    """A constant feature map up-sampled: the interpolating blocks give a constant picture away from the border,
    a stride-2 transposed convolution gives each pixel of a 2x2 block its own weights, a grid of period 2."""
    torch.manual_seed(0)
    block = UPSAMPLES[up](4, 3)
    with torch.no_grad():
        out = block(torch.ones(1, 4, 8, 8))[0, :, 2:-2, 2:-2]
    flat = torch.allclose(out, out[:, :1, :1].expand_as(out), atol=1e-6)
    assert flat == (up != "transpose")
    if up == "transpose":
        assert torch.equal(out[:, ::2, ::2], out[:, 2::2, 2::2][:, :1, :1].expand_as(out[:, ::2, ::2]))  # period 2


def test_the_nearest_decoder_is_a_config_choice():
    from vae_data import compose_vae

    cfg = compose_vae(["decoder=nearest"])
    assert cfg.decoder.upsample.mode == "nearest" and cfg.run_name == "vae_mnist_both_mp_nn-s0"


def test_unknown_condition_and_bad_image_size_are_user_errors():
    with pytest.raises(UserError, match="model.condition='sideways'"):
        make("sideways")
    with pytest.raises(UserError, match="divisible"):
        make(size=20, depth=3)


def test_gaussian_kl_against_the_closed_form_written_out():
    torch.manual_seed(1)
    mu, logvar = torch.randn(3, 4), torch.randn(3, 4)
    got = gaussian_kl(mu, logvar)
    for row in range(3):
        expected = 0.0
        for m, lv in zip(mu[row].tolist(), logvar[row].tolist()):
            s1, s2 = math.exp(0.5 * lv), 1.0  # KL(N(m, s1^2) || N(0, s2^2)) per dimension
            expected += math.log(s2 / s1) + (s1**2 + (m - 0.0) ** 2) / (2 * s2**2) - 0.5
        assert got[row].item() == pytest.approx(expected, rel=1e-5)
    reference = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, (0.5 * logvar).exp()), torch.distributions.Normal(0.0, 1.0)
    ).sum(1)
    torch.testing.assert_close(got, reference)
    assert torch.allclose(gaussian_kl(torch.zeros(2, 5), torch.zeros(2, 5)), torch.zeros(2))


def test_bernoulli_term_is_the_bce_sum_per_image():
    torch.manual_seed(2)
    logits, x = torch.randn(2, 1, 3, 3) * 3, torch.rand(2, 1, 3, 3)
    got = BernoulliLikelihood()(logits, x)
    for n in range(2):
        expected = 0.0
        for l, t in zip(logits[n].flatten().tolist(), x[n].flatten().tolist()):
            p = 1 / (1 + math.exp(-l))
            expected -= t * math.log(p) + (1 - t) * math.log(1 - p)
        assert got[n].item() == pytest.approx(expected, rel=1e-5)
    # a confident, correct prediction of binary pixels costs almost nothing
    assert BernoulliLikelihood()(torch.tensor([[[[20.0, -20.0]]]]), torch.tensor([[[[1.0, 0.0]]]])).item() < 1e-6


def test_gaussian_term_is_the_negative_log_density_sum():
    torch.manual_seed(3)
    logits, x, sigma = torch.randn(2, 3, 2, 2), torch.rand(2, 3, 2, 2), 0.2
    got = GaussianLikelihood(sigma)(logits, x)
    for n in range(2):
        expected = 0.0
        for l, t in zip(logits[n].flatten().tolist(), x[n].flatten().tolist()):
            mean = 1 / (1 + math.exp(-l))
            expected += -math.log(math.exp(-((t - mean) ** 2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi)))
        assert got[n].item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(UserError, match="loss.sigma"):
        GaussianLikelihood(0.0)


def test_judge_logits_shape():
    judge = Judge(7, in_channels=3, width=4, depth=3).eval()
    assert judge(torch.rand(2, 3, 32, 32)).shape == (2, 7)


def test_judge_training_blurs_a_random_half_of_each_batch():
    from s18exp.judge_training import blur_half

    images = torch.rand(64, 3, 16, 16)
    out = blur_half(images, 2.0, torch.Generator().manual_seed(0))
    changed = (out - images).abs().amax(dim=(1, 2, 3)) > 1e-6
    assert 16 < int(changed.sum()) < 48  # about half
    assert out[changed].std() < images[changed].std()  # blurring smooths
    assert torch.equal(out[~changed], images[~changed])
    assert torch.equal(blur_half(images, 0.0, torch.Generator()), images)
    assert blur_half(torch.rand(2, 1, 4, 4), 2.0, torch.Generator()).shape == (2, 1, 4, 4)  # tiny images work


def make_guided(condition: str = "both", guide_width: int = 4, arches: tuple[str, ...] = ("judge",), augment: nn.Module | None = None,
                channels: int = 1) -> LabelVAE:
    torch.manual_seed(0)
    return LabelVAE(10, MaxPoolDownsample, TransposeUpsample, image_size=32, in_channels=channels, latent_dim=6,
                    condition=condition, width=4, depth=2, embed_dim=5, label_every_level=True, guide_width=guide_width, guide_arches=arches,
                    drawn_augment=augment)


def test_guides_exist_only_where_the_decoder_sees_the_label_and_a_width_is_given():
    assert isinstance(make_guided("both").guides["judge"], Judge)
    assert isinstance(make_guided("decoder").guides["judge"], Judge)
    assert list(make_guided("both", arches=("judge", "dilated")).guides) == ["judge", "dilated"]
    assert make_guided("encoder").guides is None
    assert make_guided("both", guide_width=0).guides is None
    with pytest.raises(UserError, match="model.guide_width=-1"):
        make_guided(guide_width=-1)
    for arches in ((), ("judge", "judge"), ("resnet",)):
        with pytest.raises(UserError, match="task.guides="):
            make_guided(arches=arches)


def test_a_checkpoint_of_one_guide_loads_as_the_judge_guide():
    model = make_guided("both")
    old = {(key.replace("guides.judge.", "guide.")): value for key, value in model.state_dict().items()}
    assert any(key.startswith("guide.") for key in old)
    fresh = make_guided("both")
    torch.nn.init.zeros_(fresh.guides["judge"].head.weight)
    fresh.load_state_dict(old)
    assert torch.equal(fresh.guides["judge"].head.weight, model.guides["judge"].head.weight)


class _Recorder(nn.Module):
    """A drawn-image augmentation that records what it was given and adds a constant, so its effect shows."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return x + 0.25


@pytest.mark.parametrize("arches", [("judge",), ("judge", "dilated")])
def test_guide_verdicts_on_augmented_drawn_images_teach_the_decoder_only(arches: tuple[str, ...]):
    recorder = _Recorder()
    model = make_guided("both", arches=arches, augment=recorder).eval()  # eval: no dropout, repeatable guide passes
    x, labels, given = torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 2, 3]), torch.tensor([5, 6, 7, 8])
    torch.manual_seed(1)
    logits, mu, logvar, on_real, on_drawn = model(x, labels, guide_inputs=x, guide_labels=given)
    assert on_real.shape == on_drawn.shape == (len(arches), 4, 10)
    # The augmentation saw the drawn mean images of the same z under the given labels, and nothing else: the
    # guides read the real images unchanged and the drawn images changed.
    torch.manual_seed(1)
    mu2, logvar2 = model.encode(x, labels)
    z = mu2 + torch.randn_like(mu2) * (0.5 * logvar2).exp()
    with torch.no_grad():
        drawn = torch.sigmoid(model.decode(z, given))
        (seen,) = recorder.seen
        assert torch.allclose(seen, drawn, atol=1e-6)
        for g, guide in enumerate(model.guides.values()):
            assert torch.allclose(on_real[g], guide(x), atol=1e-5)
            assert torch.allclose(on_drawn[g], guide(drawn + 0.25), atol=1e-5)

    model.zero_grad()
    torch.nn.functional.cross_entropy(on_drawn.flatten(0, 1), given.repeat(len(arches))).backward()
    decoder_grad = sum(p.grad.abs().sum() for p in model.decoder.parameters() if p.grad is not None)
    assert decoder_grad > 0
    assert all(p.grad is None or not p.grad.any() for p in model.guides.parameters())
    assert all(p.grad is None or not p.grad.any() for p in model.encoder.parameters())

    model.zero_grad()
    torch.manual_seed(1)
    _, _, _, on_real, _ = model(x, labels, guide_inputs=x, guide_labels=given)
    torch.nn.functional.cross_entropy(on_real.flatten(0, 1), labels.repeat(len(arches))).backward()
    for guide in model.guides.values():
        assert sum(p.grad.abs().sum() for p in guide.parameters()) > 0
    assert all(p.grad is None or not p.grad.any() for p in model.decoder.parameters())
    # without guide labels the model returns the plain triple, and draws nothing to augment
    assert len(model(x, labels)) == 3 and len(recorder.seen) == 2


def test_the_wrong_label_pass_leaves_the_decoders_running_statistics_alone():
    """In training, the decoder's BatchNorm running statistics after a guided step are those of the
    reconstruction pass alone (the same step without the guides, same seed), while the wrong-label pass still
    normalises by its own batch: its drawn images differ from what the running statistics would give."""
    guided, plain = make_guided("both").train(), make_guided("both").train()
    x, labels, given = torch.rand(6, 1, 32, 32), torch.tensor([0, 1, 2, 3, 4, 5]), torch.tensor([5, 6, 7, 8, 9, 0])
    before = {k: v.clone() for k, v in plain.decoder.state_dict().items() if "running" in k or "num_batches" in k}
    torch.manual_seed(3)
    guided(x, labels, guide_inputs=x, guide_labels=given)
    torch.manual_seed(3)
    plain(x, labels)
    after_guided, after_plain = guided.decoder.state_dict(), plain.decoder.state_dict()
    assert before and any(not torch.equal(before[k], after_plain[k]) for k in before)  # the reconstruction pass did update them
    for key in before:
        assert torch.equal(after_guided[key], after_plain[key]), key
    assert all(m.track_running_stats for m in guided.decoder.modules() if isinstance(m, nn.BatchNorm2d))
