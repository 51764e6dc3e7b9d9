"""The papers' backbones from the registry: R(2+1)D-18 for video, ResNet-18 on log-mel for
audio; their widths come from the builders, and the whole model trains a step on the CPU."""

import dataclasses

import pytest
import torch

from avray.config import ConfigError, ObjectivesConfig
from avray.models import AUDIO_ENCODERS, VIDEO_ENCODERS, build_model, check_model_config, encoder_widths
from avray.objectives import LossMixture
from tests.models.clips import SMALL_DATA, SMALL_MODEL, random_clips

PAPERS = dataclasses.replace(SMALL_MODEL, video_encoder="r2plus1d_18", audio_encoder="resnet18")


def test_the_registry_holds_the_small_and_the_papers_encoders():
    assert {"avray", "r2plus1d_18"} <= set(VIDEO_ENCODERS) and {"avray", "resnet18"} <= set(AUDIO_ENCODERS)
    assert encoder_widths(PAPERS) == {"video": 512, "audio": 512}
    assert encoder_widths(SMALL_MODEL) == {"video": 16, "audio": 16}  # width 8, doubled once


def test_r2plus1d_18_and_resnet18_audio_train_a_step_with_the_widths_they_declare():
    torch.manual_seed(0)
    model = build_model(PAPERS, SMALL_DATA)
    assert model.output_dims["video_features"] == 512 and model.output_dims["audio_features"] == 512
    mixture = LossMixture.from_config(ObjectivesConfig(), model.output_dims)
    optimizer = torch.optim.AdamW([*model.parameters(), *mixture.parameters()], lr=1e-3)
    video, audio = random_clips(SMALL_DATA, batch=4)
    outputs = model(video, audio)
    assert outputs["video_features"].shape == (4, 512) and outputs["audio_features"].shape == (4, 512)
    before = model.video_encoder.stages[0][0].weight.detach().clone()
    loss = mixture(outputs).total
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and not torch.equal(before, model.video_encoder.stages[0][0].weight)


def test_an_unknown_encoder_name_is_a_config_error_naming_the_known_ones():
    with pytest.raises(ConfigError, match=r"model.video_encoder='r3d' is not registered; known: .*r2plus1d_18"):
        check_model_config(dataclasses.replace(SMALL_MODEL, video_encoder="r3d"), SMALL_DATA)
