import pytest
import torch

from avray.config import DataConfig, ModelConfig
from avray.models import VideoEncoder
from avray.models.video import KINETICS_MEAN, KINETICS_STD
from tests.models.clips import SMALL_DATA, random_clips


def test_default_clip_gives_pooled_features_and_a_2x2x2_token_grid():
    encoder = VideoEncoder(ModelConfig())
    video, _ = random_clips(DataConfig(), batch=2)
    pooled, tokens = encoder(video)
    assert encoder.out_dim == 256  # 32 channels, doubled at each of 4 stages
    assert pooled.shape == (2, 256)
    assert tokens.shape == (2, 2 * 2 * 2, 256)


@pytest.mark.parametrize("width, depth, grid", [(8, 1, (8, 8, 8)), (8, 2, (4, 4, 4)), (4, 3, (2, 2, 2))])
def test_width_and_depth_set_feature_size_and_grid(width, depth, grid):
    encoder = VideoEncoder(ModelConfig(video_width=width, video_depth=depth))
    video, _ = random_clips(SMALL_DATA, batch=2)  # 8 frames of 32×32
    pooled, tokens = encoder(video)
    assert encoder.out_dim == width * 2 ** (depth - 1)
    assert pooled.shape == (2, encoder.out_dim)
    assert tokens.shape == (2, grid[0] * grid[1] * grid[2], encoder.out_dim)


def test_uint8_frames_are_standardised_per_clip_inside_the_encoder():
    encoder = VideoEncoder(ModelConfig(video_width=8, video_depth=2)).eval()
    video, _ = random_clips(SMALL_DATA, batch=2)
    frames = video.double().permute(0, 4, 1, 2, 3) / 255.0
    mean = frames.mean(dim=(2, 3, 4), keepdim=True)
    std = frames.std(dim=(2, 3, 4), keepdim=True)
    by_hand = (frames - mean) / (std + 1e-3)
    with torch.no_grad():
        expected = encoder.backbone(by_hand.float()).flatten(2).mean(-1)
        pooled, _ = encoder(video)
    torch.testing.assert_close(pooled, expected, rtol=1e-4, atol=1e-4)
    # A clip's global tint and contrast do not change what the encoder sees.
    tinted = (video.float() * 0.5 + 40).round().clamp(0, 255).to(torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(encoder(tinted).pooled, pooled, rtol=0.05, atol=0.05)
    flat = torch.zeros_like(video)
    with torch.no_grad():
        assert torch.isfinite(encoder(flat).pooled).all()


def test_uint8_frames_are_normalised_with_dataset_statistics_when_asked():
    encoder = VideoEncoder(ModelConfig(video_width=8, video_depth=2, video_norm="dataset")).eval()
    video, _ = random_clips(SMALL_DATA, batch=2)
    mean = torch.tensor(KINETICS_MEAN).view(1, 3, 1, 1, 1)
    std = torch.tensor(KINETICS_STD).view(1, 3, 1, 1, 1)
    by_hand = (video.double().permute(0, 4, 1, 2, 3) / 255.0 - mean.double()) / std.double()
    with torch.no_grad():
        expected = encoder.backbone(by_hand.float()).flatten(2).mean(-1)
        pooled, _ = encoder(video)
    torch.testing.assert_close(pooled, expected, rtol=1e-5, atol=1e-5)


def test_float_frames_are_rejected_rather_than_normalised_twice():
    encoder = VideoEncoder(ModelConfig(video_width=8, video_depth=1))
    video, _ = random_clips(SMALL_DATA, batch=2)
    with pytest.raises(ValueError, match="uint8"):
        encoder(video.float())


def test_normalisation_constants_are_buffers_saved_with_the_model():
    encoder = VideoEncoder(ModelConfig(video_width=8, video_depth=1))
    buffers = dict(encoder.named_buffers())
    assert {"normalize.mean", "normalize.std"} <= set(buffers) <= set(encoder.state_dict())
