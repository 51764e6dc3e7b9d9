import math

import pytest
import torch
import torch.nn.functional as F

from avray.config import ConfigError, load_config
from avray.models.outputs import ModelOutputs
from avray.objectives import LossMixture
from avray.objectives.distributed import rank
from avray.objectives.simclr import SimCLR, nt_xent_loss
from tests.objectives.tiny import DIMS, TinyModel, assert_same_step, make_inputs, rows, step


def _reference(first, second, tau):
    """SimCLR's eq. 1 written out: 2N rows, each against every row but itself."""
    u = torch.cat([F.normalize(first, dim=1), F.normalize(second, dim=1)])
    n = len(first)
    losses = []
    for k in range(2 * n):
        positive = (k + n) % (2 * n)
        others = [math.exp(float(u[k] @ u[j]) / tau) for j in range(2 * n) if j != k]
        losses.append(-float(u[k] @ u[positive]) / tau + math.log(sum(others)))
    return sum(losses) / len(losses)


def test_matches_the_written_out_formula():
    g = torch.Generator().manual_seed(0)
    first, second = (torch.randn(5, 4, generator=g, dtype=torch.float64) for _ in range(2))
    assert float(nt_xent_loss(first, second, 0.3)) == pytest.approx(_reference(first, second, 0.3), rel=1e-12)


def test_degenerate_batches():
    # One clip: its other view is the only other row, so the loss is exactly 0.
    one = torch.randn(1, 4, dtype=torch.float64)
    assert float(nt_xent_loss(one, one * 2, 0.1)) == pytest.approx(0.0, abs=1e-12)
    # All rows alike: the positive is one of 2N - 1 equal choices.
    same = torch.ones(6, 4, dtype=torch.float64)
    assert float(nt_xent_loss(same, same, 0.07)) == pytest.approx(math.log(11), rel=1e-12)
    # A zero projection is normalised to zero, not NaN.
    zero = torch.zeros(3, 4, dtype=torch.float64)
    assert math.isfinite(float(nt_xent_loss(zero, zero, 0.5)))


def _step(inputs: dict, second_view: dict, modalities=("video", "audio")) -> dict:
    return step(lambda: SimCLR(modalities, temperature=0.2), inputs, second_view=second_view)


def test_each_modality_trains_its_own_encoder_only():
    inputs, other = make_inputs(6, seed=1), make_inputs(6, seed=2)
    video_only = _step(inputs, other, modalities=("video",))
    assert set(video_only["grads"]) == {
        "video_encoder.weight",
        "video_encoder.bias",
        "video_head.weight",
        "video_head.bias",
    }
    both = _step(inputs, other)
    assert {"audio_encoder.weight", "video_encoder.weight"} <= set(both["grads"])


def test_one_view_as_validation_hands_it_is_nothing_to_learn_from():
    outputs = ModelOutputs(**TinyModel().double()(make_inputs(4)))
    assert SimCLR()(outputs) is None


def test_config_asks_for_two_views_and_refuses_unknown_modalities():
    cfg = load_config(None, ["objectives.simclr.weight=0.5", "objectives.simclr.modalities=[video, audio]"])
    mixture = LossMixture.from_config(cfg.objectives, DIMS)
    assert mixture.views == 2 and mixture.weights == {"infonce": 1.0, "simclr": 0.5}
    assert mixture.objectives["simclr"].modalities == ("video", "audio")
    assert LossMixture.from_config(load_config(None, []).objectives, DIMS).views == 1  # off by default
    with pytest.raises(ConfigError, match="objectives.simclr.modalities"):
        load_config(None, ["objectives.simclr.modalities=[depth]"])


def _job(inputs, other, sizes):
    return _step(rows(inputs, sizes, rank()), rows(other, sizes, rank()))


def test_two_ranks_equal_one_process_with_the_global_batch(two_ranks):
    inputs, other = make_inputs(9, seed=5), make_inputs(9, seed=6)
    want = _step(inputs, other)
    for got in two_ranks.run(_job, inputs, other, [4, 5]):
        assert_same_step(got, want)
