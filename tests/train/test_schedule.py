import math

import pytest
import torch

from avray.train.schedule import warmup_cosine


def lrs(warmup: int, total: int) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, warmup, total)
    out = []
    for _ in range(total):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out


def test_warmup_rises_linearly_then_cosine_decays_to_zero():
    values = lrs(4, 20)
    assert values[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert values[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[4:], values[5:]))
    assert values[12] == pytest.approx(0.5 * (1 + math.cos(math.pi * 8 / 16)))
    assert values[-1] < 0.01


def test_degenerate_lengths_stay_finite():
    assert lrs(10, 1) == [1.0]
    assert all(0 < v <= 1 for v in lrs(0, 5)[:4])
