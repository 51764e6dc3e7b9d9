import math

import pytest
import torch

from avray.config import FusedContrastiveConfig, ObjectivesConfig
from avray.objectives import LossMixture
from avray.objectives.distributed import rank
from avray.objectives.fused import FusedContrastive
from tests.objectives.tiny import DIMS, assert_same_step, make_inputs, rows, step


def _make():
    return FusedContrastive(DIMS["fused"], DIMS["video"], temperature=0.2)


def test_is_zero_when_the_fused_embedding_identifies_each_clip_and_log_b_when_it_cannot():
    objective = FusedContrastive(4, 4, temperature=0.01).double()
    with torch.no_grad():
        objective.head.weight.copy_(torch.eye(4))
        objective.head.bias.zero_()
    e = torch.eye(4, dtype=torch.float64)
    assert float(objective({"fused": e, "video": e, "audio": e})) < 1e-30
    same = torch.ones(4, 4, dtype=torch.float64)
    assert float(objective({"fused": same, "video": e, "audio": e})) == pytest.approx(math.log(4), rel=1e-9)


def test_trains_the_fusion_and_both_projections():
    result = step(_make, make_inputs(8))
    assert result["grads"]["objective.head.weight"].abs().sum() > 0
    for encoder in ("video_encoder.weight", "audio_encoder.weight", "video_head.weight", "audio_head.weight"):
        assert result["grads"][encoder].abs().sum() > 0, encoder


def test_is_off_in_the_default_recipe_and_joins_the_mixture_when_weighted():
    assert FusedContrastiveConfig().weight == 0  # docs/recipe.md: it taught incidental cues
    assert set(LossMixture.from_config(ObjectivesConfig(), DIMS).weights) == {"infonce"}
    weighted = ObjectivesConfig(fused=FusedContrastiveConfig(weight=0.5))
    assert LossMixture.from_config(weighted, DIMS).weights == {"infonce": 1.0, "fused": 0.5}


def _job(inputs, sizes):
    return step(_make, rows(inputs, sizes, rank()))


def test_two_ranks_equal_one_process_with_the_global_batch(two_ranks):
    inputs = make_inputs(10, seed=5)
    want = step(_make, inputs)
    for got in two_ranks.run(_job, inputs, [4, 6]):
        assert_same_step(got, want)
