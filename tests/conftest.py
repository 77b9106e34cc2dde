"""Test-wide settings: tiny models run fastest on one torch thread (thread hand-off dominates)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # `import tiny` / `import reference` from any test


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
