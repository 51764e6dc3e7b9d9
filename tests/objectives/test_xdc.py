import numpy as np
import pytest
import torch
import torch.nn.functional as F

from avray.config import XDCConfig
from avray.objectives.base import VideoEmbeddings
from avray.objectives.distributed import rank
from avray.objectives.xdc import VARIANT_TERMS, XDC
from tests.objectives.tiny import DIMS, assert_same_step, make_inputs, rows, step

# scikit-learn is imported inside the tests that use it: the two-rank workers import this
# module for its jobs and would otherwise pay seconds for it.

FEATURE_DIMS = {"video": DIMS["video_features"], "audio": DIMS["audio_features"]}


def _planted(n: int, seed: int = 0):
    """Video features clustered by one labelling, audio features by another."""
    g = torch.Generator().manual_seed(seed)
    video_truth, audio_truth = torch.randint(0, 3, (n,), generator=g), torch.randint(0, 3, (n,), generator=g)
    video = torch.randn(3, FEATURE_DIMS["video"], generator=g)[video_truth] * 5
    audio = torch.randn(3, FEATURE_DIMS["audio"], generator=g)[audio_truth] * 5
    features = {
        "video_features": video + 0.1 * torch.randn(video.shape, generator=g),
        "audio_features": audio + 0.1 * torch.randn(audio.shape, generator=g),
    }
    return features, video_truth, audio_truth


@pytest.mark.parametrize(
    "variant, keys",
    [
        ("cross", ("audio", "video")),
        ("self", ("audio", "video")),
        ("multi", ("audio", "video")),
        ("concat", ("concat",)),
    ],
)
def test_each_variant_clusters_what_it_learns(variant, keys):
    xdc = XDC(FEATURE_DIMS, num_clusters=3, variant=variant)
    features, _, _ = _planted(30)
    labels = xdc.recluster(features)
    assert xdc.target_keys == keys and tuple(sorted(labels)) == keys
    assert all(lab.shape == (30,) and lab.dtype == torch.long for lab in labels.values())
    assert len(xdc.heads) == len(VARIANT_TERMS[variant])


@pytest.mark.parametrize("variant", sorted(VARIANT_TERMS))
def test_loss_is_the_mean_cross_entropy_of_the_variants_pairs(variant):
    xdc = XDC(FEATURE_DIMS, num_clusters=3, variant=variant)
    g = torch.Generator().manual_seed(0)
    outputs = {"video_features": torch.randn(8, 6, generator=g), "audio_features": torch.randn(8, 5, generator=g)}
    targets = {key: torch.randint(0, 3, (8,), generator=g) for key in ("video", "audio", "concat")}
    written_out = {
        "cross": [("video", "audio"), ("audio", "video")],
        "self": [("video", "video"), ("audio", "audio")],
        "multi": [("video", "video"), ("video", "audio"), ("audio", "video"), ("audio", "audio")],
        "concat": [("video", "concat"), ("audio", "concat")],
    }[variant]
    want = sum(F.cross_entropy(xdc.heads[f"{s}_to_{t}"](outputs[f"{s}_features"]), targets[t]) for s, t in written_out)
    torch.testing.assert_close(xdc(outputs, targets), want / len(written_out))


def test_no_targets_means_no_term():
    assert XDC(FEATURE_DIMS)({"video_features": torch.randn(2, 6), "audio_features": torch.randn(2, 5)}) is None


def test_cross_modal_pseudo_labels_recover_the_other_modalitys_structure():
    from sklearn.metrics import adjusted_rand_score

    features, video_truth, audio_truth = _planted(60)
    labels = XDC(FEATURE_DIMS, num_clusters=3).recluster(features)
    assert adjusted_rand_score(video_truth, labels["video"]) == pytest.approx(1.0)
    assert adjusted_rand_score(audio_truth, labels["audio"]) == pytest.approx(1.0)


def test_concat_clusters_use_both_modalities():
    from sklearn.metrics import adjusted_rand_score

    features, video_truth, audio_truth = _planted(90)
    labels = XDC(FEATURE_DIMS, num_clusters=9, variant="concat").recluster(features)
    joint = video_truth * 3 + audio_truth
    assert adjusted_rand_score(joint, labels["concat"]) > 0.9


def test_recluster_reinitialises_heads_deterministically_and_state_round_trips():
    features, _, _ = _planted(30)
    a, b = XDC(FEATURE_DIMS, num_clusters=3, seed=5), XDC(FEATURE_DIMS, num_clusters=3, seed=5)
    before = a.heads["video_to_audio"].weight.clone()
    a.recluster(features)
    b.recluster({"video": features["video_features"], "audio": features["audio_features"]})  # aliases
    assert not torch.equal(before, a.heads["video_to_audio"].weight)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y, name
    state = a.state_dict()
    assert int(state["rounds"]) == 1 and state["centroids_video"].abs().sum() > 0
    fresh = XDC(FEATURE_DIMS, num_clusters=3, seed=5)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.centroids_audio, a.centroids_audio)
    assert not torch.equal(
        XDC(FEATURE_DIMS, num_clusters=3, seed=6).heads["video_to_audio"].weight,
        XDC(FEATURE_DIMS, num_clusters=3, seed=5).heads["video_to_audio"].weight,
    )


def test_fewer_videos_than_clusters_still_gives_valid_labels():
    features, _, _ = _planted(3)
    labels = XDC(FEATURE_DIMS, num_clusters=16).recluster(features)
    assert all(lab.max() < 16 for lab in labels.values())


def test_from_config():
    xdc = XDC.from_config(XDCConfig(weight=1.0, variant="multi", num_clusters=7, seed=3), DIMS, True)
    assert xdc.variant == "multi" and xdc.heads["audio_to_video"].out_features == 7
    assert xdc.heads["audio_to_video"].in_features == DIMS["audio_features"]


# --- distributed: 2 ranks' shards of videos cluster exactly like one process on all of them ---

SIZES = [17, 23]


def _make():
    return XDC(FEATURE_DIMS, num_clusters=4, seed=1)


def _xdc_job(features, inputs, targets):
    r = rank()
    xdc = _make()
    labels = xdc.recluster(rows(features, SIZES, r))
    batch = [3, 5]
    return {
        "labels": labels,
        "state": xdc.state_dict(),
        "step": step(_make, rows(inputs, batch, r), rows(targets, batch, r)),
    }


def test_two_ranks_cluster_and_learn_like_one_process(two_ranks):
    features, _, _ = _planted(sum(SIZES), seed=4)
    inputs = make_inputs(8)
    targets = {"video": torch.randint(0, 4, (8,)), "audio": torch.randint(0, 4, (8,))}
    results = two_ranks.run(_xdc_job, features, inputs, targets)

    single = _make()
    labels = single.recluster(features)
    for key in ("video", "audio"):
        assert torch.equal(torch.cat([r["labels"][key] for r in results]), labels[key])
    for result in results:
        for name, value in single.state_dict().items():
            torch.testing.assert_close(result["state"][name], value, msg=name)
        assert_same_step(result["step"], step(_make, inputs, targets))


class _Context:
    """An epoch context over fixed per-video features, counting how often it embedded."""

    def __init__(self, epoch, features, sources):
        self.epoch, self.calls = epoch, 0
        self._videos = VideoEmbeddings(sources, features, dict)

    def embed_videos(self):
        self.calls += 1
        return self._videos


def test_the_lifecycle_hooks_recluster_on_schedule_and_the_labels_survive_a_checkpoint():
    features, _, _ = _planted(12)
    sources = [f"v{i}" for i in range(12)]
    xdc = XDC(FEATURE_DIMS, num_clusters=3, seed=5, recluster_every_epochs=2)
    assert xdc.batch_targets({"source": np.array(sources[:4], dtype=object)}, torch.device("cpu")) is None
    first = _Context(0, features, sources)
    reset = xdc.on_epoch_start(first)
    assert first.calls == 1 and {id(p) for p in reset} == {id(p) for p in xdc.parameters()}
    second = _Context(1, features, sources)
    assert xdc.on_epoch_start(second) == [] and second.calls == 0  # every 2 epochs
    targets = xdc.batch_targets({"source": np.array(["v3", "v0"], dtype=object)}, torch.device("cpu"))
    assert set(targets) == set(xdc.target_keys)
    assert targets["video"].tolist() == [xdc.pseudo_labels["v3"]["video"], xdc.pseudo_labels["v0"]["video"]]
    restored = XDC(FEATURE_DIMS, num_clusters=3, seed=5, recluster_every_epochs=2)
    restored.load_state_dict(xdc.state_dict())
    assert restored.pseudo_labels == xdc.pseudo_labels and len(restored.pseudo_labels) == 12
    assert restored.on_epoch_start(_Context(1, features, sources)) == []  # resumed mid-round: no new clustering
