"""Frozen encoders end to end: save random encoders as TorchScript and as a state dict,
extract features with Ray Data, train only the fusion on them, and evaluate the result."""

from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pytest
import torch

from avray.checkpoint import load_state
from avray.config import ConfigError
from avray.data.shards import resolve_source
from avray.eval.evaluate import evaluate
from avray.extract import extract_features
from avray.models import encoder_widths, load_model
from avray.models.audio import AudioEncoder
from avray.models.video import VideoEncoder
from avray.train.trainer import pretrain
from tests.media import make_good_video
from tests.tiny import make_tiny_corpus, tiny_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_tiny_corpus(tmp_path_factory.mktemp("features-corpus"))


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    """A random video encoder as TorchScript and a random audio encoder as a state dict."""
    folder = tmp_path_factory.mktemp("encoders")
    cfg = tiny_config(folder)
    torch.manual_seed(7)
    video = VideoEncoder(cfg.model).eval()
    clip = torch.zeros(2, cfg.data.num_frames, cfg.data.frame_size, cfg.data.frame_size, 3, dtype=torch.uint8)
    torch.jit.trace(video, clip).save(str(folder / "video.ts"))
    audio = AudioEncoder(cfg.model, cfg.data.sample_rate).eval()
    torch.save(audio.state_dict(), folder / "audio.pt")
    return {
        "video": video,
        "audio": audio,
        "settings": [
            f"frozen.video.path={folder / 'video.ts'}",
            "frozen.video.layout=BTHWC",
            "frozen.video.normalize=false",
            f"frozen.audio.path={folder / 'audio.pt'}",
            "frozen.audio.architecture=avray",
            "frozen.batch_size=4",
        ],
    }


@pytest.fixture(scope="module")
def pooled_features(ray_local, corpus, encoders, tmp_path_factory):
    """(folder of the encoders' pooled features of the corpus, the extraction's skip report)."""
    features = str(tmp_path_factory.mktemp("pooled") / "features")
    cfg = tiny_config(Path(features).parent, *encoders["settings"])
    return features, extract_features(corpus, features, cfg, progress=lambda msg: None)


def test_extract_train_fusion_and_evaluate(ray_local, corpus, encoders, pooled_features, tmp_path):
    cfg = tiny_config(tmp_path, *encoders["settings"], "train.epochs=2", "train.num_workers=1")
    features, report = pooled_features
    assert not report.skipped
    widths = encoder_widths(cfg.model)
    assert resolve_source(features).feature_shapes == {"video": [widths["video"]], "audio": [widths["audio"]]}
    table = pads.dataset(features, format="parquet").to_table().sort_by("clip_id")
    assert table.num_rows == 16 and set(table.column("label").to_pylist()) == {"a", "b"}

    # The stored features are the frozen encoders' output on the decoded clips.
    from avray.data.pipeline import load_clips

    clips = load_clips(corpus, cfg.data).dataset.take_all()
    first = min(clips, key=lambda row: row["clip_id"])
    with torch.no_grad():
        want = encoders["video"](torch.tensor(first["video"])[None]).pooled[0]
        want_audio = encoders["audio"](torch.tensor(first["audio"])[None]).pooled[0]
    stored = table.slice(0, 1).to_pylist()[0]
    assert stored["clip_id"] == first["clip_id"]
    torch.testing.assert_close(torch.tensor(stored["video"]), want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor(stored["audio"]), want_audio, rtol=1e-4, atol=1e-5)

    # Pretraining on the shards trains heads and fusion only: no encoder in the checkpoint.
    result = pretrain(tiny_config(tmp_path, "train.epochs=2", "train.num_workers=1"), features, str(tmp_path / "run"))
    assert [h["epoch"] for h in result.history] == [1, 2] and "val/elo_fitness" in result.metrics
    model, saved = load_model(result.checkpoint)
    assert saved.model.inputs == "features" and saved.model.video_feature_dim == widths["video"]
    assert not any(
        k.startswith(("model.video_encoder", "model.audio_encoder"))
        for k in load_state(Path(result.checkpoint))["module"]
    )

    evaluation = evaluate(result.checkpoint, features, tmp_path / "eval", track=False, folds=2, progress=lambda m: None)
    for key in ("probe/fused/accuracy", "retrieval/a2v/recall@1", "baseline/probe/fused/accuracy"):
        assert 0.0 <= evaluation.metrics[key] <= 1.0, key
    assert evaluation.metrics["clips"] == 16

    # A features model cannot read clips, nor a clips model features: both say what to do.
    with pytest.raises(ConfigError, match="extract_features.py"):
        evaluate(result.checkpoint, corpus, tmp_path / "eval2", track=False)


def test_token_features_train_cross_attention_fusion(ray_local, corpus, encoders, pooled_features, tmp_path):
    cfg = tiny_config(tmp_path, *encoders["settings"], "frozen.tokens=true")
    features = str(tmp_path / "tokens")
    extract_features(corpus, features, cfg, progress=lambda msg: None)
    shapes = resolve_source(features).feature_shapes
    assert (
        len(shapes["video"]) == 2
        and shapes["video"][1] == encoder_widths(cfg.model)["video"]
        and shapes["video"][0] > 1
    )
    result = pretrain(
        tiny_config(
            tmp_path, "train.epochs=1", "train.num_workers=1", "model.fusion=cross_attention", "model.attention_heads=2"
        ),
        features,
        str(tmp_path / "run"),
        track=False,
    )
    assert result.history[-1]["global_step"] > 0
    # The model was built for the token sequences, and evaluation refuses pooled features.
    _, saved = load_model(result.checkpoint)
    assert saved.model.feature_shapes() == shapes
    with pytest.raises(ConfigError, match="same frozen encoders and frozen.tokens"):
        evaluate(result.checkpoint, pooled_features[0], tmp_path / "eval", track=False)


def test_features_of_an_unlabelled_corpus_keep_a_string_label_column_of_nones(ray_local, encoders, tmp_path):
    for i in range(2):
        make_good_video(tmp_path / "flat" / f"v{i}.mp4", seconds=2.5, fps=12, size=48, sample_rate=16000, seed=i)
    cfg = tiny_config(tmp_path, *encoders["settings"])
    extract_features(str(tmp_path / "flat"), str(tmp_path / "features"), cfg, progress=lambda msg: None)
    labels = pads.dataset(str(tmp_path / "features"), format="parquet").to_table(columns=["label"]).column("label")
    assert labels.type == pa.string() and labels.to_pylist() == [None] * 4
