"""Typed, frozen configuration for every avray job.

One YAML file (``workflows/configs/*.yaml``) maps onto :class:`Config`; ``--set a.b=c``
overrides any leaf. Everything is validated when the config is built, so a bad value
fails before Ray starts or a single video is read.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration value is wrong; the message says which key and what is expected."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class DataConfig:
    """How videos become clips (the clip-row contract of docs/design.md)."""

    clip_seconds: float = 2.0
    fps: float = 8.0
    frame_size: int = 64
    sample_rate: int = 16_000
    # "uniform": clips_per_video evenly spaced windows; "random": clips_per_video offsets
    # re-drawn every epoch from a seed that mixes the epoch number.
    sampling: Literal["uniform", "random"] = "uniform"
    clips_per_video: int = 4
    extensions: tuple[str, ...] = (".mp4", ".mkv", ".webm", ".avi", ".mov")
    # S3-compatible endpoint (e.g. MinIO/SeaweedFS); None uses the AWS default chain.
    endpoint_override: str | None = None
    # Ray tasks decoding in parallel; None = one per CPU of the cluster.
    decode_concurrency: int | None = None
    # Clips per block a decode task yields (a task decodes many blocks); small keeps memory flat.
    decode_batch_size: int = 16
    # CPUs reserved per decode task (fractions let small test clusters share cores).
    cpus_per_decode_task: float = 1.0
    # Wall-clock limit for probing a file, and for decoding the clips a task asks of it, all
    # of them together; a file that hangs PyAV is skipped, keeping the clips done by then.
    decode_timeout_s: float = 60.0
    # Fraction of source videos held out for validation (split by video, never by clip).
    val_fraction: float = 0.1
    seed: int = 0

    def validate(self) -> None:
        _check(self.clip_seconds > 0, "data.clip_seconds must be > 0")
        _check(self.fps > 0, "data.fps must be > 0")
        _check(8 <= self.frame_size <= 1024, "data.frame_size must be in [8, 1024]")
        _check(1000 <= self.sample_rate <= 192_000, "data.sample_rate must be in [1000, 192000]")
        _check(self.clips_per_video >= 1, "data.clips_per_video must be >= 1")
        _check(bool(self.extensions), "data.extensions must not be empty")
        _check(
            all(e.startswith(".") for e in self.extensions),
            "data.extensions must start with '.', e.g. .mp4",
        )
        _check(
            self.decode_concurrency is None or self.decode_concurrency >= 1,
            "data.decode_concurrency must be >= 1 or null",
        )
        _check(self.decode_batch_size >= 1, "data.decode_batch_size must be >= 1")
        _check(self.cpus_per_decode_task > 0, "data.cpus_per_decode_task must be > 0")
        _check(self.decode_timeout_s > 0, "data.decode_timeout_s must be > 0")
        _check(0.0 <= self.val_fraction < 1.0, "data.val_fraction must be in [0, 1)")

    @property
    def num_frames(self) -> int:
        return max(1, round(self.clip_seconds * self.fps))

    @property
    def num_samples(self) -> int:
        return round(self.clip_seconds * self.sample_rate)

    @property
    def clip_bytes(self) -> int:
        """Bytes of one decoded clip row's arrays: uint8 frames and float32 audio."""
        return self.num_frames * self.frame_size**2 * 3 + 4 * self.num_samples


@dataclass(frozen=True)
class ModelConfig:
    """Encoders, projection heads and fusion (avray.models); encoders and fusion by their
    registered names (avray.models.registry)."""

    # "avray": a small R(2+1)D (video) / 2-D CNN on log-mel (audio), shaped by the widths and
    # depths below; "r2plus1d_18" / "resnet18": the papers' backbones (torchvision's, random init).
    video_encoder: str = "avray"
    audio_encoder: str = "avray"
    video_width: int = 32
    # 4 stages end on a 2x2 grid of a 64x64 frame: a digit-sized receptive field (docs/recipe.md).
    video_depth: int = 4
    audio_width: int = 32
    audio_depth: int = 3
    n_mels: int = 64
    n_fft: int = 512
    hop_length: int = 160
    # Output size of each projection head (the space the objectives compare in).
    embed_dim: int = 128
    fusion: str = "concat_mlp"  # or "cross_attention"
    fused_dim: int = 256
    attention_heads: int = 4
    # Video standardisation: "clip" (each clip by its own per-channel statistics) or
    # "dataset" (fixed Kinetics-400 statistics).
    video_norm: Literal["clip", "dataset"] = "clip"
    # Space-Time Crop & Attend: random feature-level crop/mask during training.
    crop_attend: bool = False
    mask_ratio: float = 0.25
    # "features": train heads and fusion only, on frozen encoders' features
    # (workflows/extract_features.py); pretrain.py sets this and the widths from the shards.
    inputs: Literal["clips", "features"] = "clips"
    video_feature_dim: int = 0
    audio_feature_dim: int = 0
    # Tokens per clip in the feature shards (0: pooled vectors).
    video_feature_tokens: int = 0
    audio_feature_tokens: int = 0

    def feature_shapes(self) -> dict[str, list[int]]:
        """Per-clip shape of each modality's features, as feature shards record it."""
        return {
            name: ([tokens, dim] if tokens else [dim])
            for name, tokens, dim in (
                ("video", self.video_feature_tokens, self.video_feature_dim),
                ("audio", self.audio_feature_tokens, self.audio_feature_dim),
            )
        }

    def validate(self) -> None:
        for name in (
            "video_width",
            "video_depth",
            "audio_width",
            "audio_depth",
            "n_mels",
            "n_fft",
            "hop_length",
            "embed_dim",
            "fused_dim",
            "attention_heads",
        ):
            _check(getattr(self, name) >= 1, f"model.{name} must be >= 1")
        _check(0.0 <= self.mask_ratio < 1.0, "model.mask_ratio must be in [0, 1)")
        if self.inputs == "features":
            _check(
                self.video_feature_dim >= 1 and self.audio_feature_dim >= 1,
                "model.inputs=features needs model.video_feature_dim and model.audio_feature_dim >= 1 "
                "(pretrain.py reads them from feature shards)",
            )
            _check(not self.crop_attend, "model.crop_attend works on clips, not on frozen features")
        _check(
            self.fusion != "cross_attention" or self.fused_dim % self.attention_heads == 0,
            "model.fused_dim must be divisible by model.attention_heads for cross_attention",
        )
        _check(
            self.n_mels <= self.n_fft // 2 + 1,
            "model.n_mels must be <= model.n_fft // 2 + 1 (more mel bands than FFT bins leaves empty bands)",
        )
        # Encoder names and widths are checked where the encoders are registered
        # (avray.models.check_model_config), which config cannot see.


@dataclass(frozen=True)
class InfoNCEConfig:
    weight: float = 1.0
    # Soft: a batch holds many clips of each class; 0.07 pushes them apart as instances
    # (docs/recipe.md measures 0.1, 0.3, 0.5).
    temperature: float = 0.5
    learnable_temperature: bool = False
    # Lower clamp of a learnable temperature (CLIP clamps its logit scale at 100, i.e. tau >= 0.01).
    min_temperature: float = 0.01


@dataclass(frozen=True)
class FusedContrastiveConfig:
    # Off by default: on the spoken-digit corpus it taught the encoders each clip's incidental
    # cues (docs/recipe.md); without it the fusion is untrained and the fused embedding is a
    # random projection of both streams' features.
    weight: float = 0.0
    temperature: float = 0.5


@dataclass(frozen=True)
class XDCConfig:
    weight: float = 0.0
    variant: Literal["cross", "self", "multi", "concat"] = "cross"
    num_clusters: int = 16
    recluster_every_epochs: int = 1
    kmeans_iters: int = 20
    # Seeds k-means++ and the classifier-head re-initialisation (mixed with the clustering round).
    seed: int = 0


@dataclass(frozen=True)
class ClusterContrastiveConfig:
    weight: float = 0.0
    num_clusters: int = 16
    temperature: float = 1.0
    entropy_weight: float = 1.0


@dataclass(frozen=True)
class SimCLRConfig:
    weight: float = 0.0
    # Each modality's projection against its own other view (needs two augmented views a clip).
    modalities: tuple[str, ...] = ("video",)
    temperature: float = 0.5


@dataclass(frozen=True)
class DCCAConfig:
    weight: float = 0.0
    # Number of canonical correlations maximised; None = all (embed_dim).
    top_k: int | None = None
    eps: float = 1e-3


@dataclass(frozen=True)
class SDLConfig:
    weight: float = 0.0
    decorrelation_weight: float = 1.0
    momentum: float = 0.9


@dataclass(frozen=True)
class ObjectivesConfig:
    """The loss mixture L = sum_i weight_i * L_i (avray.objectives)."""

    infonce: InfoNCEConfig = field(default_factory=InfoNCEConfig)
    fused: FusedContrastiveConfig = field(default_factory=FusedContrastiveConfig)
    xdc: XDCConfig = field(default_factory=XDCConfig)
    cluster_contrastive: ClusterContrastiveConfig = field(default_factory=ClusterContrastiveConfig)
    simclr: SimCLRConfig = field(default_factory=SimCLRConfig)
    dcca: DCCAConfig = field(default_factory=DCCAConfig)
    sdl: SDLConfig = field(default_factory=SDLConfig)
    # Gather embeddings across workers so negatives/statistics span the global batch.
    gather_distributed: bool = True
    # What a non-finite loss does: "raise" names the term; "skip" drops the step and counts it.
    nonfinite: Literal["raise", "skip"] = "raise"
    # Sections of objectives registered outside this file (register_objective_section), by
    # name; in YAML they sit beside the others (objectives.<name>.weight, ...).
    registered: Mapping[str, Any] = field(default_factory=dict)

    def sections(self) -> dict[str, Any]:
        """Every objective's section, by name."""
        built_in = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if dataclasses.is_dataclass(getattr(self, f.name))
        }
        return {**built_in, **self.registered}

    def enabled(self) -> dict[str, Any]:
        """Objectives with a non-zero weight, by name."""
        return {name: section for name, section in self.sections().items() if section.weight != 0}

    def validate(self) -> None:
        terms = list(self.sections())
        for name in terms:
            _check(getattr(self.sections()[name], "weight", -1) >= 0, f"objectives.{name}.weight must be >= 0")
        _check(bool(self.enabled()), f"at least one of objectives.{{{','.join(terms)}}}.weight must be > 0")
        _check(self.infonce.temperature > 0, "objectives.infonce.temperature must be > 0")
        _check(self.fused.temperature > 0, "objectives.fused.temperature must be > 0")
        _check(
            0 < self.infonce.min_temperature <= self.infonce.temperature,
            "objectives.infonce.min_temperature must be in (0, objectives.infonce.temperature]",
        )
        _check(self.xdc.num_clusters >= 2, "objectives.xdc.num_clusters must be >= 2")
        _check(self.xdc.recluster_every_epochs >= 1, "objectives.xdc.recluster_every_epochs must be >= 1")
        _check(self.xdc.kmeans_iters >= 1, "objectives.xdc.kmeans_iters must be >= 1")
        _check(self.cluster_contrastive.num_clusters >= 2, "objectives.cluster_contrastive.num_clusters must be >= 2")
        _check(self.cluster_contrastive.temperature > 0, "objectives.cluster_contrastive.temperature must be > 0")
        _check(
            self.cluster_contrastive.entropy_weight >= 0, "objectives.cluster_contrastive.entropy_weight must be >= 0"
        )
        _check(self.simclr.temperature > 0, "objectives.simclr.temperature must be > 0")
        _check(
            bool(self.simclr.modalities) and set(self.simclr.modalities) <= {"video", "audio"},
            "objectives.simclr.modalities must be a non-empty list of video, audio",
        )
        _check(self.dcca.top_k is None or self.dcca.top_k >= 1, "objectives.dcca.top_k must be >= 1 or null")
        _check(self.dcca.eps > 0, "objectives.dcca.eps must be > 0")
        _check(0.0 <= self.sdl.momentum < 1.0, "objectives.sdl.momentum must be in [0, 1)")
        _check(self.sdl.decorrelation_weight >= 0, "objectives.sdl.decorrelation_weight must be >= 0")


@dataclass(frozen=True)
class TrainConfig:
    """Ray Train pretraining (avray.train)."""

    epochs: int = 15
    # Global batch size, split evenly over workers.
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    grad_clip: float = 1.0
    # Clips each worker holds to shuffle its stream (reseeded every epoch); about 0.3 MB a clip
    # at the default clip shape. 0 disables (clips then arrive in decode order).
    shuffle_buffer_clips: int = 512
    # Read (or decode) the training and held-out clips once, into Ray's object store, instead
    # of again every epoch. auto: when they take at most half of the object store and their
    # windows are fixed (not data.sampling: random on videos).
    cache_clips: Literal["auto", "always", "never"] = "auto"
    # None: one worker per GPU when GPUs exist, else one per CPU of the cluster.
    num_workers: int | None = None
    use_gpu: bool | None = None
    # CPUs reserved per training worker; the rest of the cluster's CPUs decode video.
    cpus_per_worker: float = 1.0
    # PyTorch threads per worker (None: the CPUs it reserves, or with the clips cached in the
    # object store, its share of all the cluster's CPUs: no decoding runs beside training then).
    threads_per_worker: int | None = None
    # PACK fills nodes one by one; SPREAD puts workers on as many nodes as possible.
    placement_strategy: Literal["PACK", "SPREAD"] = "PACK"
    mixed_precision: bool = True
    max_failures: int = 3
    seed: int = 0

    def validate(self) -> None:
        _check(self.epochs >= 1, "train.epochs must be >= 1")
        _check(self.batch_size >= 2, "train.batch_size must be >= 2")
        _check(self.lr > 0, "train.lr must be > 0")
        _check(self.weight_decay >= 0, "train.weight_decay must be >= 0")
        _check(self.warmup_epochs >= 0, "train.warmup_epochs must be >= 0")
        _check(self.shuffle_buffer_clips >= 0, "train.shuffle_buffer_clips must be >= 0")
        _check(self.grad_clip >= 0, "train.grad_clip must be >= 0 (0 disables clipping)")
        _check(self.num_workers is None or self.num_workers >= 1, "train.num_workers must be >= 1 or null")
        _check(self.cpus_per_worker > 0, "train.cpus_per_worker must be > 0")
        _check(
            self.threads_per_worker is None or self.threads_per_worker >= 1,
            "train.threads_per_worker must be >= 1 or null",
        )
        _check(self.max_failures >= -1, "train.max_failures must be >= -1 (-1 = retry forever)")


@dataclass(frozen=True)
class TuneConfig:
    """Ray Tune search over the loss mixture (avray.tune): the genome is the λ in [0, 1] of
    every objective enabled in ``objectives`` (optionally also the learning rate and the
    InfoNCE temperature)."""

    scheduler: Literal["pbt", "pb2", "asha", "fifo"] = "pbt"
    search_alg: Literal["random", "optuna", "hyperopt"] = "random"
    num_samples: int = 4
    # Epochs between PBT/PB2 exploit-and-explore rounds.
    perturbation_interval: int = 1
    # PBT: the bottom fraction of trials copies the top fraction (0 < f <= 0.5).
    quantile_fraction: float = 0.25
    # PBT/PB2: wait for every trial at each round (fair with few trials or few resources).
    synchronous: bool = True
    # ASHA: epochs before the first cut, and the fraction kept (1/reduction_factor) at each rung.
    grace_period: int = 1
    reduction_factor: float = 2.0
    search_lr: bool = False
    search_temperature: bool = False
    fitness: Literal["zipf", "knn"] = "zipf"
    zipf_clusters: int = 16
    zipf_exponent: float = 1.0
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0

    def validate(self) -> None:
        _check(self.num_samples >= 1, "tune.num_samples must be >= 1")
        _check(self.perturbation_interval >= 1, "tune.perturbation_interval must be >= 1")
        _check(0 < self.quantile_fraction <= 0.5, "tune.quantile_fraction must be in (0, 0.5]")
        # PBT and PB2 exploit ceil(trials x quantile_fraction) trials (at most half) each round:
        # one of two at any fraction, and none of one, which would be a plain run called PBT.
        _check(
            self.scheduler not in ("pbt", "pb2") or self.num_samples >= 2,
            f"tune.scheduler={self.scheduler} with tune.num_samples={self.num_samples} never exploits: a lone "
            "trial has no better trial to copy; set tune.num_samples >= 2, or tune.scheduler=fifo for one mixture",
        )
        _check(self.grace_period >= 1, "tune.grace_period must be >= 1")
        _check(self.reduction_factor > 1, "tune.reduction_factor must be > 1")
        _check(self.zipf_clusters >= 2, "tune.zipf_clusters must be >= 2")
        _check(self.zipf_exponent > 0, "tune.zipf_exponent must be > 0")
        _check(self.cpus_per_trial > 0, "tune.cpus_per_trial must be > 0")
        _check(self.gpus_per_trial >= 0, "tune.gpus_per_trial must be >= 0")
        # A trial trains on one device (avray.tune.trainable): a second GPU would sit idle.
        _check(
            self.gpus_per_trial <= 1,
            f"tune.gpus_per_trial={self.gpus_per_trial:g}: a trial trains on one GPU, so more would sit idle; "
            "use 1 (or a fraction to share one), and more trials to use more GPUs",
        )
        _check(
            self.scheduler not in ("pbt", "pb2") or self.search_alg == "random",
            f"tune.scheduler={self.scheduler} evolves its own population: use tune.search_alg=random "
            "(optuna and hyperopt go with the asha or fifo schedulers)",
        )


def _check_range(name: str, bounds: tuple[float, ...], low: float, high: float) -> None:
    _check(
        len(bounds) == 2 and low <= bounds[0] <= bounds[1] <= high,
        f"{name} must be two numbers [min, max] with {low:g} <= min <= max <= {high:g}",
    )


def _check_probability(name: str, value: float) -> None:
    _check(0.0 <= value <= 1.0, f"{name} must be in [0, 1]")


@dataclass(frozen=True)
class VideoAugmentConfig:
    """Per-clip random video ops (avray.models.augment), the same for every frame of a clip."""

    # Random resized crop, back to the frame size: area fraction and aspect ratio ranges.
    crop_scale: tuple[float, float] = (0.6, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 1.3333)
    flip_p: float = 0.5
    # Colour jitter, applied with jitter_p: factors drawn from [1 - x, 1 + x] (hue: a rotation
    # of the chroma plane by up to hue * 360 degrees).
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_p: float = 0.2
    # Temporal jitter: the clip's frames re-read from a start moved by up to frame_offset
    # frames, at a speed in [1 - rate_jitter, 1 + rate_jitter] (edges repeat).
    frame_offset: int = 2
    rate_jitter: float = 0.2

    def validate(self) -> None:
        _check_range("augment.video.crop_scale", self.crop_scale, 0.01, 1.0)
        _check_range("augment.video.crop_ratio", self.crop_ratio, 0.1, 10.0)
        for name in ("flip_p", "jitter_p", "grayscale_p"):
            _check_probability(f"augment.video.{name}", getattr(self, name))
        for name in ("brightness", "contrast", "saturation"):
            _check(0.0 <= getattr(self, name) < 1.0, f"augment.video.{name} must be in [0, 1)")
        _check(0.0 <= self.hue <= 0.5, "augment.video.hue must be in [0, 0.5]")
        _check(self.frame_offset >= 0, "augment.video.frame_offset must be >= 0")
        _check(0.0 <= self.rate_jitter < 1.0, "augment.video.rate_jitter must be in [0, 1)")


@dataclass(frozen=True)
class AudioAugmentConfig:
    """Per-clip random audio ops (avray.models.augment); the SpecAugment masks act on the
    log-mel inside the model."""

    # Gain drawn from [-gain_db, +gain_db] dB.
    gain_db: float = 6.0
    # White noise added with noise_p, at an SNR drawn from snr_db.
    noise_p: float = 0.5
    snr_db: tuple[float, float] = (5.0, 30.0)
    # Circular shift of the waveform by up to time_shift_s seconds either way.
    time_shift_s: float = 0.2
    # SpecAugment: masks of up to freq_mask_bins mel bands / time_mask_frames STFT frames.
    # Off by default: with short training runs they slowed learning more than they helped
    # (docs/recipe.md); 2 x 8 bands and 2 x 20 frames is a common setting.
    freq_masks: int = 0
    freq_mask_bins: int = 8
    time_masks: int = 0
    time_mask_frames: int = 20
    # Another clip of the batch mixed in with mix_p, at up to mix_level of this clip's RMS.
    mix_p: float = 0.0
    mix_level: float = 0.3

    def validate(self) -> None:
        _check(self.gain_db >= 0, "augment.audio.gain_db must be >= 0")
        _check_probability("augment.audio.noise_p", self.noise_p)
        _check_range("augment.audio.snr_db", self.snr_db, -20.0, 100.0)
        _check(self.time_shift_s >= 0, "augment.audio.time_shift_s must be >= 0")
        for name in ("freq_masks", "freq_mask_bins", "time_masks", "time_mask_frames"):
            _check(getattr(self, name) >= 0, f"augment.audio.{name} must be >= 0")
        _check_probability("augment.audio.mix_p", self.mix_p)
        _check(0.0 <= self.mix_level <= 1.0, "augment.audio.mix_level must be in [0, 1]")


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation on the training device (avray.models.augment): off at validation,
    evaluation and embedding. ``enabled: false`` turns every op off, SpecAugment included."""

    enabled: bool = True
    video: VideoAugmentConfig = field(default_factory=VideoAugmentConfig)
    audio: AudioAugmentConfig = field(default_factory=AudioAugmentConfig)
    # Mixed with the worker's rank and the step: every step's draws are reproducible on resume.
    seed: int = 0

    def validate(self) -> None:
        self.video.validate()
        self.audio.validate()


# Kinetics-400 RGB statistics, which torchvision's video models normalise with.
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)


@dataclass(frozen=True)
class FrozenVideoConfig:
    """A frozen pretrained video encoder and the input it expects (avray.models.frozen).

    ``path``: a TorchScript file, or (with ``architecture``) a state dict; local or s3://.
    ``architecture``: ``avray`` (avray's video encoder, shaped by the ``model`` section) or
    ``torchvision:<name>`` (e.g. ``torchvision:r2plus1d_18``; needs torchvision installed).
    ``strip``: an attribute replaced by identity, e.g. ``fc`` to drop a classifier.
    ``output_key``: for a module returning a dict. Frames reach the module in ``layout``,
    resized to ``frame_size`` (null: as decoded), and, with ``normalize``, scaled to [0, 1]
    and standardised by ``mean``/``std``; without, as uint8 (avray's encoder takes uint8 BTHWC).
    """

    path: str | None = None
    architecture: str | None = None
    strip: str | None = None
    output_key: str | None = None
    layout: Literal["BCTHW", "BTCHW", "BTHWC"] = "BCTHW"
    frame_size: int | None = None
    normalize: bool = True
    mean: tuple[float, ...] = KINETICS_MEAN
    std: tuple[float, ...] = KINETICS_STD

    def validate(self) -> None:
        _check_architecture("frozen.video", self.architecture, ("avray", "torchvision:"))
        _check(self.frame_size is None or self.frame_size >= 1, "frozen.video.frame_size must be >= 1 or null")
        _check(
            len(self.mean) == 3 and len(self.std) == 3 and all(v > 0 for v in self.std),
            "frozen.video.mean and frozen.video.std need 3 values each (std > 0)",
        )


@dataclass(frozen=True)
class FrozenAudioConfig:
    """A frozen pretrained audio encoder and its input: the mono waveform [B, S] at
    ``data.sample_rate``, or a log-mel spectrogram [B, 1, n_mels, frames] (``input: log_mel``).
    ``architecture``: ``avray`` (avray's audio encoder, takes the waveform) or
    ``torchaudio:<builder>`` (e.g. ``torchaudio:wav2vec2_base``). Other fields as for video."""

    path: str | None = None
    architecture: str | None = None
    strip: str | None = None
    output_key: str | None = None
    input: Literal["waveform", "log_mel"] = "waveform"
    n_mels: int = 64
    n_fft: int = 400
    hop_length: int = 160

    def validate(self) -> None:
        _check_architecture("frozen.audio", self.architecture, ("avray", "torchaudio:"))
        _check(
            self.n_mels >= 1 and self.n_fft >= 2 and self.hop_length >= 1,
            "frozen.audio.n_mels, n_fft and hop_length must be positive",
        )


@dataclass(frozen=True)
class FrozenConfig:
    """Frozen encoders for ``workflows/extract_features.py``; pretraining then trains only the
    heads and the fusion on the features. ``tokens``: keep each encoder's token sequence
    [N, D] per clip (what cross-attention fusion attends over) instead of the pooled [D]."""

    video: FrozenVideoConfig = field(default_factory=FrozenVideoConfig)
    audio: FrozenAudioConfig = field(default_factory=FrozenAudioConfig)
    tokens: bool = False
    batch_size: int = 32

    def validate(self) -> None:
        self.video.validate()
        self.audio.validate()
        _check(self.batch_size >= 1, "frozen.batch_size must be >= 1")


def _check_architecture(section: str, architecture: str | None, prefixes: tuple[str, ...]) -> None:
    _check(
        architecture is None
        or architecture == "avray"
        or any(architecture.startswith(p) and len(architecture) > len(p) for p in prefixes if p.endswith(":")),
        f"{section}.architecture must be null (TorchScript), avray, or {prefixes[1]}<name>; got {architecture!r}",
    )


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow (avray.tracking)."""

    # None: $MLFLOW_TRACKING_URI, else sqlite:///<output>/mlflow.db.
    tracking_uri: str | None = None
    experiment: str = "avray"
    run_name: str | None = None
    # Register each pretraining run's model (avray.mlflow_model) under this name in MLflow's
    # Model Registry; evaluate.py and embed.py then take --checkpoint models:/NAME/VERSION.
    register_model: str | None = None
    # CPU, memory, disk and network (and GPU, with nvidia-ml-py) of each training worker, every
    # this many seconds, as MLflow's system/ metrics; 0 turns them off.
    system_metrics_interval_s: float = 10.0

    def validate(self) -> None:
        _check(self.system_metrics_interval_s >= 0, "tracking.system_metrics_interval_s must be >= 0")


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objectives: ObjectivesConfig = field(default_factory=ObjectivesConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    frozen: FrozenConfig = field(default_factory=FrozenConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def validate(self) -> Config:
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if hasattr(section, "validate"):
                section.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["objectives"].update(values["objectives"].pop("registered"))
        return values

    def to_yaml(self) -> str:
        return yaml.safe_dump(_plain(self.to_dict()), sort_keys=False)

    def flat(self) -> dict[str, Any]:
        """``{"train.lr": 0.001, ...}``: the form MLflow params and Tune configs take."""
        out: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, Mapping):
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            else:
                out[prefix] = value

        walk("", _plain(self.to_dict()))
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Turn a YAML/CLI value into the annotated type, or raise ConfigError naming ``key``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return _build(annotation, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{key}: cannot parse {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} must be one of {', '.join(map(repr, args))}; got {value!r}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, Sequence):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return tuple(_coerce(v, args[0], f"{key}[]") for v in value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{key} must be an integer, got {value!r}") from None
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{key} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        return number
    if annotation is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported type {annotation!r}")


# Config sections of objectives registered outside avray.config, by name.
_OBJECTIVE_SECTIONS: dict[str, type] = {}


def register_objective_section(name: str, section: type) -> None:
    """Let ``objectives.<name>`` hold ``section`` (a frozen dataclass with a ``weight``)."""
    if name in {f.name for f in dataclasses.fields(ObjectivesConfig)}:
        raise ValueError(f"objectives.{name} is a built-in section")
    if not dataclasses.is_dataclass(section) or "weight" not in {f.name for f in dataclasses.fields(section)}:
        raise ValueError(f"the section of objective {name!r} must be a dataclass with a 'weight' field")
    _OBJECTIVE_SECTIONS[name] = section


def _build(cls: type, values: Mapping[str, Any], prefix: str = "") -> Any:
    if cls is ObjectivesConfig:
        values = dict(values)
        registered = {
            name: _build(_OBJECTIVE_SECTIONS[name], values.pop(name), f"{prefix}.{name}")
            for name in list(values)
            if name in _OBJECTIVE_SECTIONS
        }
        values["registered"] = registered
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(key) for key in set(values) - names)  # YAML keys may be numbers
    if unknown:
        where = f"{prefix}." if prefix else ""
        valid = names - {"registered"} | set(_OBJECTIVE_SECTIONS) if cls is ObjectivesConfig else names
        raise ConfigError(
            f"unknown config key {where}{unknown[0]}; valid keys under "
            f"{prefix or 'the top level'}: {', '.join(sorted(valid))}"
        )
    kwargs = {
        name: value
        if name == "registered" and cls is ObjectivesConfig
        else _coerce(value, hints[name], f"{prefix}.{name}" if prefix else name)
        for name, value in values.items()
    }
    return cls(**kwargs)


class _DecimalLoader(yaml.SafeLoader):
    """YAML 1.1 without its non-decimal integers: ``0x10`` (16), ``0o10``, ``0b11`` and ``1:30``
    (sexagesimal: 90) stay strings, which an integer setting refuses, instead of numbers nobody
    meant."""


_DecimalLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:int"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_DecimalLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"), list("-+0123456789")
)


def _load_yaml(text: str) -> Any:
    loader = _DecimalLoader(text)  # a SafeLoader with one resolver less
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set expects key=value (e.g. train.epochs=5), got {item!r}")
    key, raw = item.split("=", 1)
    # YAML parsing gives numbers, booleans, null and lists their natural types.
    try:
        value = _load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def _read_config_file(path: Path) -> dict[str, Any]:
    """The mapping in a YAML config file; any reason it cannot be had is a one-line ConfigError."""
    try:
        loaded = _load_yaml(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config file {path}: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(err)}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return loaded


def _yaml_problem(err: yaml.YAMLError) -> str:
    """What PyYAML found wrong and where, in one line (its own message spans several, with a caret)."""
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return " ".join(str(getattr(err, "problem", None) or err).split()) + where


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Build a validated Config from an optional YAML file and ``key=value`` overrides."""
    values = _read_config_file(Path(path)) if path is not None else {}
    for item in overrides:
        keys, value = _parse_override(item)
        _set_dotted(values, keys, value, f"--set {item}", create=True)
    return _build(Config, values).validate()


def _set_dotted(values: dict, keys: Sequence[str], value: Any, what: str, create: bool) -> None:
    """``values[k1][k2]...[kn] = value``. ``create``: add missing sections and keys (a YAML
    file or ``--set`` may name any key, which ``_build`` then checks); else each must exist."""
    node = values
    for key in keys[:-1]:
        if create:
            node.setdefault(key, {})
        if not isinstance(node.get(key), dict):
            raise ConfigError(f"{what}: {key} is not a section" if create else f"unknown config key {what}")
        node = node[key]
    if not create and keys[-1] not in node:
        raise ConfigError(f"unknown config key {what}")
    node[keys[-1]] = value


def with_overrides(config: Config, changes: Mapping[str, Any]) -> Config:
    """A copy of ``config`` with dotted keys changed (``{"train.lr": 0.01}``), revalidated."""
    values = config.to_dict()
    for dotted, value in changes.items():
        _set_dotted(values, dotted.split("."), value, dotted, create=False)
    return _build(Config, values).validate()


def config_from_dict(values: Mapping[str, Any]) -> Config:
    """Inverse of ``Config.to_dict``: how configs travel to Ray workers and back from checkpoints."""
    return _build(Config, values).validate()
