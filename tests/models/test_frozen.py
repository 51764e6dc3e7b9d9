"""Frozen encoders: loading TorchScript and state dicts (local and s3://), preprocessing, and
turning whatever a module returns into pooled features and tokens."""

import pytest
import torch
from torch import nn

from avray.config import ConfigError, FrozenAudioConfig, FrozenVideoConfig, load_config
from avray.models.audio import AudioEncoder, LogMel
from avray.models.frozen import (
    FrozenAudioEncoder,
    FrozenVideoEncoder,
    as_encoder_output,
    build_frozen_encoders,
    load_module,
)
from avray.models.video import VideoEncoder

SMALL = [
    "model.video_width=8",
    "model.video_depth=2",
    "model.audio_width=8",
    "model.audio_depth=2",
    "model.n_mels=32",
    "model.n_fft=256",
    "data.clip_seconds=1.0",
    "data.fps=4",
    "data.frame_size=32",
]


class TinyVideoNet(nn.Module):
    """A torchvision-style video classifier: [B, 3, T, H, W] floats -> logits, with ``fc``."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv3d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten())
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        return self.fc(self.stem(x))


def _clips(b=3, t=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, t, size, size, 3), dtype=torch.uint8, generator=g)


def test_torchscript_video_encoder_gets_resized_normalised_bcthw_frames(tmp_path):
    torch.manual_seed(0)
    net = TinyVideoNet().eval()
    torch.jit.script(net).save(str(tmp_path / "video.pt"))
    section = FrozenVideoConfig(
        path=str(tmp_path / "video.pt"), frame_size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)
    )
    cfg = load_config(None, SMALL)
    encoder = FrozenVideoEncoder(load_module(section, "video", cfg.model, cfg.data), section)
    video = _clips()
    out = encoder(video)

    frames = video.permute(0, 4, 1, 2, 3).float()
    b, c, t, h, w = frames.shape
    resized = (
        nn.functional.interpolate(
            frames.transpose(1, 2).reshape(b * t, c, h, w), size=(16, 16), mode="bilinear", antialias=True
        )
        .reshape(b, t, c, 16, 16)
        .transpose(1, 2)
    )
    expected = net((resized / 255.0 - 0.5) / 0.25)
    assert out.pooled.shape == (3, 5) and out.tokens.shape == (3, 1, 5)
    torch.testing.assert_close(out.pooled, expected)
    assert not any(p.requires_grad for p in encoder.parameters())


def test_state_dict_of_avray_encoders_reproduces_them_exactly(tmp_path):
    cfg = load_config(None, SMALL)
    torch.manual_seed(1)
    video_net, audio_net = VideoEncoder(cfg.model).eval(), AudioEncoder(cfg.model, cfg.data.sample_rate).eval()
    torch.save(video_net.state_dict(), tmp_path / "video.pt")
    torch.save(audio_net.state_dict(), tmp_path / "audio.pt")
    cfg = load_config(
        None,
        [
            *SMALL,
            f"frozen.video.path={tmp_path / 'video.pt'}",
            "frozen.video.architecture=avray",
            "frozen.video.layout=BTHWC",
            "frozen.video.normalize=false",
            f"frozen.audio.path={tmp_path / 'audio.pt'}",
            "frozen.audio.architecture=avray",
        ],
    )
    video_encoder, audio_encoder = build_frozen_encoders(cfg)
    video, audio = _clips(), torch.randn(3, cfg.data.num_samples)
    with torch.no_grad():
        want_video, want_audio = video_net(video), audio_net(audio)
    torch.testing.assert_close(video_encoder(video).pooled, want_video.pooled)
    torch.testing.assert_close(video_encoder(video).tokens, want_video.tokens)
    torch.testing.assert_close(audio_encoder(audio).pooled, want_audio.pooled)

    # An avray checkpoint's state.pt (the whole module, prefixed) works as it is.
    torch.save(
        {
            "module": {
                **{f"model.video_encoder.{k}": v for k, v in video_net.state_dict().items()},
                "model.video_head.0.weight": torch.zeros(1),
            },
            "epoch": 3,
        },
        tmp_path / "state.pt",
    )
    section = FrozenVideoConfig(path=str(tmp_path / "state.pt"), architecture="avray", layout="BTHWC", normalize=False)
    from_checkpoint = FrozenVideoEncoder(load_module(section, "video", cfg.model, cfg.data), section)
    torch.testing.assert_close(from_checkpoint(video).pooled, want_video.pooled)
    with pytest.raises(ConfigError, match="not a state dict of tensors"):
        torch.jit.script(nn.Linear(2, 2)).save(str(tmp_path / "scripted.pt"))
        load_module(
            FrozenVideoConfig(path=str(tmp_path / "scripted.pt"), architecture="avray"), "video", cfg.model, cfg.data
        )


def test_log_mel_input_and_strip_and_dict_outputs(tmp_path):
    class MelNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.AdaptiveAvgPool2d(2))
            self.fc = nn.Linear(16, 3)

        def forward(self, x):
            feats = self.body(x)  # [B, 4, 2, 2]: a feature map
            return {"map": feats, "logits": self.fc(feats.flatten(1))}

    torch.manual_seed(2)
    net = MelNet().eval()
    torch.save(net.state_dict(), tmp_path / "mel.pt")
    torch.jit.script(net).save(str(tmp_path / "mel.ts"))
    section = FrozenAudioConfig(path=str(tmp_path / "mel.ts"), input="log_mel", n_mels=20, n_fft=256, output_key="map")
    cfg = load_config(None, SMALL)
    encoder = FrozenAudioEncoder(load_module(section, "audio", cfg.model, cfg.data), section, cfg.data.sample_rate)
    audio = torch.randn(2, cfg.data.num_samples)
    out = encoder(audio)
    feature_map = net(LogMel(cfg.data.sample_rate, 256, 160, 20)(audio))["map"]
    torch.testing.assert_close(out.tokens, feature_map.flatten(2).transpose(1, 2))  # [B, 4 positions, 4 channels]
    torch.testing.assert_close(out.pooled, feature_map.mean((2, 3)))

    with pytest.raises(ConfigError, match="set its output_key"):
        as_encoder_output({"a": torch.zeros(1, 2)})
    pair = (torch.ones(2, 3), torch.zeros(2, 5, 3))
    assert as_encoder_output(pair).pooled is pair[0] and as_encoder_output(pair).tokens is pair[1]


def test_strip_replaces_a_submodule_with_identity(tmp_path):
    cfg = load_config(None, SMALL)
    torch.manual_seed(3)
    net = VideoEncoder(cfg.model).eval()
    torch.save(net.state_dict(), tmp_path / "video.pt")
    # Drop avray's own per-clip normalisation; feed Kinetics-standardised BCTHW floats instead.
    section = FrozenVideoConfig(path=str(tmp_path / "video.pt"), architecture="avray", strip="normalize")
    encoder = FrozenVideoEncoder(load_module(section, "video", cfg.model, cfg.data), section)
    video = _clips()
    net.normalize = nn.Identity()
    frames = (video.permute(0, 4, 1, 2, 3).float() / 255.0 - encoder.mean) / encoder.std
    with torch.no_grad():
        torch.testing.assert_close(encoder(video).pooled, net(frames).pooled)
    torch.jit.script(TinyVideoNet()).save(str(tmp_path / "scripted.pt"))
    with pytest.raises(ConfigError, match="cannot be edited"):
        load_module(FrozenVideoConfig(path=str(tmp_path / "scripted.pt"), strip="fc"), "video", cfg.model, cfg.data)


def test_bad_encoders_give_clear_errors(tmp_path):
    cfg = load_config(None, SMALL)
    with pytest.raises(ConfigError, match="frozen.video.path is not set"):
        load_module(FrozenVideoConfig(), "video", cfg.model, cfg.data)
    with pytest.raises(ConfigError, match="cannot read frozen encoder weights"):
        load_module(FrozenVideoConfig(path=str(tmp_path / "missing.pt")), "video", cfg.model, cfg.data)
    torch.save(TinyVideoNet().state_dict(), tmp_path / "sd.pt")
    with pytest.raises(ConfigError, match="not a TorchScript file"):
        load_module(FrozenVideoConfig(path=str(tmp_path / "sd.pt")), "video", cfg.model, cfg.data)
    with pytest.raises(ConfigError, match="does not fit avray"):
        load_module(FrozenVideoConfig(path=str(tmp_path / "sd.pt"), architecture="avray"), "video", cfg.model, cfg.data)
    with pytest.raises(ConfigError, match="no builder 'no_such_model'"):
        load_module(
            FrozenAudioConfig(path=str(tmp_path / "sd.pt"), architecture="torchaudio:no_such_model"),
            "audio",
            cfg.model,
            cfg.data,
        )
    torch.save(VideoEncoder(cfg.model).state_dict(), tmp_path / "avray.pt")
    with pytest.raises(ConfigError, match="has no attribute 'head'"):
        load_module(
            FrozenVideoConfig(path=str(tmp_path / "avray.pt"), architecture="avray", strip="head"),
            "video",
            cfg.model,
            cfg.data,
        )


def test_loads_torchscript_from_s3(s3_env, tmp_path):
    torch.manual_seed(4)
    net = TinyVideoNet().eval()
    torch.jit.script(net).save(str(tmp_path / "video.pt"))
    client = s3_env.client()
    client.create_bucket(Bucket="weights")
    client.upload_file(str(tmp_path / "video.pt"), "weights", "encoders/video.pt")
    cfg = load_config(None, SMALL)
    module = load_module(FrozenVideoConfig(path="s3://weights/encoders/video.pt"), "video", cfg.model, cfg.data)
    x = torch.randn(2, 3, 4, 16, 16)
    torch.testing.assert_close(module(x), net(x))
