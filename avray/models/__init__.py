"""Encoders, projection heads and fusion; ``build_model`` assembles them from the config."""

from avray.models.audio import AudioEncoder, LogMel
from avray.models.crop_attend import SpaceTimeCropAttend, random_box_mask
from avray.models.features import FeatureModel
from avray.models.fusion import ConcatMLPFusion, CrossAttentionFusion
from avray.models.heads import ProjectionHead
from avray.models.loading import load_model
from avray.models.model import AVModel, build_model, check_model_config
from avray.models.outputs import EncoderOutput, ModelOutputs
from avray.models.registry import (
    AUDIO_ENCODERS,
    FUSIONS,
    VIDEO_ENCODERS,
    build_fusion,
    encoder_widths,
    register_audio_encoder,
    register_fusion,
    register_video_encoder,
)
from avray.models.video import FrameNormalize, VideoEncoder

__all__ = [
    "AVModel",
    "AudioEncoder",
    "ConcatMLPFusion",
    "CrossAttentionFusion",
    "EncoderOutput",
    "ModelOutputs",
    "FeatureModel",
    "FrameNormalize",
    "LogMel",
    "ProjectionHead",
    "SpaceTimeCropAttend",
    "VideoEncoder",
    "build_fusion",
    "build_model",
    "check_model_config",
    "encoder_widths",
    "register_audio_encoder",
    "register_fusion",
    "register_video_encoder",
    "AUDIO_ENCODERS",
    "FUSIONS",
    "VIDEO_ENCODERS",
    "load_model",
    "random_box_mask",
]
