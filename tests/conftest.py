"""Shared test setup: Ray without auth for local clusters, repo root importable, MNIST once per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Ray workers import the tests' own trial kinds (distributed_fixtures): put tests/ on their PYTHONPATH
os.environ["PYTHONPATH"] = os.pathsep.join(
    dict.fromkeys([str(ROOT / "tests"), str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]))


@pytest.fixture(scope="session")
def mnist():
    from harness.data.mnist import load_mnist

    return load_mnist()
