"""Fusion: one joint audio-visual embedding [B, fused_dim] per clip.

Both modules take the two encoders' outputs, ``forward(video, audio) -> [B, fused_dim]``, so
the model and the objectives do not care which one the config picked.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from avray.config import ModelConfig
from avray.models.outputs import EncoderOutput
from avray.models.registry import register_fusion


class ConcatMLPFusion(nn.Module):
    """Concatenated pooled features [B, Dv + Da] -> Linear-BN-ReLU-Linear -> [B, fused_dim].

    Cheap late fusion: sees only clip-level features. BatchNorm needs B >= 2 in training.
    """

    def __init__(self, video_dim: int, audio_dim: int, fused_dim: int) -> None:
        super().__init__()
        self.out_dim = fused_dim
        self.mlp = nn.Sequential(
            nn.Linear(video_dim + audio_dim, fused_dim, bias=False),
            nn.BatchNorm1d(fused_dim),
            nn.ReLU(inplace=True),
            nn.Linear(fused_dim, fused_dim),
        )

    def forward(self, video: EncoderOutput, audio: EncoderOutput) -> Tensor:
        return self.mlp(torch.cat([video.pooled, audio.pooled], dim=-1))


class CrossAttentionFusion(nn.Module):
    """Each modality's tokens attend to the other's, then both are pooled and combined.

    Video tokens [B, Nv, Dv] and audio tokens [B, Na, Da] are projected to ``fused_dim``; one
    pre-norm residual cross-attention per direction lets a video region pick the sounds that
    go with it and vice versa (both directions read the tokens before either update). The two
    token means are concatenated and projected: [B, fused_dim].
    """

    def __init__(self, video_dim: int, audio_dim: int, fused_dim: int, num_heads: int) -> None:
        super().__init__()
        self.out_dim = fused_dim
        self.video_in = nn.Linear(video_dim, fused_dim)
        self.audio_in = nn.Linear(audio_dim, fused_dim)
        self.video_norm = nn.LayerNorm(fused_dim)
        self.audio_norm = nn.LayerNorm(fused_dim)
        self.video_attends_audio = nn.MultiheadAttention(fused_dim, num_heads, batch_first=True)
        self.audio_attends_video = nn.MultiheadAttention(fused_dim, num_heads, batch_first=True)
        self.out = nn.Sequential(nn.LayerNorm(2 * fused_dim), nn.Linear(2 * fused_dim, fused_dim))

    def forward(self, video: EncoderOutput, audio: EncoderOutput) -> Tensor:
        v = self.video_in(video.tokens)
        a = self.audio_in(audio.tokens)
        v_normed, a_normed = self.video_norm(v), self.audio_norm(a)
        v = v + self.video_attends_audio(v_normed, a_normed, a_normed, need_weights=False)[0]
        a = a + self.audio_attends_video(a_normed, v_normed, v_normed, need_weights=False)[0]
        return self.out(torch.cat([v.mean(1), a.mean(1)], dim=-1))


@register_fusion("concat_mlp")
def concat_mlp(cfg: ModelConfig, dims: Mapping[str, int]) -> ConcatMLPFusion:
    return ConcatMLPFusion(dims["video"], dims["audio"], cfg.fused_dim)


@register_fusion("cross_attention")
def cross_attention(cfg: ModelConfig, dims: Mapping[str, int]) -> CrossAttentionFusion:
    return CrossAttentionFusion(dims["video"], dims["audio"], cfg.fused_dim, cfg.attention_heads)
