import pytest

from tests.objectives.ranks import TwoRanks


@pytest.fixture(scope="session")
def two_ranks():
    """Two gloo ranks on 127.0.0.1 (see tests/objectives/ranks.py), shared by the session."""
    group = TwoRanks()
    yield group
    group.close()
