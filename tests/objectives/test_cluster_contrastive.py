import math

import pytest
import torch

from avray.config import ClusterContrastiveConfig
from avray.objectives.cluster_contrastive import ClusterContrastive, cluster_contrastive_loss
from avray.objectives.distributed import rank
from tests.objectives.tiny import DIMS, assert_same_step, make_inputs, rows, step


def _reference(p_video, p_audio, tau, entropy_weight):
    """Contrastive Clustering's cluster-level loss, one cluster at a time."""
    k = p_video.shape[1]
    columns = [c / c.norm() for c in torch.cat([p_video.T, p_audio.T])]
    loss = 0.0
    for i in range(2 * k):
        positive = (i + k) % (2 * k)
        scores = {j: float(columns[i] @ columns[j]) / tau for j in range(2 * k) if j != i}
        loss += -scores[positive] + math.log(sum(math.exp(s) for s in scores.values()))
    loss /= 2 * k
    for p in (p_video, p_audio):
        q = p.sum(0) / p.sum()
        loss += entropy_weight * (math.log(k) + float((q * q.log()).sum()))
    return loss


def _soft(n, k, seed):
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).softmax(1)


def test_matches_the_written_out_formula():
    p_video, p_audio = _soft(10, 4, 0), _soft(10, 4, 1)
    got = cluster_contrastive_loss(p_video, p_audio, temperature=0.5, entropy_weight=0.7)
    assert float(got) == pytest.approx(_reference(p_video, p_audio, 0.5, 0.7), rel=1e-12)


def test_agreeing_balanced_hard_clusters_have_the_known_minimum():
    k, tau = 4, 0.5
    one_hot = torch.eye(k, dtype=torch.float64).repeat(3, 1)  # 12 clips, 3 per cluster
    got = cluster_contrastive_loss(one_hot, one_hot, temperature=tau, entropy_weight=1.0)
    # Column i matches its partner (cosine 1) and is orthogonal to the other 2K − 2; entropy term 0.
    want = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + 2 * k - 2))
    assert float(got) == pytest.approx(want, rel=1e-12)


def test_entropy_term_penalises_collapse():
    k = 4
    collapsed = torch.zeros(6, k, dtype=torch.float64)
    collapsed[:, 0] = 1
    without = cluster_contrastive_loss(collapsed, collapsed, entropy_weight=0.0)
    with_entropy = cluster_contrastive_loss(collapsed, collapsed, entropy_weight=1.0)
    assert float(with_entropy - without) == pytest.approx(2 * math.log(k), rel=1e-9)


@pytest.mark.parametrize("scale", [1.0, 1e4], ids=["soft", "saturated-softmax"])
def test_gradients_reach_the_heads_and_stay_finite(scale):
    objective = ClusterContrastive({"video": 4, "audio": 4}, num_clusters=3)
    g = torch.Generator().manual_seed(0)
    outputs = {"video": torch.randn(8, 4, generator=g) * scale, "audio": torch.randn(8, 4, generator=g) * scale}
    loss = objective(outputs)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in objective.parameters())
    if scale == 1.0:
        assert objective.heads["video"].weight.grad.abs().sum() > 0


def test_from_config():
    objective = ClusterContrastive.from_config(ClusterContrastiveConfig(num_clusters=5, temperature=0.3), DIMS, True)
    assert objective.heads["audio"].out_features == 5 and objective.temperature == 0.3


# --- distributed ----------------------------------------------------------------------------


def _make():
    return ClusterContrastive({"video": DIMS["video"], "audio": DIMS["audio"]}, num_clusters=3, temperature=0.5)


def _job(inputs, sizes):
    return step(_make, rows(inputs, sizes, rank()))


@pytest.mark.parametrize("sizes", [[5, 5], [1, 1]], ids=["5+5", "one-per-rank"])
def test_two_ranks_equal_one_process_with_the_global_batch(two_ranks, sizes):
    inputs = make_inputs(sum(sizes), seed=2)
    want = step(_make, inputs)
    for result in two_ranks.run(_job, inputs, sizes):
        assert_same_step(result, want)
