import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded():
    """Every model test starts from the same global RNG state (weights, crops)."""
    torch.manual_seed(0)
