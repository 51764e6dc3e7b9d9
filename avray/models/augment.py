"""Augmentation on the training device: batch-wise tensor ops with per-clip random parameters.

:class:`Augmenter` turns a batch (uint8 frames [B, T, H, W, 3], float waveforms [B, S]) into
independently augmented views of the same shapes and dtypes; :class:`SpecAugment` masks the
log-mel inside the model (:class:`avray.models.audio.LogMel` holds it). Both run only while
training: validation, evaluation and embedding see the clips as they are.

Every op draws its parameters per clip, for the whole batch at once, from a generator seeded
by ``(augment.seed, rank, step, view)``: a step's views are the same after a resume and on
any device. torchvision's v2 transforms draw one set of parameters per call, which for a
batch means one crop for every clip; so the crop is an affine resampling grid per clip
(``torch.nn.functional.affine_grid``/``grid_sample``: a random resized crop with flip), and
the colour ops follow the formulas of ``torchvision.transforms.v2.functional`` with a factor
per clip, composed into one affine colour map per clip (:func:`colour_maps`). The audio noise is
``torchaudio.functional.add_noise`` at a per-clip SNR; the masks are torchaudio's
``FrequencyMasking``/``TimeMasking`` with ``iid_masks`` (a mask per clip).

Ops (``augment.video``, ``augment.audio`` in the config):

- video: random resized crop (``crop_scale`` of the area, ``crop_ratio`` aspect), horizontal
  flip (``flip_p``), colour jitter (``jitter_p``: brightness, contrast, saturation, hue),
  random grayscale (``grayscale_p``), temporal jitter (``frame_offset`` frames,
  ``rate_jitter`` of the frame rate);
- audio: circular time shift (``time_shift_s``), gain (``gain_db``), white noise
  (``noise_p`` at ``snr_db``), mixing in another clip of the batch (``mix_p`` at up to
  ``mix_level`` of the clip's RMS), SpecAugment (``freq_masks`` x ``freq_mask_bins``,
  ``time_masks`` x ``time_mask_frames``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchaudio.functional import add_noise
from torchaudio.transforms import FrequencyMasking, TimeMasking

from avray.config import AudioAugmentConfig, AugmentConfig, DataConfig, VideoAugmentConfig

# torchvision's rgb_to_grayscale weights (ITU-R 601 luma).
_GRAY_WEIGHTS = torch.tensor([0.2989, 0.587, 0.114])
# YIQ: hue is the angle of the chroma plane (I, Q); rotating it shifts the hue, keeps luma.
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _uniform(shape: tuple[int, ...], low: float, high: float, gen: torch.Generator, device) -> Tensor:
    return low + (high - low) * torch.rand(shape, generator=gen, device=device)


def _chance(p: float, batch: int, gen: torch.Generator, device) -> Tensor:
    """A bool [B]: which clips an op with probability ``p`` applies to."""
    return torch.rand(batch, generator=gen, device=device) < p


def temporal_jitter(video: Tensor, cfg: VideoAugmentConfig, gen: torch.Generator) -> Tensor:
    """uint8 [B, T, H, W, 3] -> the same, frames re-read at ``offset + speed * t`` (edges repeat)."""
    b, t = video.shape[:2]
    if t < 2 or (cfg.frame_offset == 0 and cfg.rate_jitter == 0):
        return video
    offset = torch.randint(-cfg.frame_offset, cfg.frame_offset + 1, (b, 1), generator=gen, device=video.device)
    speed = _uniform((b, 1), 1 - cfg.rate_jitter, 1 + cfg.rate_jitter, gen, video.device)
    centre = (t - 1) / 2  # speed stretches about the clip's middle, so the offset alone moves it
    times = torch.arange(t, device=video.device).float()
    index = (centre + offset + speed * (times - centre)).round().long().clamp(0, t - 1)
    return video[torch.arange(b, device=video.device)[:, None], index]


def resized_crop_flip(frames: Tensor, cfg: VideoAugmentConfig, gen: torch.Generator) -> Tensor:
    """float [B, 3, T, H, W] -> the same: per clip, a crop of ``crop_scale`` of the area at
    an aspect in ``crop_ratio`` (log-uniform), anywhere in the frame, resized back to H x W
    (bilinear), mirrored with ``flip_p``; the same crop for every frame of the clip."""
    b, c, t, h, w = frames.shape
    device = frames.device
    area = _uniform((b,), *cfg.crop_scale, gen, device)
    log_ratio = _uniform((b,), math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]), gen, device)
    ratio = log_ratio.exp() * (h / w)  # in the frame's normalised coordinates
    width = (area * ratio).sqrt().clamp(max=1.0)
    height = (area / ratio).sqrt().clamp(max=1.0)
    cx = (1 - width) * _uniform((b,), -1.0, 1.0, gen, device)
    cy = (1 - height) * _uniform((b,), -1.0, 1.0, gen, device)
    flip = torch.where(_chance(cfg.flip_p, b, gen, device), -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 2] = width * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = height, cy
    grid = F.affine_grid(theta, (b, c * t, h, w), align_corners=False)
    out = F.grid_sample(
        frames.reshape(b, c * t, h, w), grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    return out.reshape(b, c, t, h, w)


def colour_maps(frames: Tensor, cfg: VideoAugmentConfig, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Per clip of float [B, 3, T, H, W], the affine colour map ``x -> M x + o`` (M [B, 3, 3],
    o [B, 3]) of its colour jitter and grayscale draws.

    Each op of ``torchvision.transforms.v2.functional`` used here is affine in RGB: brightness
    ``b x``; contrast ``m + c (x - m)`` (m: the clip's mean gray level); saturation
    ``g + s (x - g)`` (g = w.x, torchvision's grayscale weights w); hue a rotation of the YIQ
    chroma plane; grayscale ``g``. So the chain composes into one map per clip, applied in one
    batched matmul and clamped once (torchvision clamps after every op: the two differ only
    where an intermediate value leaves [0, 1]). Jitter applies to ``jitter_p`` of the clips,
    in this order, then grayscale to ``grayscale_p``.
    """
    b, device = frames.shape[0], frames.device
    eye = torch.eye(3, device=device).expand(b, 3, 3)
    gray_row = _GRAY_WEIGHTS.to(device).view(1, 1, 3)
    to_gray = gray_row.expand(b, 3, 3)  # every output channel = w.x

    def factor(amount: float) -> Tensor:
        return _uniform((b, 1, 1), 1 - amount, 1 + amount, gen, device)

    def then(step: Tensor, matrix: Tensor, offset: Tensor) -> tuple[Tensor, Tensor]:
        """The map ``x -> step (M x + o)``."""
        return step @ matrix, (step @ offset.unsqueeze(-1)).squeeze(-1)

    mean_gray = (gray_row.view(1, 3) @ frames.mean(dim=(2, 3, 4)).T).T  # [B, 1]
    brightness, contrast, saturation = factor(cfg.brightness), factor(cfg.contrast), factor(cfg.saturation)
    # Brightness then contrast: m + c (b x - m), m = the brightened clip's mean gray = b * mean_gray.
    matrix = contrast * brightness * eye
    offset = ((1 - contrast.view(b, 1)) * brightness.view(b, 1) * mean_gray).expand(b, 3)
    matrix, offset = then(saturation * eye + (1 - saturation) * to_gray, matrix, offset)
    angle = _uniform((b,), -cfg.hue, cfg.hue, gen, device) * 2 * math.pi
    rotation = torch.zeros(b, 3, 3, device=device)
    rotation[:, 0, 0] = 1
    rotation[:, 1, 1], rotation[:, 1, 2] = angle.cos(), -angle.sin()
    rotation[:, 2, 1], rotation[:, 2, 2] = angle.sin(), angle.cos()
    to_yiq = _RGB_TO_YIQ.to(device)
    matrix, offset = then(torch.linalg.inv(to_yiq) @ rotation @ to_yiq, matrix, offset)
    jitter = _chance(cfg.jitter_p, b, gen, device)
    matrix = torch.where(jitter.view(b, 1, 1), matrix, eye)
    offset = torch.where(jitter.view(b, 1), offset, torch.zeros_like(offset))
    gray = _chance(cfg.grayscale_p, b, gen, device)
    grayed = then(to_gray, matrix, offset)
    matrix = torch.where(gray.view(b, 1, 1), grayed[0], matrix)
    offset = torch.where(gray.view(b, 1), grayed[1], offset)
    return matrix, offset


def colour_jitter(frames: Tensor, cfg: VideoAugmentConfig, gen: torch.Generator) -> Tensor:
    """float [B, 3, T, H, W] in [0, 1] -> the same, through :func:`colour_maps`."""
    b = frames.shape[0]
    matrix, offset = colour_maps(frames, cfg, gen)
    out = torch.baddbmm(offset.unsqueeze(-1), matrix, frames.reshape(b, 3, -1))
    return out.clamp_(0, 1).view_as(frames)


def augment_video(video: Tensor, cfg: VideoAugmentConfig, gen: torch.Generator) -> Tensor:
    """uint8 [B, T, H, W, 3] -> augmented uint8 [B, T, H, W, 3]."""
    video = temporal_jitter(video, cfg, gen)
    frames = video.permute(0, 4, 1, 2, 3).float().div_(255.0)  # [B, 3, T, H, W]
    frames = colour_jitter(resized_crop_flip(frames, cfg, gen), cfg, gen)
    return frames.mul_(255.0).round_().to(torch.uint8).permute(0, 2, 3, 4, 1).contiguous()


def augment_audio(audio: Tensor, cfg: AudioAugmentConfig, sample_rate: int, gen: torch.Generator) -> Tensor:
    """float [B, S] -> augmented float [B, S] (the waveform ops; SpecAugment is in the model)."""
    b, s = audio.shape
    device = audio.device
    audio = audio.float()
    max_shift = min(s - 1, round(cfg.time_shift_s * sample_rate))
    if max_shift > 0:
        shift = torch.randint(-max_shift, max_shift + 1, (b, 1), generator=gen, device=device)
        audio = audio.gather(1, (torch.arange(s, device=device) - shift) % s)
    rms = audio.pow(2).mean(1, keepdim=True).sqrt()
    if cfg.mix_p > 0 and b > 1:
        other = audio.roll(1, dims=0)
        other_rms = other.pow(2).mean(1, keepdim=True).sqrt().clamp(min=1e-8)
        level = _uniform((b, 1), 0.0, cfg.mix_level, gen, device) * _chance(cfg.mix_p, b, gen, device)[:, None]
        audio = audio + other * (level * rms / other_rms)
    audio = audio * 10 ** (_uniform((b, 1), -cfg.gain_db, cfg.gain_db, gen, device) / 20)
    if cfg.noise_p > 0:
        noise = torch.randn(b, s, generator=gen, device=device)
        snr = _uniform((b,), *cfg.snr_db, gen, device)
        noisy = add_noise(audio, noise, snr)
        # A silent clip has no SNR to keep: it stays silent rather than turning to NaN.
        silent = audio.pow(2).sum(1, keepdim=True) == 0
        audio = torch.where(_chance(cfg.noise_p, b, gen, device)[:, None] & ~silent, noisy, audio)
    return audio


class Augmenter:
    """``views(video, audio, count, step, rank)`` -> ``count`` independently augmented
    (video, audio) pairs of the batch (the clips as they are when augmentation is off)."""

    def __init__(self, cfg: AugmentConfig, data: DataConfig) -> None:
        self.cfg = cfg
        self.sample_rate = data.sample_rate

    def views(self, video: Tensor, audio: Tensor, count: int, step: int, rank: int = 0) -> list[tuple[Tensor, Tensor]]:
        if not self.cfg.enabled:
            return [(video, audio)] * count
        out = []
        for view in range(count):
            gen = torch.Generator(device=video.device)
            gen.manual_seed(int(np.random.SeedSequence([self.cfg.seed, rank, step, view]).generate_state(1)[0]))
            out.append(
                (augment_video(video, self.cfg.video, gen), augment_audio(audio, self.cfg.audio, self.sample_rate, gen))
            )
        return out


class SpecAugment(nn.Module):
    """Log-mel [B, 1, n_mels, frames] -> the same with random frequency and time masks per clip
    while training (torchaudio's masking with ``iid_masks``; masked bins read 0, the
    standardised log-mel's mean); identity in eval mode. Draws from torch's global generator,
    which the training loop seeds and checkpoints."""

    def __init__(self, cfg: AudioAugmentConfig) -> None:
        super().__init__()
        masks = [FrequencyMasking(cfg.freq_mask_bins, iid_masks=True)] * (cfg.freq_masks if cfg.freq_mask_bins else 0)
        masks += [TimeMasking(cfg.time_mask_frames, iid_masks=True)] * (cfg.time_masks if cfg.time_mask_frames else 0)
        self.masks = nn.ModuleList(masks)

    def forward(self, log_mel: Tensor) -> Tensor:
        if self.training:
            for mask in self.masks:
                log_mel = mask(log_mel)
        return log_mel
