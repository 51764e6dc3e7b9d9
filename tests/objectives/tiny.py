"""A tiny float64 model with the avray.models output contract, and one DDP-style training step.

Each rank and the single-process reference build the same model from the same seed; a step
returns the loss and the parameter gradients averaged over ranks, as DDP would."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
from torch import Tensor, nn

from avray.models.outputs import ModelOutputs
from avray.objectives.distributed import is_distributed, world_size

DIMS = {"video_features": 6, "audio_features": 5, "video": 4, "audio": 4, "fused": 11}
INPUT_DIMS = {"video": 7, "audio": 3}


class TinyModel(nn.Module):
    """Linear encoders and heads; ``forward(inputs) -> outputs`` dict as avray.models'."""

    def __init__(self, dims: dict[str, int] = DIMS) -> None:
        super().__init__()
        self.video_encoder = nn.Linear(INPUT_DIMS["video"], dims["video_features"])
        self.audio_encoder = nn.Linear(INPUT_DIMS["audio"], dims["audio_features"])
        self.video_head = nn.Linear(dims["video_features"], dims["video"])
        self.audio_head = nn.Linear(dims["audio_features"], dims["audio"])

    def forward(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        fv, fa = self.video_encoder(inputs["video"]), self.audio_encoder(inputs["audio"])
        return {
            "video_features": fv,
            "audio_features": fa,
            "video": self.video_head(fv),
            "audio": self.audio_head(fa),
            "fused": torch.cat([fv, fa], dim=1),
        }


def make_inputs(n: int, seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(n, d, generator=g, dtype=torch.float64) for m, d in INPUT_DIMS.items()}


def rows(tensors: dict[str, Tensor], sizes: list[int], rank: int) -> dict[str, Tensor]:
    """Rank ``rank``'s shard when the rows are split into consecutive blocks of ``sizes``."""
    start = sum(sizes[:rank])
    return {k: v[start : start + sizes[rank]] for k, v in tensors.items()}


def step(
    make_objective: Callable[[], nn.Module],
    inputs: dict[str, Tensor],
    targets=None,
    seed: int = 0,
    second_view: dict[str, Tensor] | None = None,
) -> dict:
    """Forward + backward of ``make_objective()`` on TinyModel, both built from ``seed``;
    parameter gradients averaged over ranks. With ``second_view`` (inputs of a second view of
    the same rows) the objective gets :class:`ModelOutputs` holding both views."""
    torch.manual_seed(seed)
    model = TinyModel().double()
    objective = make_objective().double()
    outputs = model(inputs)
    if second_view is not None:
        first, second = ModelOutputs(**outputs), ModelOutputs(**model(second_view))
        outputs = replace(first, views=(first, second))
    loss = objective(outputs, targets)
    loss.backward()
    params = dict(model.named_parameters()) | dict(objective.named_parameters(prefix="objective"))
    grads = {name: p.grad.clone() for name, p in params.items() if p.grad is not None}
    if is_distributed():
        for grad in grads.values():
            torch.distributed.all_reduce(grad)
            grad /= world_size()
    return {"loss": loss.detach(), "grads": grads}


def assert_same_step(got: dict, want: dict, rtol: float = 1e-9) -> None:
    torch.testing.assert_close(got["loss"], want["loss"], rtol=rtol, atol=1e-12)
    assert got["grads"].keys() == want["grads"].keys()
    for name, grad in want["grads"].items():
        torch.testing.assert_close(got["grads"][name], grad, rtol=rtol, atol=1e-12, msg=f"gradient of {name}")
