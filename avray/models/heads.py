"""Projection heads: the small MLP between an encoder and the space a loss compares in."""

from __future__ import annotations

from torch import nn

from avray.models.outputs import ModelOutputs


class ProjectionHead(nn.Sequential):
    """SimCLR-style MLP (Chen et al. 2020): Linear-BN-ReLU-Linear, [B, in_dim] -> [B, out_dim].

    Outputs are not L2-normalised; objectives that want the unit sphere normalise themselves.
    The hidden layer is as wide as the input, as in SimCLR. BatchNorm needs B >= 2 in training.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__(
            nn.Linear(in_dim, in_dim, bias=False),
            nn.BatchNorm1d(in_dim),
            nn.ReLU(inplace=True),
            nn.Linear(in_dim, out_dim),
        )
        self.out_dim = out_dim


class JointHeads(nn.Module):
    """What every avray model ends with: a projection head per modality and the fusion, over
    two encoders' outputs (trained encoders in ``AVModel``, frozen features in ``FeatureModel``).
    Subclasses call :meth:`build_heads` after creating their encoders (parameter order, and
    with it optimizer state in checkpoints, stays encoders first)."""

    def build_heads(self, cfg, dims: dict[str, int]) -> None:
        from avray.models.registry import build_fusion

        self.feature_dims = dict(dims)
        self.video_head = ProjectionHead(dims["video"], cfg.embed_dim)
        self.audio_head = ProjectionHead(dims["audio"], cfg.embed_dim)
        self.fusion = build_fusion(cfg, dims)

    @property
    def output_dims(self) -> dict[str, int]:
        return {
            "video_features": self.feature_dims["video"],
            "audio_features": self.feature_dims["audio"],
            "video": self.video_head.out_dim,
            "audio": self.audio_head.out_dim,
            "fused": self.fusion.out_dim,
        }

    def joint_outputs(self, video_out, audio_out) -> ModelOutputs:
        """Two ``EncoderOutput`` -> the model's :class:`~avray.models.outputs.ModelOutputs`."""
        return ModelOutputs(
            video_features=video_out.pooled,
            audio_features=audio_out.pooled,
            video=self.video_head(video_out.pooled),
            audio=self.audio_head(audio_out.pooled),
            fused=self.fusion(video_out, audio_out),
            video_tokens=video_out.tokens,
            audio_tokens=audio_out.tokens,
        )
