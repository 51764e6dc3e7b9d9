"""The backbones the papers train, from torchvision's architectures, randomly initialised.

- ``r2plus1d_18`` (video): R(2+1)D-18 (Tran et al. 2018, "A Closer Look at Spatiotemporal
  Convolutions for Action Recognition", arXiv:1711.11248), the video encoder of XDC, AVID,
  STiCA and CMAC. uint8 frames are standardised as avray's own encoder does
  (``model.video_norm``); 512-d output.
- ``resnet18`` (audio): ResNet-18 (He et al. 2016) on the log-mel spectrogram as a one-channel
  image, the usual audio encoder of these papers (XDC's is a ResNet-18 on log-mel too);
  512-d output.

Both return the final feature map as tokens (space-time for video, frequency-time for audio)
and its mean as the pooled feature; torchvision's classifier layers are not used. No
weights are downloaded: pretrained weights come through ``frozen.*`` (avray.models.frozen).
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models import resnet18
from torchvision.models.video import r2plus1d_18

from avray.config import DataConfig, ModelConfig
from avray.models.audio import LogMel
from avray.models.outputs import EncoderOutput
from avray.models.registry import register_audio_encoder, register_video_encoder
from avray.models.video import FrameNormalize

RESNET18_WIDTH = 512


def _tokens(feature_map: Tensor) -> EncoderOutput:
    tokens = feature_map.flatten(2).transpose(1, 2)
    return EncoderOutput(tokens.mean(1), tokens)


class R2Plus1D18(nn.Module):
    """uint8 video [B, T, H, W, 3] -> EncoderOutput(pooled [B, 512], tokens [B, N, 512])."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.out_dim = RESNET18_WIDTH
        self.normalize = FrameNormalize(per_clip=cfg.video_norm == "clip")
        net = r2plus1d_18(weights=None)
        self.stages = nn.Sequential(net.stem, net.layer1, net.layer2, net.layer3, net.layer4)

    def forward(self, video: Tensor) -> EncoderOutput:
        return _tokens(self.stages(self.normalize(video)))


class ResNet18Audio(nn.Module):
    """Waveform [B, S] -> log-mel [B, 1, n_mels, frames] -> EncoderOutput(pooled [B, 512],
    tokens [B, N, 512]); the first convolution takes one channel instead of RGB's three."""

    def __init__(self, cfg: ModelConfig, sample_rate: int) -> None:
        super().__init__()
        self.out_dim = RESNET18_WIDTH
        self.log_mel = LogMel(sample_rate, cfg.n_fft, cfg.hop_length, cfg.n_mels)
        net = resnet18(weights=None)
        net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.stages = nn.Sequential(
            net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4
        )

    def forward(self, audio: Tensor) -> EncoderOutput:
        return _tokens(self.stages(self.log_mel(audio)))


@register_video_encoder("r2plus1d_18", width=lambda cfg: RESNET18_WIDTH)
def r2plus1d_18_encoder(cfg: ModelConfig, data: DataConfig) -> R2Plus1D18:
    return R2Plus1D18(cfg)


@register_audio_encoder("resnet18", width=lambda cfg: RESNET18_WIDTH)
def resnet18_audio_encoder(cfg: ModelConfig, data: DataConfig) -> ResNet18Audio:
    return ResNet18Audio(cfg, data.sample_rate)
