"""Frozen pretrained encoders: a user's module, the input it expects, and features out.

    clip row ─► preprocess (layout, resize, normalise | log-mel) ─► frozen module ─► EncoderOutput

The module comes from a local or ``s3://`` path: a TorchScript file, or an architecture name
plus a state dict loaded with ``torch.load(weights_only=True)`` (never pickled code, never a
download). A TorchScript file is read without Python unpickling, but it is a program: its
``forward`` runs as code, so use only encoders from a source trusted like code.

Whatever the module returns becomes ``EncoderOutput(pooled [B, D], tokens [B, N, D])``: a
matrix is the pooled feature; [B, N, D] are tokens (pooled by their mean); a feature map
[B, C, ...] is flattened into tokens; a ``(pooled, tokens)`` pair, such as avray's own
encoders return, is taken as it is; a dict needs ``output_key``.
"""

from __future__ import annotations

import io
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avray.config import (
    ConfigError,
    DataConfig,
    FrozenAudioConfig,
    FrozenVideoConfig,
    ModelConfig,
)
from avray.models.audio import LogMel
from avray.models.outputs import EncoderOutput
from avray.storage import filesystem_for


def _read_bytes(uri: str, endpoint_override: str | None) -> bytes:
    fs, path = filesystem_for(uri, endpoint_override)
    try:
        with fs.open_input_stream(path) as handle:
            return handle.read()
    except (FileNotFoundError, OSError) as err:
        raise ConfigError(f"cannot read frozen encoder weights {uri!r}: {err}") from None


def _architecture(name: str, modality: str, model_cfg: ModelConfig, data_cfg: DataConfig) -> nn.Module:
    if name == "avray":
        from avray.models.registry import build_audio_encoder, build_video_encoder

        return (build_video_encoder if modality == "video" else build_audio_encoder)(model_cfg, data_cfg)
    library, builder = name.split(":", 1)
    try:
        module = __import__(f"{library}.models", fromlist=["models"])
    except ImportError:
        raise ConfigError(
            f"frozen.{modality}.architecture={name} needs {library}: pip install "
            f"'{library}' matching torch (see constraints.txt)"
        ) from None
    if library == "torchvision":
        try:
            return module.get_model(builder, weights=None)
        except ValueError as err:
            raise ConfigError(f"frozen.{modality}.architecture: {err}") from None
    if not callable(getattr(module, builder, None)):
        raise ConfigError(f"frozen.{modality}.architecture: torchaudio.models has no builder {builder!r}")
    return getattr(module, builder)()


def load_module(
    section: FrozenVideoConfig | FrozenAudioConfig, modality: str, model_cfg: ModelConfig, data_cfg: DataConfig
) -> nn.Module:
    """The user's encoder, in eval mode with gradients off."""
    if section.path is None:
        raise ConfigError(f"frozen.{modality}.path is not set: give a TorchScript file or a state dict")
    blob = io.BytesIO(_read_bytes(section.path, data_cfg.endpoint_override))
    if section.architecture is None:
        try:
            module = torch.jit.load(blob, map_location="cpu")
        except RuntimeError as err:
            raise ConfigError(
                f"frozen.{modality}.path {section.path!r} is not a TorchScript file ({err}); "
                f"for a state dict set frozen.{modality}.architecture"
            ) from None
    else:
        module = _architecture(section.architecture, modality, model_cfg, data_cfg)
        try:
            state = torch.load(blob, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch raises several types for files it cannot read
            raise ConfigError(
                f"frozen.{modality}.path {section.path!r} is not a state dict of tensors "
                f"({type(err).__name__}); for a TorchScript file leave architecture unset"
            ) from None
        if section.architecture == "avray" and "module" in state:
            # An avray checkpoint's state.pt: take this modality's encoder out of the whole module.
            prefix = f"model.{modality}_encoder."
            state = {k.removeprefix(prefix): v for k, v in state["module"].items() if k.startswith(prefix)}
        try:
            module.load_state_dict(state)
        except RuntimeError as err:
            raise ConfigError(
                f"frozen.{modality}: the state dict in {section.path!r} does not fit "
                f"{section.architecture}: {str(err).splitlines()[0]}"
            ) from None
    if section.strip:
        if isinstance(module, torch.jit.ScriptModule):
            raise ConfigError(
                f"frozen.{modality}.strip works on state-dict architectures; a TorchScript "
                "encoder cannot be edited: export one that returns features"
            )
        if not hasattr(module, section.strip):
            raise ConfigError(f"frozen.{modality}.strip: the encoder has no attribute {section.strip!r}")
        setattr(module, section.strip, nn.Identity())
    module.eval()
    for param in module.parameters():  # ScriptModules have no requires_grad_()
        param.requires_grad_(False)
    return module


def as_encoder_output(out: Any, output_key: str | None = None) -> EncoderOutput:
    """Whatever a frozen module returned, as ``EncoderOutput(pooled [B, D], tokens [B, N, D])``."""
    if isinstance(out, dict):
        if output_key is None or output_key not in out:
            raise ConfigError(f"the frozen encoder returns a dict (keys {sorted(out)}): set its output_key")
        out = out[output_key]
    if isinstance(out, (tuple, list)):
        if len(out) == 2 and out[0].dim() == 2 and out[1].dim() == 3:
            return EncoderOutput(out[0], out[1])
        out = out[0]
    if out.dim() == 2:
        return EncoderOutput(out, out.unsqueeze(1))
    if out.dim() == 3:
        return EncoderOutput(out.mean(1), out)
    tokens = out.flatten(2).transpose(1, 2)
    return EncoderOutput(tokens.mean(1), tokens)


class FrozenVideoEncoder(nn.Module):
    """uint8 clips [B, T, H, W, 3] -> ``EncoderOutput`` of the frozen module."""

    def __init__(self, module: nn.Module, cfg: FrozenVideoConfig):
        super().__init__()
        self.module, self.cfg = module, cfg
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1, 1))
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1, 1))

    @torch.inference_mode()
    def forward(self, video: Tensor) -> EncoderOutput:
        frames = video.permute(0, 4, 1, 2, 3)  # [B, 3, T, H, W]
        if self.cfg.frame_size is not None and frames.shape[-1] != self.cfg.frame_size:
            b, c, t, h, w = frames.shape
            flat = frames.transpose(1, 2).reshape(b * t, c, h, w).float()
            flat = F.interpolate(flat, size=(self.cfg.frame_size, self.cfg.frame_size), mode="bilinear", antialias=True)
            frames = flat.reshape(b, t, c, *flat.shape[-2:]).transpose(1, 2)
            if not self.cfg.normalize:
                frames = frames.round().clamp(0, 255).to(torch.uint8)
        if self.cfg.normalize:
            frames = (frames.float() / 255.0 - self.mean) / self.std
        layout = {"BCTHW": frames, "BTCHW": frames.transpose(1, 2), "BTHWC": frames.permute(0, 2, 3, 4, 1)}
        return as_encoder_output(self.module(layout[self.cfg.layout].contiguous()), self.cfg.output_key)


class FrozenAudioEncoder(nn.Module):
    """Waveform [B, S] -> ``EncoderOutput`` of the frozen module (fed the waveform or a log-mel)."""

    def __init__(self, module: nn.Module, cfg: FrozenAudioConfig, sample_rate: int):
        super().__init__()
        self.module, self.cfg = module, cfg
        self.log_mel = LogMel(sample_rate, cfg.n_fft, cfg.hop_length, cfg.n_mels) if cfg.input == "log_mel" else None

    @torch.inference_mode()
    def forward(self, audio: Tensor) -> EncoderOutput:
        inputs = self.log_mel(audio) if self.log_mel is not None else audio
        return as_encoder_output(self.module(inputs), self.cfg.output_key)


def build_frozen_encoders(cfg) -> tuple[FrozenVideoEncoder, FrozenAudioEncoder]:
    """Both frozen encoders of ``cfg.frozen`` (a full :class:`avray.config.Config`)."""
    video = load_module(cfg.frozen.video, "video", cfg.model, cfg.data)
    audio = load_module(cfg.frozen.audio, "audio", cfg.model, cfg.data)
    return (
        FrozenVideoEncoder(video, cfg.frozen.video).eval(),
        FrozenAudioEncoder(audio, cfg.frozen.audio, cfg.data.sample_rate).eval(),
    )
