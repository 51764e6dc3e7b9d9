"""The audio-visual model: two encoders, two projection heads and a fusion.

The default model (``build_model(ModelConfig(), DataConfig())``, concat-MLP fusion) has
1,235,232 parameters: video encoder 652k, audio encoder 287k, projection heads 132k, fusion
165k (cross-attention fusion: 1.83M in all).
"""

from __future__ import annotations

from torch import Tensor

from avray.config import AugmentConfig, ConfigError, DataConfig, ModelConfig

# Imported for their registrations (each builder registers itself by name).
from avray.models import audio as _audio  # noqa: F401
from avray.models import backbones as _backbones  # noqa: F401
from avray.models import fusion as _fusion  # noqa: F401
from avray.models import video as _video  # noqa: F401
from avray.models.audio import LogMel
from avray.models.augment import SpecAugment
from avray.models.features import FeatureModel
from avray.models.heads import JointHeads
from avray.models.outputs import ModelOutputs
from avray.models.registry import FUSIONS, build_audio_encoder, build_video_encoder, encoder_widths


class AVModel(JointHeads):
    """``forward(video, audio) -> ModelOutputs``, the contract the objectives consume
    (:class:`~avray.models.outputs.ModelOutputs`; widths also in :attr:`output_dims`).

    Inputs: ``video`` uint8 [B, T, H, W, 3], ``audio`` float [B, S] mono waveform.

    BatchNorm layers need B >= 2 in training mode; any B works in eval mode. ``augment``
    (training only) puts SpecAugment masks on the audio encoder's log-mel.
    """

    def __init__(self, cfg: ModelConfig, data: DataConfig, augment: AugmentConfig | None = None) -> None:
        super().__init__()
        self.video_encoder = build_video_encoder(cfg, data)
        self.audio_encoder = build_audio_encoder(cfg, data)
        self.build_heads(cfg, encoder_widths(cfg))
        if augment is not None and augment.enabled:
            for module in self.audio_encoder.modules():
                if isinstance(module, LogMel):
                    module.masking = SpecAugment(augment.audio)

    def forward(self, video: Tensor, audio: Tensor) -> ModelOutputs:
        if video.shape[0] != audio.shape[0]:
            raise ValueError(f"video and audio batch sizes differ: {video.shape[0]} vs {audio.shape[0]}")
        return self.joint_outputs(self.video_encoder(video), self.audio_encoder(audio))


def build_model(
    model_cfg: ModelConfig, data_cfg: DataConfig, augment: AugmentConfig | None = None
) -> AVModel | FeatureModel:
    """Validate both configs and build the model for clips of ``data_cfg``'s shape, or, with
    ``model.inputs: features``, heads and fusion over frozen encoders' features. ``augment``:
    the training config's, for the augmentation that lives inside the model."""
    check_model_config(model_cfg, data_cfg)
    if model_cfg.inputs == "features":
        return FeatureModel(model_cfg)
    return AVModel(model_cfg, data_cfg, augment)


def check_model_config(model_cfg: ModelConfig, data_cfg: DataConfig) -> None:
    """What the config alone cannot check: registered names, and what the encoders' widths
    and the clip's shape allow. Cheap (nothing is built), so workflows run it before any work."""
    model_cfg.validate()
    data_cfg.validate()
    if model_cfg.fusion not in FUSIONS:
        raise ConfigError(f"model.fusion={model_cfg.fusion!r} is not registered; known: {', '.join(sorted(FUSIONS))}")
    if model_cfg.inputs == "features":
        return
    widths = encoder_widths(model_cfg)
    if model_cfg.crop_attend and widths["video"] % model_cfg.attention_heads:
        raise ConfigError(
            f"model.crop_attend needs the video encoder's width ({widths['video']}) to be divisible "
            f"by model.attention_heads ({model_cfg.attention_heads})"
        )
    if model_cfg.n_fft > data_cfg.num_samples:
        raise ConfigError(
            f"model.n_fft ({model_cfg.n_fft}) must not exceed the clip's {data_cfg.num_samples} audio samples"
        )
