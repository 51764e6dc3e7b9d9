import pytest
import torch
from torchaudio.transforms import MelSpectrogram

from avray.config import DataConfig, ModelConfig
from avray.models import AudioEncoder
from tests.models.clips import SMALL_DATA, SMALL_MODEL, random_clips


def test_default_clip_gives_pooled_features_and_frequency_time_tokens():
    data = DataConfig()
    encoder = AudioEncoder(ModelConfig(), data.sample_rate)
    _, audio = random_clips(data, batch=2)
    assert encoder.log_mel(audio).shape == (2, 1, 64, 201)  # 64 mels, 32000 / 160 + 1 frames
    pooled, tokens = encoder(audio)
    assert encoder.out_dim == 128
    assert pooled.shape == (2, 128)
    assert tokens.shape == (2, 8 * 13, 128)


@pytest.mark.parametrize("width, depth", [(4, 1), (8, 2), (4, 4)])
def test_width_and_depth_set_feature_size(width, depth):
    encoder = AudioEncoder(
        ModelConfig(audio_width=width, audio_depth=depth, n_mels=32, n_fft=256), SMALL_DATA.sample_rate
    )
    _, audio = random_clips(SMALL_DATA, batch=2)
    pooled, tokens = encoder(audio)
    assert encoder.out_dim == width * 2 ** (depth - 1)
    assert pooled.shape == (2, encoder.out_dim)
    assert tokens.shape[0] == 2 and tokens.shape[2] == encoder.out_dim


def test_log_mel_is_computed_in_float32_under_bf16_autocast():
    encoder = AudioEncoder(SMALL_MODEL, SMALL_DATA.sample_rate)
    _, audio = random_clips(SMALL_DATA, batch=2)
    reference = encoder.log_mel(audio)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # Without the guard the mel filterbank matmul would run (and return) in bf16.
        assert MelSpectrogram(SMALL_DATA.sample_rate, n_fft=256, n_mels=32)(audio).dtype == torch.bfloat16
        under_autocast = encoder.log_mel(audio)
        pooled, _ = encoder(audio)
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, reference, rtol=0, atol=0)
    assert pooled.dtype == torch.bfloat16  # the CNN after it does use autocast
    assert torch.isfinite(pooled.float()).all()


def test_log_mel_is_standardised_per_clip_so_loudness_does_not_matter():
    encoder = AudioEncoder(SMALL_MODEL, SMALL_DATA.sample_rate)
    _, audio = random_clips(SMALL_DATA, batch=2)
    log_mel = encoder.log_mel(audio)
    torch.testing.assert_close(log_mel.mean(dim=(1, 2, 3)), torch.zeros(2), rtol=0, atol=1e-5)
    torch.testing.assert_close(log_mel.std(dim=(1, 2, 3), correction=0), torch.ones(2), rtol=0, atol=1e-3)
    torch.testing.assert_close(encoder.log_mel(5.0 * audio), log_mel, rtol=0, atol=1e-3)


def test_silence_gives_finite_features():
    encoder = AudioEncoder(SMALL_MODEL, SMALL_DATA.sample_rate).eval()
    silence = torch.zeros(2, SMALL_DATA.num_samples)
    assert torch.equal(encoder.log_mel(silence), torch.zeros_like(encoder.log_mel(silence)))
    pooled, tokens = encoder(silence)
    assert torch.isfinite(pooled).all() and torch.isfinite(tokens).all()


def test_wrong_audio_layout_is_rejected():
    encoder = AudioEncoder(SMALL_MODEL, SMALL_DATA.sample_rate)
    with pytest.raises(ValueError, match=r"\[B, S\]"):
        encoder(torch.zeros(2, 1, SMALL_DATA.num_samples))
