"""Shared pytest setup: CPU only unless a test is marked ``gpu``; small thread counts; smoke profile."""

import os

import pytest
import torch

os.environ.setdefault("HPARSE_PROFILE", "smoke")
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def tmp_results(tmp_path, monkeypatch):
    """Redirect results/ to a temporary folder so tests never write into the repository."""
    monkeypatch.setenv("HPARSE_RESULTS", str(tmp_path / "results"))
    return tmp_path / "results"
