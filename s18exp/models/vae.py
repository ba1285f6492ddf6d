"""A label-conditioned VAE assembled from the same down/up blocks as the UNet, and its ELBO terms.

The label goes through `nn.Embedding`; `condition` says where it enters:

- `encoder`: the ERA V1 Session 18 assignment's design. The embedding (one value per flattened encoder feature) is
  multiplied into the encoder's output before the heads of mu and log-variance; the decoder never sees the
  label, so at generation time a label can only act through z.
- `decoder`: the embedding is concatenated to z at the decoder's input; the encoder sees the image only.
- `both` (default): both of the above. The decoder gets the class for free, so the KL term pushes z to
  keep only what the label does not say (stroke, colour, pose).

The decoder outputs per-pixel logits; its mean image is `sigmoid(logits)` for both likelihoods below.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from s18exp.blocks import DoubleConv, Down, Downsample, Upsample
from s18exp.errors import UserError
from s18exp.models.guides import build_guides

CONDITIONS = ("encoder", "decoder", "both")
LOGVAR_RANGE = (-30.0, 20.0)  # clamped for numerical safety: exp() of these stays finite in bf16 and fp32


def check_condition(condition: str) -> None:
    if condition not in CONDITIONS:
        raise UserError(
            f"model.condition={condition!r} is not one of {'|'.join(CONDITIONS)}; "
            f"e.g. model.condition=both (label into encoder and decoder)"
        )


class Encoder(nn.Module):
    """Image (N, C, H, W) [and label] -> mu, log-variance (N, latent_dim)."""

    def __init__(
        self, in_channels: int, channels: list[int], feature_size: int, latent_dim: int,
        downsample: Downsample, num_classes: int | None,
    ) -> None:
        super().__init__()
        self.stem = DoubleConv(in_channels, channels[0])
        self.downs = nn.Sequential(*(Down(c_in, c_out, downsample) for c_in, c_out in zip(channels, channels[1:])))
        features = channels[-1] * feature_size * feature_size
        # One multiplier per flattened feature and class; starts near 1, so training begins unconditioned.
        self.embedding = nn.Embedding(num_classes, features) if num_classes else None
        if self.embedding is not None:
            nn.init.normal_(self.embedding.weight, mean=1.0, std=0.1)
        self.heads = nn.Linear(features, 2 * latent_dim)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.downs(self.stem(x)).flatten(1)
        if self.embedding is not None:
            h = h * self.embedding(labels)
        mu, logvar = self.heads(h).chunk(2, dim=1)
        return mu, logvar.clamp(*LOGVAR_RANGE)


class UpStep(nn.Sequential):
    """One decoder step without skips: the configured upsample block, then a DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int, upsample: Upsample) -> None:
        super().__init__(upsample(in_channels, out_channels), DoubleConv(out_channels, out_channels))


class _DecoderBody(nn.Module):
    def __init__(self, in_features: int, channels: list[int], feature_size: int, out_channels: int, upsample: Upsample) -> None:
        super().__init__()
        self.shape = (channels[-1], feature_size, feature_size)
        self.project = nn.Sequential(nn.Linear(in_features, math.prod(self.shape)), nn.ReLU(inplace=True))
        self.ups = nn.Sequential(*(UpStep(c_in, c_out, upsample) for c_in, c_out in zip(channels[:0:-1], channels[-2::-1])))
        self.head = nn.Conv2d(channels[0], out_channels, kernel_size=1)

    def body(self, h: torch.Tensor) -> torch.Tensor:
        h = self.project(h).view(-1, *self.shape).contiguous(memory_format=torch.channels_last)
        return self.head(self.ups(h))


class Decoder(_DecoderBody):
    """z -> logits (N, C, H, W). Has no label input at all: the decoder of `condition=encoder`."""

    def __init__(self, latent_dim: int, channels: list[int], feature_size: int, out_channels: int, upsample: Upsample) -> None:
        super().__init__(latent_dim, channels, feature_size, out_channels, upsample)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z)


class LabelDecoder(_DecoderBody):
    """(z, label) -> logits (N, C, H, W). The label's embedding is concatenated to z and, when
    `every_level`, also added as a per-channel bias after each up-sampling block, so that every level
    of the decoder is told the class, not only its input."""

    def __init__(
        self, latent_dim: int, num_classes: int, embed_dim: int, channels: list[int], feature_size: int,
        out_channels: int, upsample: Upsample, every_level: bool = False,
    ) -> None:
        super().__init__(latent_dim + embed_dim, channels, feature_size, out_channels, upsample)
        self.embedding = nn.Embedding(num_classes, embed_dim)
        self.level_bias = (
            nn.ModuleList(nn.Linear(embed_dim, c) for c in channels[-2::-1]) if every_level else None
        )

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        e = self.embedding(labels).to(z.dtype)
        if self.level_bias is None:
            return self.body(torch.cat([z, e], dim=1))
        h = self.project(torch.cat([z, e], dim=1)).view(-1, *self.shape).contiguous(memory_format=torch.channels_last)
        for step, bias in zip(self.ups, self.level_bias):
            upsample, conv = step
            h = conv(upsample(h) + bias(e)[:, :, None, None])
        return self.head(h)


class LabelVAE(nn.Module):
    """Conv VAE taking an image and its label; `forward` returns (logits, mu, logvar), and in training with
    the guides their verdicts too.

    Level i of the encoder has `width * 2**i` channels; `depth` down steps bring `image_size` to
    `image_size / 2**depth`, flattened into the heads of mu and log-variance. The decoder mirrors it.
    With `guide_width` > 0 and a decoder that takes the label, it also holds `guides`, one classifier per
    architecture that `guide_arches` names (s18exp/models/guides.py), which only training uses (see
    `forward`), and `drawn_augment`, the random changes made to drawn images before the guides read them.
    """

    def __init__(
        self,
        num_classes: int,
        downsample: Downsample,
        upsample: Upsample,
        image_size: int,
        in_channels: int,
        latent_dim: int,
        condition: str,
        width: int,
        depth: int,
        embed_dim: int,
        label_every_level: bool,
        guide_width: int,
        guide_arches: tuple[str, ...],
        drawn_augment: nn.Module | None,
    ) -> None:
        super().__init__()
        check_condition(condition)
        if isinstance(guide_width, bool) or not isinstance(guide_width, int) or guide_width < 0:
            raise UserError(f"model.guide_width={guide_width!r} must be an integer >= 0 (0: no guide classifier); e.g. model.guide_width=16")
        if image_size % 2**depth:
            raise UserError(f"data.image_size={image_size} is not divisible by 2**model.depth={2**depth}")
        self.condition = condition
        self.num_classes = num_classes
        self.latent_dim = latent_dim
        channels = [width * 2**level for level in range(depth + 1)]
        size = image_size // 2**depth
        self.encoder = Encoder(
            in_channels, channels, size, latent_dim, downsample, num_classes if condition in ("encoder", "both") else None
        )
        if condition in ("decoder", "both"):
            self.decoder: nn.Module = LabelDecoder(
                latent_dim, num_classes, embed_dim, channels, size, in_channels, upsample, label_every_level
            )
        else:
            self.decoder = Decoder(latent_dim, channels, size, in_channels, upsample)
        # Classifiers trained beside the VAE on real images, whose verdicts on decoded images teach the decoder
        # to draw the given label's class legibly (VAETask's guide term). Only a decoder that sees the label can
        # follow them, so `encoder` has none.
        self.guides = (
            build_guides(list(guide_arches), num_classes, in_channels, image_size, guide_width)
            if guide_width and self.decoder_sees_label else None
        )
        self.drawn_augment = drawn_augment if drawn_augment is not None else nn.Identity()
        self.register_load_state_dict_pre_hook(_one_guide_is_the_judge_guide)

    @property
    def decoder_sees_label(self) -> bool:
        return self.condition in ("decoder", "both")

    def encode(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x, labels)

    def decode(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Logits for latent codes z; `labels` is ignored when the decoder does not take one."""
        return self.decoder(z, labels) if self.decoder_sees_label else self.decoder(z)

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor, encoder_labels: torch.Tensor | None = None,
        from_prior: torch.Tensor | None = None, guide_inputs: torch.Tensor | None = None,
        guide_labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """(logits, mu, logvar) of the image `x`; the decoder gets `labels`, the encoder `encoder_labels`
        where given, else `labels` too. Rows where the boolean `from_prior` holds decode a z drawn from the
        prior N(0, I) instead of q(z|x, y) (both are training devices of VAETask).

        With `guide_labels` (and guides), two more, each stacked over the guides (G, N, num_classes): the
        guides' logits for `guide_inputs` (the real images they learn from) and their logits for the decoder's
        mean images of the same z decoded with `guide_labels`, changed by `drawn_augment` first. That second
        pass sends gradients to the decoder only: z is detached and the guides are applied with detached
        weights, so they never learn to read what the decoder draws. That pass normalises by its own batch's
        statistics but leaves the decoder's BatchNorm running statistics alone: evaluation, the pictures and
        `generate` then normalise with statistics of the images the ELBO trained on, whatever the guide does."""
        mu, logvar = self.encode(x, labels if encoder_labels is None else encoder_labels)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        if from_prior is not None:
            z = torch.where(from_prior[:, None], torch.randn_like(z), z)
        logits = self.decode(z, labels)
        if guide_labels is None or self.guides is None:
            return logits, mu, logvar
        with running_statistics_kept(self.decoder):
            drawn = self.drawn_augment(torch.sigmoid(self.decode(z.detach(), guide_labels)))
        on_real, on_drawn = [], []
        for guide in self.guides.values():
            frozen = {name: p.detach() for name, p in guide.named_parameters()}
            on_drawn.append(torch.func.functional_call(guide, frozen, (drawn,)))
            on_real.append(guide(guide_inputs))
        return logits, mu, logvar, torch.stack(on_real), torch.stack(on_drawn)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The decoder's mean image in [0, 1] for z = mu (no sampling): what the pictures and generate show."""
        mu, _ = self.encode(x, labels)
        return torch.sigmoid(self.decode(mu, labels).float())


@contextmanager
def running_statistics_kept(module: nn.Module) -> Iterator[None]:
    """Within it, `module`'s BatchNorm layers in training mode normalise by the batch's statistics without
    updating their running ones (nor their count of batches)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for norm in norms:
        norm.track_running_stats = False
    try:
        yield
    finally:
        for norm in norms:
            norm.track_running_stats = True


def _one_guide_is_the_judge_guide(module: nn.Module, state_dict: dict, prefix: str, *_: object) -> None:
    """Checkpoints written before guides came in several architectures hold their one guide, of the judge's
    architecture, under `guide.`: it loads as `guides.judge.`."""
    old = prefix + "guide."
    for key in [key for key in state_dict if key.startswith(old)]:
        state_dict[prefix + "guides.judge." + key[len(old):]] = state_dict.pop(key)


# ---- the ELBO: per-image terms in nats, summed over pixels and latent dimensions -----------------------


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) per row, in nats: (N, D) -> (N,)."""
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(dim=1)


class BernoulliLikelihood(nn.Module):
    """-log p(x | z) of independent Bernoulli pixels, x in [0, 1] (the BCE sum); `loss=bce`."""

    name = "bce"

    def forward(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        nll = F.binary_cross_entropy_with_logits(logits.float(), x.float(), reduction="none")
        return nll.flatten(1).sum(dim=1)


class GaussianLikelihood(nn.Module):
    """-log N(x; sigmoid(logits), sigma^2) per pixel, summed, x in [0, 1]; `loss=mse`.

    A fixed `sigma` weighs the squared error against the KL term: smaller sigma, sharper reconstructions
    and a latent code that carries more of the image.
    """

    name = "mse"

    def __init__(self, sigma: float = 0.1) -> None:
        super().__init__()
        if not sigma > 0:
            raise UserError(f"loss.sigma={sigma} must be positive; e.g. loss.sigma=0.1")
        self.sigma = float(sigma)

    def forward(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        mean = torch.sigmoid(logits.float())
        per_pixel = 0.5 * ((x.float() - mean) / self.sigma).square() + math.log(self.sigma) + 0.5 * math.log(2 * math.pi)
        return per_pixel.flatten(1).sum(dim=1)


def vae_only_loss(*_: object, **__: object) -> None:
    """The `criterion` of loss configs that only the VAE understands: building it for the UNet is an error."""
    raise UserError("loss=mse is the VAE's Gaussian likelihood (task=vae); task=unet takes loss=bce|dice")
