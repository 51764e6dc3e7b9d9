import math

import pytest
import torch

from avray.config import (
    ClusterContrastiveConfig,
    Config,
    ConfigError,
    DCCAConfig,
    FusedContrastiveConfig,
    InfoNCEConfig,
    ObjectivesConfig,
    SDLConfig,
    XDCConfig,
    with_overrides,
)
from avray.objectives import LossMixture, NonFiniteLossError
from avray.objectives.distributed import rank
from tests.objectives.tiny import DIMS, TinyModel, assert_same_step, make_inputs, rows, step

ALL = ObjectivesConfig(
    infonce=InfoNCEConfig(weight=1.0, learnable_temperature=True),
    fused=FusedContrastiveConfig(weight=0.75),
    xdc=XDCConfig(weight=0.5, num_clusters=3),
    cluster_contrastive=ClusterContrastiveConfig(weight=0.25, num_clusters=3),
    dcca=DCCAConfig(weight=0.1),
    sdl=SDLConfig(weight=2.0),
)
NAMES = ["infonce", "fused", "xdc", "cluster_contrastive", "dcca", "sdl"]


def _outputs(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(n, d, generator=g, requires_grad=True) for k, d in DIMS.items()}


def _xdc_targets(n=8):
    return {"xdc": {"video": torch.arange(n) % 3, "audio": (torch.arange(n) + 1) % 3}}


def test_holds_only_weighted_objectives():
    assert list(LossMixture.from_config(ObjectivesConfig(), DIMS).objectives) == ["infonce"]
    mixture = LossMixture.from_config(ALL, DIMS)
    assert list(mixture.objectives) == NAMES
    assert mixture.weights == {
        "infonce": 1.0,
        "fused": 0.75,
        "xdc": 0.5,
        "cluster_contrastive": 0.25,
        "dcca": 0.1,
        "sdl": 2.0,
    }


def test_total_is_the_weighted_sum_of_the_unweighted_terms():
    mixture = LossMixture.from_config(ALL, DIMS)
    result = mixture(_outputs(), _xdc_targets())
    assert list(result.terms) == NAMES and not result.skipped
    assert all(not t.requires_grad for t in result.terms.values())
    want = sum(mixture.weights[n] * float(t) for n, t in result.terms.items())
    assert result.total.item() == pytest.approx(want, rel=1e-6)
    result.total.backward()


def test_xdc_without_targets_is_left_out():
    result = LossMixture.from_config(ALL, DIMS)(_outputs())
    assert "xdc" not in result.terms and result.total is not None


def test_set_weights_changes_lambda_at_runtime():
    mixture = LossMixture.from_config(ALL, DIMS)
    outputs = _outputs()
    before = mixture(outputs, _xdc_targets())
    mixture.set_weights({"dcca": 3.0, "sdl": 0.0})
    after = mixture(outputs, _xdc_targets())
    assert "sdl" not in after.terms  # weight 0: not even computed
    want = before.total.item() + (3.0 - 0.1) * before.terms["dcca"].item() - 2.0 * before.terms["sdl"].item()
    # SDL's running covariance moved between the calls; every other term is unchanged.
    assert after.total.item() == pytest.approx(want, rel=1e-5)
    with pytest.raises(KeyError, match="unknown objective"):
        mixture.set_weights({"bogus": 1.0})
    with pytest.raises(ValueError, match="finite and >= 0"):
        mixture.set_weights({"dcca": -1.0})
    with pytest.raises(ValueError, match="rebuild"):
        LossMixture.from_config(ObjectivesConfig(), DIMS).set_weights({"dcca": 1.0})
    LossMixture.from_config(ObjectivesConfig(), DIMS).set_weights({"dcca": 0.0})


def test_weights_are_not_checkpoint_state():
    mixture = LossMixture.from_config(ALL, DIMS)
    mixture.set_weights({"infonce": 9.0})
    fresh = LossMixture.from_config(ALL, DIMS)
    fresh.load_state_dict(mixture.state_dict())
    assert fresh.weights["infonce"] == 1.0


def test_nan_raises_naming_the_term():
    outputs = _outputs()
    with torch.no_grad():
        outputs["video_features"][0, 0] = float("nan")  # only XDC's heads read the encoder features
    with pytest.raises(NonFiniteLossError, match="'xdc'") as caught:
        LossMixture.from_config(ALL, DIMS)(outputs, _xdc_targets())
    assert caught.value.term == "xdc" and math.isnan(caught.value.value)


def test_skip_mode_counts_and_returns_no_total():
    mixture = LossMixture.from_config(ObjectivesConfig(nonfinite="skip"), DIMS)
    outputs = _outputs()
    with torch.no_grad():
        outputs["audio"][1] = float("inf")
    result = mixture(outputs)
    assert result.skipped and result.total is None and mixture.skipped_steps == 1
    assert not math.isfinite(float(result.terms["infonce"]))
    assert mixture(_outputs()).total is not None and mixture.skipped_steps == 1


def test_low_precision_outputs_are_computed_in_float32_without_autocast():
    mixture = LossMixture.from_config(ALL, DIMS)
    outputs = {k: v.detach().bfloat16() for k, v in _outputs().items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = mixture(outputs, _xdc_targets())
    assert all(t.dtype == torch.float32 for t in result.terms.values())
    reference = mixture({k: v.float() for k, v in outputs.items()}, _xdc_targets())
    for name in ("infonce", "xdc", "cluster_contrastive", "dcca"):
        assert float(result.terms[name]) == pytest.approx(float(reference.terms[name]), rel=1e-5)


@pytest.mark.parametrize("kind", ["identical-rows", "one-row", "E>B", "zeros"])
def test_every_objective_stays_finite_on_degenerate_batches(kind):
    n = {"identical-rows": 6, "one-row": 1, "E>B": 3, "zeros": 4}[kind]
    g = torch.Generator().manual_seed(0)
    values = {k: torch.randn(n, d, generator=g) for k, d in DIMS.items()}
    if kind == "identical-rows":
        values = {k: v[:1].repeat(n, 1) for k, v in values.items()}
    if kind == "zeros":
        values = {k: torch.zeros_like(v) for k, v in values.items()}
    outputs = {k: v.requires_grad_() for k, v in values.items()}
    mixture = LossMixture.from_config(ALL, DIMS)
    mixture.objectives["xdc"].recluster(
        {"video_features": values["video_features"].detach(), "audio_features": values["audio_features"].detach()}
    )
    result = mixture(outputs, _xdc_targets(n))
    assert set(result.terms) == set(NAMES)
    result.total.backward()
    for tensor in list(outputs.values()) + list(mixture.parameters()):
        assert tensor.grad is None or torch.isfinite(tensor.grad).all()


def test_config_validates_the_new_keys():
    with pytest.raises(ConfigError, match="min_temperature"):
        with_overrides(Config(), {"objectives.infonce.min_temperature": 0.9})
    with pytest.raises(ConfigError, match="entropy_weight"):
        with_overrides(Config(), {"objectives.cluster_contrastive.entropy_weight": -1})
    with pytest.raises(ConfigError, match="decorrelation_weight"):
        with_overrides(Config(), {"objectives.sdl.decorrelation_weight": -1})
    assert with_overrides(Config(), {"objectives.xdc.seed": 4}).objectives.xdc.seed == 4


# --- distributed: the whole mixture, one sample per worker, and agreement on NaN ---------------


class _ReclusteredTotal(torch.nn.Module):
    """The mixture's total, XDC's pseudo-labels coming from clustering ``features`` first."""

    def __init__(self, features):
        super().__init__()
        self.mixture = LossMixture.from_config(ALL, DIMS)
        self.labels = self.mixture.objectives["xdc"].recluster(features)

    def forward(self, outputs, targets=None):
        return self.mixture(outputs, {"xdc": self.labels}).total


def _mixture_step(inputs):
    torch.manual_seed(0)  # the model step() builds
    with torch.no_grad():
        outputs = TinyModel().double()(inputs)
    features = {k: outputs[k] for k in ("video_features", "audio_features")}
    return step(lambda: _ReclusteredTotal(features), inputs)


def _nonfinite_outcome(inputs, poison: bool, mode: str):
    if poison:
        inputs = inputs | {"audio": torch.full_like(inputs["audio"], float("nan"))}
    mixture = LossMixture.from_config(
        ObjectivesConfig(infonce=InfoNCEConfig(weight=1.0), dcca=DCCAConfig(weight=1.0), nonfinite=mode), DIMS
    ).double()
    try:
        result = mixture(TinyModel().double()(inputs))
    except NonFiniteLossError as err:
        return ("raised", err.term)
    return ("skipped", result.skipped, mixture.skipped_steps)


def _mixture_job(inputs):
    shard = rows(inputs, [1, 1], rank())
    return {
        "step": _mixture_step(shard),
        # A NaN on rank 1 only.
        "raise": _nonfinite_outcome(shard, rank() == 1, "raise"),
        "skip": _nonfinite_outcome(shard, rank() == 1, "skip"),
    }


@pytest.fixture(scope="module")
def two_rank_results(two_ranks):
    inputs = make_inputs(2, seed=9)
    return inputs, two_ranks.run(_mixture_job, inputs)


def test_two_ranks_with_one_sample_each_equal_one_process(two_rank_results):
    inputs, results = two_rank_results
    want = _mixture_step(inputs)
    for result in results:
        assert_same_step(result["step"], want, rtol=1e-6)
        assert all(torch.isfinite(g).all() for g in result["step"]["grads"].values())


def test_ranks_agree_on_a_non_finite_term(two_rank_results):
    _, results = two_rank_results
    # The terms are all-reduced, so the NaN of one rank reaches both: both raise, or both skip.
    assert [r["raise"] for r in results] == [("raised", "infonce")] * 2
    assert [r["skip"] for r in results] == [("skipped", True, 1)] * 2
