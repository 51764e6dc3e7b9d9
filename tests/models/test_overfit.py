import math

import torch
import torch.nn.functional as F

from avray.models import build_model
from tests.models.clips import SMALL_DATA, SMALL_MODEL

FREQUENCIES_HZ = (220.0, 440.0, 880.0, 1760.0)


def four_pairs(noise_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair i: a video whose bright square sits in corner i, with a tone at FREQUENCIES_HZ[i].
    Fresh noise on both streams every call, so the model must learn the content, not the bytes."""
    g = torch.Generator().manual_seed(noise_seed)
    t, size = SMALL_DATA.num_frames, SMALL_DATA.frame_size
    half = size // 2
    video = torch.randint(0, 60, (4, t, size, size, 3), generator=g, dtype=torch.uint8)
    for i in range(4):
        top, left = (i // 2) * half, (i % 2) * half
        video[i, :, top : top + half, left : left + half] += 180
    seconds = torch.arange(SMALL_DATA.num_samples) / SMALL_DATA.sample_rate
    tones = torch.stack([torch.sin(2 * math.pi * f * seconds) for f in FREQUENCIES_HZ])
    audio = 0.5 * tones + 0.05 * torch.randn(4, SMALL_DATA.num_samples, generator=g)
    return video, audio


def symmetric_infonce(video: torch.Tensor, audio: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    logits = F.normalize(video, dim=-1) @ F.normalize(audio, dim=-1).T / temperature
    targets = torch.arange(len(logits))
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def test_model_learns_to_match_four_synthetic_pairs():
    model = build_model(SMALL_MODEL, SMALL_DATA).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(60):
        out = model(*four_pairs(noise_seed=step))
        loss = symmetric_infonce(out["video"], out["audio"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 1.0  # no better than chance (log 4 = 1.39) at initialisation
    assert max(losses[-5:]) < 0.1

    model.eval()  # running BatchNorm statistics, as embedding export will use
    with torch.no_grad():
        out = model(*four_pairs(noise_seed=1000))  # unseen noise
    similarity = F.normalize(out["video"], dim=-1) @ F.normalize(out["audio"], dim=-1).T
    assert torch.equal(similarity.argmax(1), torch.arange(4))
    assert torch.equal(similarity.argmax(0), torch.arange(4))
