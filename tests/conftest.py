"""Test-wide setup: offline, project-local caches, small thread counts; the `requires_cuda` marker."""
import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402

if not torch.cuda.is_available():  # no GPU: Triton kernels run on CPU through its interpreter; set before any
    os.environ.setdefault("TRITON_INTERPRET", "1")  # kernel is defined. A GPU machine uses the real compiler.

from harness.env import set_offline_defaults  # noqa: E402

set_offline_defaults()

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "requires_cuda" in item.keywords:
            item.add_marker(skip)
