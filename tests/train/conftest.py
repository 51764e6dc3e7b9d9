import pytest

from tests.tiny import make_tiny_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The tiny labelled corpus (tests/tiny.py), made once per module."""
    return make_tiny_corpus(tmp_path_factory.mktemp("train-corpus"))
