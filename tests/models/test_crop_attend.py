import math

import pytest
import torch

from avray.models import SpaceTimeCropAttend, random_box_mask
from avray.models.crop_attend import crop_extents


@pytest.mark.parametrize(
    "grid, keep, volume",
    [
        ((4, 4, 4), 0.75, 48),  # the default clip: one slice of the 4×4×4 map is cropped away
        ((2, 4, 4), 0.75, 24),  # only a spatial axis can get there
        ((1, 1, 1), 0.5, 1),  # nothing to crop
    ],
)
def test_crop_volume_hits_the_kept_share_on_small_maps(grid, keep, volume):
    extents = crop_extents(grid, keep)
    assert math.prod(extents) == volume
    assert all(1 <= e <= s for e, s in zip(extents, grid))


@pytest.mark.parametrize("grid, keep", [((8, 8, 8), 0.5), ((4, 16, 16), 0.3), ((3, 5, 7), 0.9)])
def test_crop_volume_is_within_one_slice_of_the_kept_share(grid, keep):
    for _ in range(20):
        extents = crop_extents(grid, keep)
        assert abs(math.prod(extents) - keep * math.prod(grid)) <= math.prod(grid) / min(grid)


def test_crops_are_sometimes_temporal_sometimes_spatial():
    shrunk_axes = {tuple(e < 4 for e in crop_extents((4, 4, 4), 0.75)) for _ in range(50)}
    assert shrunk_axes == {(True, False, False), (False, True, False), (False, False, True)}


def test_each_sample_gets_one_box_at_its_own_offset():
    mask = random_box_mask(64, (4, 6, 6), keep_fraction=0.5, device=torch.device("cpu"))
    sizes = mask.flatten(1).sum(1)
    assert (sizes == sizes[0]).all() and 0 < sizes[0] < 4 * 6 * 6
    for sample in mask:
        # A box: the kept positions span exactly a block whose volume is the count.
        spans = [sample.any(dim=tuple(d for d in range(3) if d != axis)).nonzero().flatten() for axis in range(3)]
        assert all((s[1:] - s[:-1] == 1).all() for s in spans)
        assert math.prod(len(s) for s in spans) == sample.sum()
    assert len({tuple(m.flatten().tolist()) for m in mask}) > 1


def test_training_drops_the_mask_ratio_and_cropped_features_have_no_influence():
    pool = SpaceTimeCropAttend(dim=16, num_heads=4, mask_ratio=0.25).train()
    features = torch.randn(8, 16, 4, 4, 4)
    torch.manual_seed(1)
    ignored = pool.crop_mask(features)
    assert (ignored.sum(1) == 16).all()  # 25% of 64 tokens
    torch.manual_seed(1)
    pooled = pool(features)
    elsewhere = features + 10 * torch.randn_like(features) * ignored.view(8, 1, 4, 4, 4)
    torch.manual_seed(1)
    torch.testing.assert_close(pool(elsewhere), pooled)
    assert not torch.allclose(pool(features), pooled)  # a fresh crop


def test_eval_is_attention_pooling_over_the_whole_map_and_deterministic():
    pool = SpaceTimeCropAttend(dim=16, num_heads=4, mask_ratio=0.5).eval()
    features = torch.randn(3, 16, 2, 4, 4)
    assert pool.crop_mask(features) is None
    tokens = pool.norm(features.flatten(2).transpose(1, 2))
    expected, _ = pool.attention(pool.query.expand(3, -1, -1), tokens, tokens)
    torch.testing.assert_close(pool(features), expected.squeeze(1))
    torch.testing.assert_close(pool(features), pool(features), rtol=0, atol=0)


def test_zero_mask_ratio_never_crops():
    pool = SpaceTimeCropAttend(dim=16, num_heads=4, mask_ratio=0.0).train()
    assert pool.crop_mask(torch.randn(2, 16, 4, 4, 4)) is None
