"""Encoders, projection heads and fusion; ``build_model`` assembles them from the config."""

from avray.models.audio import AudioEncoder, LogMel
from avray.models.crop_attend import SpaceTimeCropAttend, random_box_mask
from avray.models.features import FeatureModel
from avray.models.fusion import ConcatMLPFusion, CrossAttentionFusion, build_fusion
from avray.models.heads import ProjectionHead
from avray.models.loading import load_model
from avray.models.model import AVModel, build_model
from avray.models.outputs import EncoderOutput
from avray.models.video import FrameNormalize, VideoEncoder

__all__ = [
    "AVModel",
    "AudioEncoder",
    "ConcatMLPFusion",
    "CrossAttentionFusion",
    "EncoderOutput",
    "FeatureModel",
    "FrameNormalize",
    "LogMel",
    "ProjectionHead",
    "SpaceTimeCropAttend",
    "VideoEncoder",
    "build_fusion",
    "build_model",
    "load_model",
    "random_box_mask",
]
