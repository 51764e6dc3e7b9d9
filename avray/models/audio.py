"""Audio encoder: mono waveform in, pooled clip feature and frequency-time tokens out."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchaudio.transforms import MelSpectrogram

from avray.config import DataConfig, ModelConfig
from avray.models.outputs import EncoderOutput
from avray.models.registry import register_audio_encoder

# Floor under the mel power before the log: silence (a video without audio track) must give
# a finite spectrogram, and 1e-6 is far below the power of any audible frame.
LOG_EPS = 1e-6


def _without_autocast(device: torch.device):
    """Disable autocast for ``device`` where it exists (meta tensors have no autocast)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


class LogMel(nn.Module):
    """Waveform float [B, S] -> per-clip standardised log-mel spectrogram float32 [B, 1, n_mels, frames].

    A module inside the model so it runs on the training device. It always computes in
    float32: under bf16/fp16 autocast the STFT and the mel power's dynamic range lose too much.
    """

    def __init__(self, sample_rate: int, n_fft: int, hop_length: int, n_mels: int) -> None:
        super().__init__()
        self.mel = MelSpectrogram(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels)
        # Training-time masks (avray.models.augment.SpecAugment, set by the model); no state.
        self.masking: nn.Module = nn.Identity()

    def forward(self, audio: Tensor) -> Tensor:
        if audio.dim() != 2 or not audio.is_floating_point():
            raise ValueError(f"audio must be float [B, S], got {audio.dtype} {tuple(audio.shape)}")
        with _without_autocast(audio.device):
            log_mel = torch.log(self.mel(audio.float()) + LOG_EPS)
            # Per-clip standardisation over all bins removes loudness differences between
            # recordings while keeping the spectral shape; silence maps to zeros, not NaN.
            log_mel = F.layer_norm(log_mel, log_mel.shape[-2:])
        return self.masking(log_mel.unsqueeze(1))


def conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def audio_backbone(width: int, depth: int) -> nn.Sequential:
    """``depth`` stages of two 3×3 convs, ``width`` channels doubling per stage; the first conv
    of every stage halves frequency and time. The first stage strides 4 along time, where
    hop-length frames are far denser than the video's. 64 mels × 201 frames ends as an
    8×13 grid at depth 3. [B, 1, n_mels, frames] -> [B, width * 2**(depth-1), F', T']
    """
    stages = [
        nn.Sequential(
            nn.Conv2d(1, width, 3, stride=(2, 4), padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            conv_bn_relu(width, width, stride=1),
        )
    ]
    for stage in range(1, depth):
        stages.append(
            nn.Sequential(
                conv_bn_relu(width * 2 ** (stage - 1), width * 2**stage, stride=2),
                conv_bn_relu(width * 2**stage, width * 2**stage, stride=1),
            )
        )
    return nn.Sequential(*stages)


def audio_width(cfg: ModelConfig) -> int:
    """The output width of :func:`audio_backbone` as the config shapes it (doubling per stage)."""
    return cfg.audio_width * 2 ** (cfg.audio_depth - 1)


class AudioEncoder(nn.Module):
    """Waveform float [B, S] -> EncoderOutput(pooled [B, Da], tokens [B, Na, Da])."""

    def __init__(self, cfg: ModelConfig, sample_rate: int) -> None:
        super().__init__()
        self.out_dim = audio_width(cfg)
        self.log_mel = LogMel(sample_rate, cfg.n_fft, cfg.hop_length, cfg.n_mels)
        self.backbone = audio_backbone(cfg.audio_width, cfg.audio_depth)

    def forward(self, audio: Tensor) -> EncoderOutput:
        feature_map = self.backbone(self.log_mel(audio))  # [B, Da, F', T']
        tokens = feature_map.flatten(2).transpose(1, 2)
        return EncoderOutput(tokens.mean(1), tokens)


@register_audio_encoder("avray", width=audio_width)
def avray_audio_encoder(cfg: ModelConfig, data: DataConfig) -> AudioEncoder:
    return AudioEncoder(cfg, data.sample_rate)
