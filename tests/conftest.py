"""Fixtures shared by several test files."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models (MiniLM, random-init CLIP) on a shared 2-core machine: one intra-op thread is faster than two
    waiting on each other (a 4x slower file under load). Restores torch's thread count after the module."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
