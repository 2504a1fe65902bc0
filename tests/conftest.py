"""Shared test setup: Ray without auth for local clusters, repo root importable, MNIST once per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def mnist():
    from harness.data.mnist import load_mnist

    return load_mnist()
