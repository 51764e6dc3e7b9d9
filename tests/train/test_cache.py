"""When pretraining keeps its clips in Ray's object store instead of re-reading them each epoch."""

from dataclasses import replace

import numpy as np
import ray.data

from avray.config import load_config
from avray.data.pipeline import TrainingData
from avray.train.trainer import cache_training_clips, cached, scaling, worker_threads


def _data(train: int, val: int = 0, epoch_clock=None) -> TrainingData:
    return TrainingData(
        train=None, val=None, num_train_clips=train, num_val_clips=val, clips=None, epoch_clock=epoch_clock
    )


def test_auto_caches_what_fits_in_half_the_object_store(ray_local):
    cfg = load_config(None, [])
    clip_bytes = 16 * 64 * 64 * 3 + 4 * 32_000  # default 2 s clips at 8 fps, 64x64, 16 kHz
    half = ray_local.cluster_resources()["object_store_memory"] / 2
    fits = int(half // clip_bytes)
    assert cache_training_clips(cfg, _data(fits - 10, 10))
    assert not cache_training_clips(cfg, _data(fits, 10))
    # Pooled feature rows (4 KiB here) are small: far more of them fit than clips (317 KiB) ...
    features = ["model.inputs=features", "model.video_feature_dim=512", "model.audio_feature_dim=512"]
    assert cache_training_clips(load_config(None, features), _data(fits * 10))
    # ... but token sequences count every token: 512 + 128 of them, 1.3 MB a clip.
    tokens = load_config(None, [*features, "model.video_feature_tokens=512", "model.audio_feature_tokens=128"])
    assert not cache_training_clips(tokens, _data(fits // 3))


def test_fresh_windows_every_epoch_are_never_cached_unless_asked(ray_local):
    random_windows = load_config(None, ["data.sampling=random"])
    assert not cache_training_clips(random_windows, _data(100, epoch_clock=object()))
    # Prepared shards hold fixed windows whatever data.sampling says.
    assert cache_training_clips(random_windows, _data(100))
    assert cache_training_clips(
        replace(random_windows, train=replace(random_windows.train, cache_clips="always")),
        _data(100, epoch_clock=object()),
    )
    assert not cache_training_clips(load_config(None, ["train.cache_clips=never"]), _data(10))


def test_cached_clips_let_cpu_workers_share_every_cpu_of_the_cluster(ray_local):
    # The local cluster has 2 CPUs: one worker reserves 1, the other decodes unless clips are cached.
    cfg = load_config(None, [])
    one = scaling(cfg)
    assert one.num_workers == 1 and not one.use_gpu
    assert worker_threads(cfg, one, cache=True) == 2
    assert worker_threads(cfg, one, cache=False) == 1
    assert worker_threads(cfg, scaling(load_config(None, ["train.num_workers=2"])), cache=True) == 1
    assert worker_threads(load_config(None, ["train.threads_per_worker=3"]), one, cache=True) == 3
    assert worker_threads(cfg, replace(one, use_gpu=True), cache=True) == 1


def _same_video_pairs_per_batch(dataset: ray.data.Dataset) -> float:
    # As the training loop reads its shard: batches of 64 from a 512-clip shuffle buffer.
    pairs = []
    for batch in dataset.iter_batches(
        batch_size=64, local_shuffle_buffer_size=512, local_shuffle_seed=1, drop_last=True
    ):
        _, clips_per_video = np.unique(batch["source"], return_counts=True)
        pairs.append((clips_per_video * (clips_per_video - 1) // 2).sum())
    return float(np.mean(pairs))


def test_cached_training_clips_are_mixed_across_the_whole_set_not_only_the_shuffle_buffer(ray_local):
    # Four clips a video, side by side, as prepared shards hold them; 1000 videos in a random
    # order would put about 1.5 same-video pairs in a batch of 64.
    videos = ray.data.from_items([{"source": f"v{i // 4}"} for i in range(4000)]).repartition(60)
    assert _same_video_pairs_per_batch(cached(videos, shuffle_seed=None)) > 4
    assert _same_video_pairs_per_batch(cached(videos, shuffle_seed=0)) < 2
