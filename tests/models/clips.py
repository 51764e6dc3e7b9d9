"""Small configs and synthetic clip batches shared by the model tests."""

import torch

from avray.config import DataConfig, ModelConfig

# 1 s clips of 8 frames at 32×32 and 8 kHz: small enough that the many per-config tests stay
# fast, and different enough from the defaults to catch hard-coded shapes.
SMALL_DATA = DataConfig(clip_seconds=1.0, fps=8.0, frame_size=32, sample_rate=8000)
SMALL_MODEL = ModelConfig(
    video_width=8,
    video_depth=2,
    audio_width=8,
    audio_depth=2,
    n_mels=32,
    n_fft=256,
    hop_length=80,
    embed_dim=16,
    fused_dim=24,
    attention_heads=4,
)


def random_clips(data_cfg: DataConfig, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip rows as the data pipeline stacks them: uint8 video [B, T, H, W, 3], float32 audio [B, S]."""
    g = torch.Generator().manual_seed(seed)
    video = torch.randint(
        0,
        256,
        (batch, data_cfg.num_frames, data_cfg.frame_size, data_cfg.frame_size, 3),
        dtype=torch.uint8,
        generator=g,
    )
    audio = 0.1 * torch.randn(batch, data_cfg.num_samples, generator=g)
    return video, audio
