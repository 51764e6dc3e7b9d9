"""Augmentation: shapes and dtypes kept, reproducible for a seed, identity when off and at
evaluation, and each op changes its input within its declared range."""

import math

import pytest
import torch

from avray.config import AudioAugmentConfig, AugmentConfig, DataConfig, ModelConfig, VideoAugmentConfig
from avray.models import build_model
from avray.models.augment import (
    Augmenter,
    SpecAugment,
    augment_audio,
    augment_video,
    colour_jitter,
    resized_crop_flip,
    temporal_jitter,
)

B, T, H, W, S, RATE = 6, 8, 32, 32, 8000, 4000
DATA = DataConfig(clip_seconds=2.0, fps=4, frame_size=H, sample_rate=RATE)
# Every op off: each test turns on the one it checks.
NO_VIDEO = VideoAugmentConfig(
    crop_scale=(1.0, 1.0),
    crop_ratio=(1.0, 1.0),
    flip_p=0.0,
    jitter_p=0.0,
    grayscale_p=0.0,
    frame_offset=0,
    rate_jitter=0.0,
)
NO_AUDIO = AudioAugmentConfig(gain_db=0.0, noise_p=0.0, time_shift_s=0.0, freq_masks=0, time_masks=0, mix_p=0.0)


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def clips():
    g = generator(1)
    video = torch.randint(0, 256, (B, T, H, W, 3), generator=g, dtype=torch.uint8)
    audio = torch.randn(B, S, generator=g) * 0.1
    return video, audio


def frames_of(video):
    return video.permute(0, 4, 1, 2, 3).float() / 255.0  # [B, 3, T, H, W]


def test_shapes_dtypes_and_reproducibility(clips):
    video, audio = clips
    augmenter = Augmenter(AugmentConfig(), DATA)
    first = augmenter.views(video, audio, 2, step=7, rank=0)
    again = augmenter.views(video, audio, 2, step=7, rank=0)
    other_step = augmenter.views(video, audio, 1, step=8, rank=0)
    other_rank = augmenter.views(video, audio, 1, step=7, rank=1)
    for v, a in first:
        assert v.shape == video.shape and v.dtype == torch.uint8
        assert a.shape == audio.shape and a.dtype == torch.float32 and torch.isfinite(a).all()
    for (v1, a1), (v2, a2) in zip(first, again):
        assert torch.equal(v1, v2) and torch.equal(a1, a2)
    assert not torch.equal(first[0][0], first[1][0])  # views are independent
    assert not torch.equal(first[0][0], other_step[0][0]) and not torch.equal(first[0][0], other_rank[0][0])


def test_off_is_identity(clips):
    video, audio = clips
    views = Augmenter(AugmentConfig(enabled=False), DATA).views(video, audio, 2, step=0)
    assert all(v is video and a is audio for v, a in views)
    assert torch.equal(augment_video(video, NO_VIDEO, generator()), video)
    assert torch.allclose(augment_audio(audio, NO_AUDIO, RATE, generator()), audio)


def test_model_masks_log_mel_only_while_training(clips):
    video, audio = clips
    model_cfg = ModelConfig(
        video_width=4,
        audio_width=4,
        video_depth=1,
        audio_depth=1,
        n_fft=256,
        hop_length=64,
        n_mels=16,
        embed_dim=8,
        fused_dim=8,
    )
    plain = build_model(model_cfg, DATA)
    masked = build_model(model_cfg, DATA, AugmentConfig(audio=AudioAugmentConfig(freq_masks=2, freq_mask_bins=8)))
    assert plain.state_dict().keys() == masked.state_dict().keys()  # checkpoints stay interchangeable
    masked.load_state_dict(plain.state_dict())
    plain.eval(), masked.eval()
    with torch.no_grad():
        assert torch.equal(plain(video, audio)["fused"], masked(video, audio)["fused"])
    log_mel = masked.audio_encoder.log_mel
    log_mel.train()
    torch.manual_seed(0)
    spectrogram = log_mel(audio)
    assert (spectrogram == 0).all(dim=3).any(dim=2).all()  # every clip has masked mel bands


def test_spec_augment_masks_at_most_the_declared_extent():
    cfg = AudioAugmentConfig(freq_masks=2, freq_mask_bins=5, time_masks=3, time_mask_frames=7)
    spectrogram = torch.randn(B, 1, 40, 100) + 10  # no bin is 0 before masking
    masks = SpecAugment(cfg)
    torch.manual_seed(0)
    out = masks(spectrogram)
    masked_bands = (out == 0).all(dim=3).sum(dim=2)
    masked_frames = (out == 0).all(dim=2).sum(dim=2)
    assert (masked_bands <= 2 * 5).all() and (masked_frames <= 3 * 7).all() and masked_frames.sum() > 0
    masks.eval()
    assert torch.equal(masks(spectrogram), spectrogram)


def test_full_crop_with_flip_mirrors_exactly(clips):
    frames = frames_of(clips[0])
    out = resized_crop_flip(frames, NO_VIDEO.__class__(**{**NO_VIDEO.__dict__, "flip_p": 1.0}), generator())
    assert torch.allclose(out, frames.flip(-1), atol=1e-5)


def test_crop_covers_the_declared_area():
    ramp = torch.linspace(0, 1, W).expand(B, 3, T, H, W).contiguous()  # value = horizontal position
    cfg = VideoAugmentConfig(crop_scale=(0.25, 0.25), crop_ratio=(1.0, 1.0), flip_p=0.0)
    out = resized_crop_flip(ramp, cfg, generator())
    spans = out.amax(dim=(1, 2, 3, 4)) - out.amin(dim=(1, 2, 3, 4))
    assert torch.allclose(spans, torch.full((B,), 0.5), atol=0.05)  # a quarter of the area: half the width


def test_brightness_factor_within_range(clips):
    frames = frames_of(clips[0]).clamp(0.05, 0.6)  # no clipping at 1.5x
    cfg = VideoAugmentConfig(jitter_p=1.0, brightness=0.5, contrast=0.0, saturation=0.0, hue=0.0, grayscale_p=0.0)
    out = colour_jitter(frames, cfg, generator())
    factor = out / frames
    per_clip = factor.flatten(1)
    assert torch.allclose(per_clip, per_clip[:, :1], atol=1e-4)  # one factor a clip
    assert ((per_clip[:, 0] >= 0.5 - 1e-4) & (per_clip[:, 0] <= 1.5 + 1e-4)).all()
    assert per_clip[:, 0].std() > 0.01


def test_hue_rotation_keeps_luma_and_grayscale_is_gray(clips):
    frames = frames_of(clips[0]) * 0.5 + 0.25
    cfg = VideoAugmentConfig(jitter_p=1.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.5, grayscale_p=0.0)
    out = colour_jitter(frames, cfg, generator())
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1, 1)
    assert not torch.allclose(out, frames, atol=1e-2)
    assert torch.allclose((out * luma).sum(1), (frames * luma).sum(1), atol=0.03)
    gray = colour_jitter(frames, VideoAugmentConfig(jitter_p=0.0, grayscale_p=1.0), generator())
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])


def test_temporal_jitter_shifts_frames_within_the_offset():
    video = torch.arange(T, dtype=torch.uint8).view(1, T, 1, 1, 1).expand(B, T, H, W, 3).contiguous()
    cfg = VideoAugmentConfig(frame_offset=2, rate_jitter=0.0)
    out = temporal_jitter(video, cfg, generator())
    index = out[:, :, 0, 0, 0].long()
    shift = index[:, T // 2] - T // 2
    assert (shift.abs() <= 2).all()
    inside = (torch.arange(T) + shift[:, None] >= 0) & (torch.arange(T) + shift[:, None] < T)
    assert torch.equal(index[inside], (torch.arange(T) + shift[:, None]).expand(B, T)[inside])
    assert (index[:, 1:] >= index[:, :-1]).all()  # time still runs forward


def test_gain_within_range(clips):
    audio = clips[1]
    out = augment_audio(audio, AudioAugmentConfig(**{**NO_AUDIO.__dict__, "gain_db": 6.0}), RATE, generator())
    ratio = (out / audio).median(dim=1).values
    assert ((ratio >= 10 ** (-6 / 20) - 1e-5) & (ratio <= 10 ** (6 / 20) + 1e-5)).all()
    assert torch.allclose(out, audio * ratio[:, None], atol=1e-5)


def test_noise_at_a_snr_within_range(clips):
    audio = clips[1]
    cfg = AudioAugmentConfig(**{**NO_AUDIO.__dict__, "noise_p": 1.0, "snr_db": (10.0, 20.0)})
    out = augment_audio(audio, cfg, RATE, generator())
    snr = 10 * torch.log10(audio.pow(2).sum(1) / (out - audio).pow(2).sum(1))
    assert ((snr >= 10 - 1e-3) & (snr <= 20 + 1e-3)).all()
    silent = torch.zeros(2, S)
    assert torch.equal(augment_audio(silent, cfg, RATE, generator()), silent)


def test_time_shift_is_a_rotation_within_range(clips):
    audio = clips[1]
    cfg = AudioAugmentConfig(**{**NO_AUDIO.__dict__, "time_shift_s": 0.25})
    out = augment_audio(audio, cfg, RATE, generator())
    for row, shifted in zip(audio, out):
        matches = [k for k in range(-RATE // 4, RATE // 4 + 1) if torch.equal(row.roll(k), shifted)]
        assert len(matches) == 1


def test_mixing_adds_another_clip_below_the_level(clips):
    audio = clips[1]
    cfg = AudioAugmentConfig(**{**NO_AUDIO.__dict__, "mix_p": 1.0, "mix_level": 0.3})
    out = augment_audio(audio, cfg, RATE, generator())
    added = out - audio
    other = audio.roll(1, dims=0)
    scale = (added * other).sum(1) / other.pow(2).sum(1)
    assert torch.allclose(added, other * scale[:, None], atol=1e-5)
    rms = lambda x: x.pow(2).mean(1).sqrt()  # noqa: E731
    assert (rms(added) <= 0.3 * rms(audio) + 1e-6).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_same_ops_on_a_gpu(clips):
    video, audio = clips
    views = Augmenter(AugmentConfig(), DATA).views(video.cuda(), audio.cuda(), 2, step=3)
    assert all(v.is_cuda and a.is_cuda and v.dtype == torch.uint8 for v, a in views)


def test_views_are_not_pixel_identical_to_the_clip(clips):
    video, audio = clips
    ((v, a),) = Augmenter(AugmentConfig(), DATA).views(video, audio, 1, step=0)
    assert (v.float() - video.float()).abs().mean() > 1 and not math.isclose(float((a - audio).abs().mean()), 0.0)
