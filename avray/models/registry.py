"""Encoders and fusion modules by name: ``model.video_encoder``, ``model.audio_encoder``,
``model.fusion``.

Each builder is registered with one decorator that also declares its output width, so the
width is known (to the heads, the fusion, the objectives, config checks) without building
the module::

    @register_video_encoder("r2plus1d_18", width=lambda cfg: 512)
    def r2plus1d_18(cfg: ModelConfig, data: DataConfig) -> nn.Module: ...

An encoder maps uint8 video ``[B, T, H, W, 3]`` (or a waveform ``[B, S]``) to an
:class:`~avray.models.outputs.EncoderOutput`; a fusion builder takes ``(cfg, dims)`` with
``dims = {"video": Dv, "audio": Da}`` and returns a module ``(video_out, audio_out) -> [B, F]``
with ``out_dim``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from avray.config import ConfigError, DataConfig, ModelConfig


@dataclass(frozen=True)
class Registered:
    build: Callable[..., nn.Module]
    width: Callable[[ModelConfig], int] | None = None


VIDEO_ENCODERS: dict[str, Registered] = {}
AUDIO_ENCODERS: dict[str, Registered] = {}
FUSIONS: dict[str, Registered] = {}


def _register(registry: dict[str, Registered], name: str, width: Callable[[ModelConfig], int] | None = None):
    def decorate(build):
        if name in registry:
            raise ValueError(f"{name!r} is registered already")
        registry[name] = Registered(build, width)
        return build

    return decorate


def register_video_encoder(name: str, width: Callable[[ModelConfig], int]):
    return _register(VIDEO_ENCODERS, name, width)


def register_audio_encoder(name: str, width: Callable[[ModelConfig], int]):
    return _register(AUDIO_ENCODERS, name, width)


def register_fusion(name: str):
    return _register(FUSIONS, name)


def _lookup(registry: dict[str, Registered], key: str, name: str) -> Registered:
    if name not in registry:
        raise ConfigError(f"model.{key}={name!r} is not registered; known: {', '.join(sorted(registry))}")
    return registry[name]


def encoder_widths(cfg: ModelConfig) -> dict[str, int]:
    """``{"video": Dv, "audio": Da}``: the widths the configured encoders declare."""
    return {
        "video": _lookup(VIDEO_ENCODERS, "video_encoder", cfg.video_encoder).width(cfg),
        "audio": _lookup(AUDIO_ENCODERS, "audio_encoder", cfg.audio_encoder).width(cfg),
    }


def build_video_encoder(cfg: ModelConfig, data: DataConfig) -> nn.Module:
    return _lookup(VIDEO_ENCODERS, "video_encoder", cfg.video_encoder).build(cfg, data)


def build_audio_encoder(cfg: ModelConfig, data: DataConfig) -> nn.Module:
    return _lookup(AUDIO_ENCODERS, "audio_encoder", cfg.audio_encoder).build(cfg, data)


def build_fusion(cfg: ModelConfig, dims: dict[str, int]) -> nn.Module:
    return _lookup(FUSIONS, "fusion", cfg.fusion).build(cfg, dims)
