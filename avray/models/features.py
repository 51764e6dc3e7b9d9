"""Heads and fusion over frozen encoders' features: what trains when the encoders do not.

Feature shards (workflows/extract_features.py) hold, per clip, ``video`` and ``audio`` as
pooled features [D] or token sequences [N, D]; :class:`FeatureModel` maps them to the same
output dict as :class:`avray.models.AVModel`, so objectives, training loop, checkpoints,
tuning and evaluation work unchanged.
"""

from __future__ import annotations

from torch import Tensor

from avray.config import ModelConfig
from avray.models.heads import JointHeads
from avray.models.outputs import EncoderOutput, ModelOutputs


def _as_output(features: Tensor) -> EncoderOutput:
    features = features.float()
    if features.dim() == 3:
        return EncoderOutput(features.mean(1), features)
    return EncoderOutput(features, features.unsqueeze(1))


class FeatureModel(JointHeads):
    """``forward(video, audio) -> dict``: ``video`` [B, Dv] or [B, Nv, Dv], ``audio`` [B, Da]
    or [B, Na, Da] float features. Outputs: ``video_features`` [B, Dv], ``audio_features``
    [B, Da] (the frozen features, pooled), ``video``/``audio`` [B, E] (projection heads),
    ``fused`` [B, F]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.build_heads(cfg, {"video": cfg.video_feature_dim, "audio": cfg.audio_feature_dim})

    def forward(self, video: Tensor, audio: Tensor) -> ModelOutputs:
        video_out, audio_out = _as_output(video), _as_output(audio)
        for name, out in (("video", video_out), ("audio", audio_out)):
            if out.pooled.shape[-1] != self.feature_dims[name]:
                raise ValueError(
                    f"{name} features are {out.pooled.shape[-1]} wide; the model was built for "
                    f"{self.feature_dims[name]}"
                )
        return self.joint_outputs(video_out, audio_out)
