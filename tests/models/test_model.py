import dataclasses
import itertools

import pytest
import torch

from avray.config import ConfigError, DataConfig, ModelConfig
from avray.models import AVModel, build_model
from tests.models.clips import SMALL_DATA, SMALL_MODEL, random_clips

KEYS = {"video_features", "audio_features", "video", "audio", "fused"}
VARIANTS = [
    dataclasses.replace(SMALL_MODEL, fusion=fusion, crop_attend=crop)
    for fusion, crop in itertools.product(["concat_mlp", "cross_attention"], [False, True])
]
VARIANT_IDS = [f"{c.fusion}-crop{c.crop_attend}" for c in VARIANTS]


def assert_matches_output_dims(model: AVModel, out: dict[str, torch.Tensor], batch: int) -> None:
    assert set(model.output_dims) == KEYS and set(out) == KEYS | {"video_tokens", "audio_tokens"}
    for key, dim in model.output_dims.items():
        assert out[key].shape == (batch, dim), key
        assert torch.isfinite(out[key].float()).all(), key
    for modality in ("video", "audio"):  # token sequences [B, N, D] behind the pooled features
        tokens = out[f"{modality}_tokens"]
        assert tokens.shape[0] == batch and tokens.shape[2] == model.output_dims[f"{modality}_features"]


def test_default_model_on_the_default_clip():
    model = build_model(ModelConfig(), DataConfig()).train()
    out = model(*random_clips(DataConfig(), batch=2))
    assert model.output_dims == {"video_features": 256, "audio_features": 128, "video": 128, "audio": 128, "fused": 256}
    assert_matches_output_dims(model, out, batch=2)


@pytest.mark.parametrize("cfg", VARIANTS, ids=VARIANT_IDS)
def test_every_variant_trains_at_b2_and_evaluates_at_b1(cfg):
    model = build_model(cfg, SMALL_DATA)
    video, audio = random_clips(SMALL_DATA, batch=2)
    assert_matches_output_dims(model, model.train()(video, audio), batch=2)
    assert model.output_dims == {"video_features": 16, "audio_features": 16, "video": 16, "audio": 16, "fused": 24}
    with torch.no_grad():
        assert_matches_output_dims(model, model.eval()(video[:1], audio[:1]), batch=1)


@pytest.mark.parametrize("cfg", VARIANTS, ids=VARIANT_IDS)
def test_a_train_step_reaches_every_parameter(cfg):
    model = build_model(cfg, SMALL_DATA).train()
    out = model(*random_clips(SMALL_DATA, batch=4))
    # Random read-outs: a plain sum would hand BatchNorm-normalised outputs zero gradient.
    loss = sum((value * torch.randn_like(value)).sum() for value in out.values())
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("cfg", VARIANTS, ids=VARIANT_IDS)
def test_bf16_autocast_forward_and_backward(cfg):
    model = build_model(cfg, SMALL_DATA).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(*random_clips(SMALL_DATA, batch=4))
    assert_matches_output_dims(model, out, batch=4)
    sum(value.float().square().mean() for value in out.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_eval_is_deterministic_and_crop_is_off():
    model = build_model(dataclasses.replace(SMALL_MODEL, crop_attend=True, mask_ratio=0.5), SMALL_DATA)
    video, audio = random_clips(SMALL_DATA, batch=3)
    with torch.no_grad():
        model.train()
        first, second = model(video, audio), model(video, audio)
        # BatchNorm in train mode also uses batch statistics; the crop is what differs here.
        assert not torch.allclose(first["video_features"], second["video_features"])
        torch.testing.assert_close(first["audio_features"], second["audio_features"])
        model.eval()
        first, second = model(video, audio), model(video, audio)
    for key in KEYS:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=0)
    # In eval, one clip's outputs do not depend on the rest of the batch (no crop, running BN stats).
    with torch.no_grad():
        alone = model(video[:1], audio[:1])
    for key in KEYS:
        torch.testing.assert_close(alone[key], first[key][:1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cfg", VARIANTS, ids=VARIANT_IDS)
def test_model_moves_to_the_meta_device_whole(cfg):
    model = build_model(cfg, SMALL_DATA).to("meta")
    tensors = itertools.chain(model.parameters(), model.buffers())
    assert all(t.device.type == "meta" for t in tensors)
    video, audio = random_clips(SMALL_DATA, batch=2)
    for mode in (model.train, model.eval):
        out = mode()(video.to("meta"), audio.to("meta"))
        assert {key: (out[key].device.type, tuple(out[key].shape)) for key in model.output_dims} == {
            key: ("meta", (2, dim)) for key, dim in model.output_dims.items()
        }
        assert {out[key].device.type for key in ("video_tokens", "audio_tokens")} == {"meta"}


def test_model_round_trips_through_meta_to_cpu_via_state_dict():
    model = build_model(SMALL_MODEL, SMALL_DATA).eval()
    clone = build_model(SMALL_MODEL, SMALL_DATA).to("meta").to_empty(device="cpu")
    # Every constant (frame statistics, mel filterbank, window) must come back with the state dict.
    clone.load_state_dict(model.state_dict())
    video, audio = random_clips(SMALL_DATA, batch=2)
    with torch.no_grad():
        torch.testing.assert_close(clone.eval()(video, audio), model(video, audio))


def test_build_model_rejects_an_fft_longer_than_the_clip():
    with pytest.raises(ConfigError, match="n_fft"):
        build_model(dataclasses.replace(SMALL_MODEL, n_fft=16384), SMALL_DATA)


def test_config_rejects_crop_attend_heads_that_do_not_divide_the_video_width():
    with pytest.raises(ConfigError, match="crop_attend"):
        build_model(dataclasses.replace(SMALL_MODEL, crop_attend=True, attention_heads=3), SMALL_DATA)


def test_mismatched_batches_are_rejected():
    model = build_model(SMALL_MODEL, SMALL_DATA)
    video, audio = random_clips(SMALL_DATA, batch=2)
    with pytest.raises(ValueError, match="batch sizes"):
        model(video, audio[:1])
