import dataclasses

import pytest
import torch

from avray.models import ConcatMLPFusion, CrossAttentionFusion, EncoderOutput, build_fusion
from tests.models.clips import SMALL_MODEL

DIMS = {"video": 16, "audio": 12}


def encoder_outputs(batch: int, n_video: int = 10, n_audio: int = 7) -> tuple[EncoderOutput, EncoderOutput]:
    video_tokens = torch.randn(batch, n_video, DIMS["video"], requires_grad=True)
    audio_tokens = torch.randn(batch, n_audio, DIMS["audio"], requires_grad=True)
    return (EncoderOutput(video_tokens.mean(1), video_tokens), EncoderOutput(audio_tokens.mean(1), audio_tokens))


@pytest.mark.parametrize("fusion, cls", [("concat_mlp", ConcatMLPFusion), ("cross_attention", CrossAttentionFusion)])
def test_build_fusion_picks_the_configured_module_and_gives_one_joint_embedding(fusion, cls):
    module = build_fusion(dataclasses.replace(SMALL_MODEL, fusion=fusion), DIMS)
    assert isinstance(module, cls)
    assert module.out_dim == SMALL_MODEL.fused_dim
    video, audio = encoder_outputs(batch=3)
    fused = module.train()(video, audio)
    assert fused.shape == (3, SMALL_MODEL.fused_dim)
    fused.square().sum().backward()
    # The joint embedding depends on both modalities.
    assert video.tokens.grad.abs().sum() > 0 and audio.tokens.grad.abs().sum() > 0
    assert module.eval()(*encoder_outputs(batch=1)).shape == (1, SMALL_MODEL.fused_dim)


def test_concat_sees_only_pooled_features_while_cross_attention_sees_tokens():
    video, audio = encoder_outputs(batch=2)
    # Same token means (hence same pooled features), different tokens.
    shuffle = torch.randn_like(audio.tokens)
    audio_rearranged = EncoderOutput(audio.pooled, audio.tokens + shuffle - shuffle.mean(1, keepdim=True))
    concat = ConcatMLPFusion(DIMS["video"], DIMS["audio"], fused_dim=8).eval()
    cross = CrossAttentionFusion(DIMS["video"], DIMS["audio"], fused_dim=8, num_heads=2).eval()
    with torch.no_grad():
        torch.testing.assert_close(concat(video, audio_rearranged), concat(video, audio))
        assert not torch.allclose(cross(video, audio_rearranged), cross(video, audio), atol=1e-4)


def test_cross_attention_handles_token_counts_that_differ_between_modalities():
    module = CrossAttentionFusion(DIMS["video"], DIMS["audio"], fused_dim=8, num_heads=2).eval()
    for n_video, n_audio in [(1, 50), (64, 1), (3, 3)]:
        assert module(*encoder_outputs(batch=2, n_video=n_video, n_audio=n_audio)).shape == (2, 8)
