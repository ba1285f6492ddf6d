"""Random augmentation of a training batch: images and their segmentation masks transformed together.

One 2x3 affine matrix per sample (zoom, aspect, rotation, shift, mirror) resamples images bilinearly and masks
with `nearest`, both from the same grid with reflection padding, so a mask keeps only class values that were in
it and stays aligned with its image everywhere, borders included. Colour jitter (brightness, contrast, saturation,
hue), one 3x3 matrix and one offset per image, then changes the images only. The pixel work runs batched on the
batch's device, in fp32.

Views smaller than the images (a `trainer.size_schedule`'s early epochs) come from the batch resized first, images
bilinear with antialiasing and masks nearest, then augmented at the smaller side: the affine grid and the window
are drawn at the output size, and no view aliases the finer detail of the full-size images.

Every random number is drawn on the CPU from torch's global generator; the per-sample matrices are computed from
them there and copied to the device once per batch. run.py seeds that generator and checkpoints save its state,
so a resumed run draws the same augmentations as an uninterrupted one, on any device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from s18exp.errors import UserError

# ITU-R 601 luma, the grey of an RGB colour (torchvision's grayscale has 0.2989 for red; these sum to 1, so grey
# (1, 1, 1) stays grey under the saturation blend).
GREY = (0.299, 0.587, 0.114)
# RGB -> YIQ; its first row is GREY, so a hue rotation about the Y axis keeps each pixel's brightness.
RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))
# Columns of the uniform draws: crop area, log aspect, angle, centre x, centre y, then the colour factors.
DRAWS = 9


class PairAugment:
    """Joint augmentation of uint8 or float images (N, 3, H, W), values 0-255, and uint8 masks (N, H, W).

    - `flip_prob`: chance of a horizontal mirror per sample (0.5 for both `augment=flip` and `strong`);
    - `scale_min`: the crop's area, as a fraction of the image, is uniform in [scale_min, 1], then zoomed to the
      full size (1 = no zoom); a side that would exceed the image is cut to it, shrinking the area a little;
    - `aspect_max`: the crop's width/height is log-uniform in [1/aspect_max, aspect_max] (1 = square crops);
    - `rotate_degrees`: rotation uniform in [-rotate_degrees, +rotate_degrees] about the crop's centre;
    - `crop_size`: the side, in pixels, of a random square window of the zoomed, rotated view that is returned
      in its place (None = the whole view). Training on windows costs what training at that size costs, while
      the model sees the full image's scale; validation and test run on whole images, which a fully
      convolutional model takes at any size. The window's position comes from the same draws as the centre;
    - `brightness`, `contrast`, `saturation`: factors uniform in [1 - x, 1 + x] (contrast blends with each image's
      mean grey, saturation with each pixel's grey), applied in this order; `hue`: a rotation of the chroma plane
      of YIQ by up to +-hue of a full turn. Images are clamped to 0-255 once, after all four.

    The crop's centre is drawn so that the unrotated crop lies inside the image. With no zoom, aspect or rotation
    the mirror is a plain `flip` of the tensors: exact, and one draw per sample (sample k is mirrored when the
    k-th of `torch.rand(N)` is below flip_prob). Images come back in their own dtype (uint8 rounded), masks as
    uint8. `name` is the config option's name (none | flip | strong), which the report's settings line shows.

    Called with a `size`, the views are `size` x `size`: the batch is resized to that side first (`_resized`), then
    augmented as above at that side; the draws are the same as without it.
    """

    def __init__(
        self,
        flip_prob: float = 0.0,
        scale_min: float = 1.0,
        aspect_max: float = 1.0,
        rotate_degrees: float = 0.0,
        brightness: float = 0.0,
        contrast: float = 0.0,
        saturation: float = 0.0,
        hue: float = 0.0,
        crop_size: int | None = None,
        name: str = "custom",
    ) -> None:
        _check("flip_prob", flip_prob, 0.0, 1.0, "the chance of a mirror per sample, e.g. augment.flip_prob=0.5")
        if not 0.0 < scale_min <= 1.0:
            raise UserError(f"augment.scale_min={scale_min} is outside (0, 1]; give the smallest crop area as a fraction of the image, e.g. augment.scale_min=0.6")
        if aspect_max < 1.0:
            raise UserError(f"augment.aspect_max={aspect_max} is below 1; give the widest crop width/height, e.g. augment.aspect_max=1.333 (1 = square crops)")
        _check("rotate_degrees", rotate_degrees, 0.0, 180.0, "e.g. augment.rotate_degrees=10")
        for key, value in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            _check(key, value, 0.0, 1.0, f"factors are drawn in [1 - x, 1 + x], e.g. augment.{key}=0.2")
        _check("hue", hue, 0.0, 0.5, "a fraction of a full turn of hue, e.g. augment.hue=0.03")
        check_crop_size(crop_size)
        self.crop_size = crop_size
        self.name = name
        self.flip_prob = float(flip_prob)
        self.scale_min, self.aspect_max, self.rotate_degrees = float(scale_min), float(aspect_max), float(rotate_degrees)
        self.brightness, self.contrast, self.saturation, self.hue = float(brightness), float(contrast), float(saturation), float(hue)

    @property
    def geometric(self) -> bool:
        return self.scale_min < 1.0 or self.aspect_max > 1.0 or self.rotate_degrees > 0.0 or self.crop_size is not None

    @property
    def colour(self) -> bool:
        return self.brightness > 0.0 or self.contrast > 0.0 or self.saturation > 0.0 or self.hue > 0.0

    def __call__(self, images: torch.Tensor, masks: torch.Tensor, size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        n, device = len(images), images.device
        height, width = images.shape[-2:] if size is None else (size, size)
        resize = (height, width) != tuple(images.shape[-2:])
        if self.crop_size is not None and self.crop_size > min(height, width):
            raise UserError(f"augment.crop_size={self.crop_size} is larger than the {height}x{width} training images; give at most {min(height, width)}, or null for whole images")
        flip = torch.rand(n) < self.flip_prob if self.flip_prob > 0 else None
        if not (self.geometric or self.colour or resize):
            return (images, masks) if flip is None else _mirror(images, masks, _to_device(flip, device))
        uniform = torch.rand(n, DRAWS) if self.geometric or self.colour else None
        # Coordinates, colour matrices and masks in bf16 would misplace and blend pixels: all of it runs in fp32,
        # whatever autocast the training step runs under (the per-sample matrices are computed on the CPU).
        with torch.autocast(device.type, enabled=False), torch.autocast("cpu", enabled=False):
            pixels = images.float()
            if resize:
                pixels, masks = _resized(pixels, masks, (height, width))
            if self.geometric:
                out_height, out_width = (height, width) if self.crop_size is None else (self.crop_size, self.crop_size)
                theta = _to_device(self._affine(uniform[:, :5], flip, height, width, out_height, out_width), device)
                grid = F.affine_grid(theta, [n, pixels.shape[1], out_height, out_width], align_corners=False)
                pixels = F.grid_sample(pixels, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
                sampled = F.grid_sample(masks[:, None].float(), grid, mode="nearest", padding_mode="reflection", align_corners=False)
                masks = sampled[:, 0].to(masks.dtype)
            elif flip is not None:
                pixels, masks = _mirror(pixels, masks, _to_device(flip, device))
            if self.colour:
                matrix, mean_weights = (_to_device(t, device) for t in self._colour(uniform[:, 5:]))
                offset = (pixels.mean(dim=(2, 3)) * mean_weights).sum(1)
                pixels = torch.einsum("nij,njhw->nihw", matrix, pixels) + offset.view(-1, 1, 1, 1)
                pixels = pixels.clamp_(0, 255)
        if images.dtype == torch.uint8:
            return pixels.round_().clamp_(0, 255).to(torch.uint8), masks
        return pixels.to(images.dtype), masks

    def _affine(
        self, uniform: torch.Tensor, flip: torch.Tensor | None, height: int, width: int, out_height: int, out_width: int
    ) -> torch.Tensor:
        """(N, 2, 3) matrices from output to input coordinates in affine_grid's [-1, 1] units.

        crop_w and crop_h are the fractions of the input's width and height that the output spans: the zoomed view's
        side, times the output's share of that view (1 without crop_size). The rotation is done in pixel units
        (x scaled by W/2, y by H/2), so that it stays a rotation on non-square images."""
        area = self.scale_min + (1.0 - self.scale_min) * uniform[:, 0]
        aspect = torch.exp(math.log(self.aspect_max) * (2 * uniform[:, 1] - 1))
        crop_w = torch.sqrt(area * aspect).clamp(max=1.0) * (out_width / width)
        crop_h = torch.sqrt(area / aspect).clamp(max=1.0) * (out_height / height)
        angle = math.radians(self.rotate_degrees) * (2 * uniform[:, 2] - 1)
        centre_x = (1 - crop_w) * (2 * uniform[:, 3] - 1)
        centre_y = (1 - crop_h) * (2 * uniform[:, 4] - 1)
        mirror = torch.ones_like(area) if flip is None else 1 - 2 * flip.float()
        cos, sin = torch.cos(angle), torch.sin(angle)
        row_x = torch.stack([cos * crop_w * mirror, -sin * crop_h * (height / width), centre_x], dim=-1)
        row_y = torch.stack([sin * crop_w * mirror * (width / height), cos * crop_h, centre_y], dim=-1)
        return torch.stack([row_x, row_y], dim=1)

    def _colour(self, uniform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Brightness, contrast, saturation and hue as one (3, 3) colour matrix M per image and weights w (3,) of
        its mean colour: out = M x + (w . mean x) on every channel.

        Unclamped, each step is linear in the colours, and grey (1, 1, 1) is a fixed point of the saturation and
        hue matrices, so contrast's blend towards the mean grey m commutes into that single offset:
        out = c b H S x + (1 - c) b m (1, 1, 1), with b, c the brightness and contrast factors."""
        brightness = 1 + self.brightness * (2 * uniform[:, 0] - 1)
        contrast = 1 + self.contrast * (2 * uniform[:, 1] - 1)
        saturation = 1 + self.saturation * (2 * uniform[:, 2] - 1)
        turn = 2 * math.pi * self.hue * (2 * uniform[:, 3] - 1)
        grey = torch.tensor(GREY)
        saturate = saturation.view(-1, 1, 1) * torch.eye(3) + (1 - saturation).view(-1, 1, 1) * grey.expand(3, 3)
        rotate = torch.eye(3).repeat(len(uniform), 1, 1)
        rotate[:, 1, 1], rotate[:, 1, 2] = torch.cos(turn), -torch.sin(turn)
        rotate[:, 2, 1], rotate[:, 2, 2] = torch.sin(turn), torch.cos(turn)
        to_yiq = torch.tensor(RGB_TO_YIQ)
        hue = torch.linalg.inv(to_yiq) @ rotate @ to_yiq
        matrix = (contrast * brightness).view(-1, 1, 1) * (hue @ saturate)
        mean_weights = ((1 - contrast) * brightness).view(-1, 1) * grey
        return matrix, mean_weights


def check_crop_size(value: object) -> None:
    """A UserError unless `value` (augment.crop_size) is None or a positive whole number of pixels."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise UserError(f"augment.crop_size={value!r} is not a positive whole number of pixels; e.g. augment.crop_size=128, or null for whole images")


def _resized(images: torch.Tensor, masks: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """float images (N, C, H, W) and masks (N, H, W) at `size`: images bilinear, antialiased (on a smaller side each
    output pixel is a weighted mean of all the input pixels under its footprint, as PIL's resize), masks nearest-exact, which takes the input pixel under each
    output pixel's centre, as PIL's NEAREST that made the cached masks and grid_sample's nearest do; so a mask keeps
    only class values it had."""
    images = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
    masks = F.interpolate(masks[:, None].float(), size=size, mode="nearest-exact")[:, 0].to(masks.dtype)
    return images, masks


def _mirror(images: torch.Tensor, masks: torch.Tensor, flip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The samples where `flip` holds mirrored left to right, images (N, C, H, W) and masks (N, H, W) alike."""
    return (
        torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images),
        torch.where(flip.view(-1, 1, 1), masks.flip(-1), masks),
    )


def _to_device(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """CPU values on `device`. To a GPU through pinned memory: a copy from pageable memory would wait for the
    GPU to finish its queue (the previous step), one host-device synchronisation per step."""
    if device.type != "cuda":
        return values
    return values.pin_memory().to(device, non_blocking=True)


def _check(key: str, value: float, low: float, high: float, hint: str) -> None:
    if not low <= value <= high:
        raise UserError(f"augment.{key}={value} is outside [{low:g}, {high:g}]; {hint}")
