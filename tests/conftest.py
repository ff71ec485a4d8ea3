"""Shared fixtures.  Guests are NASM sources assembled at test time (nasm must be installed)."""

from __future__ import annotations

import shutil

import pytest


def pytest_configure(config: pytest.Config) -> None:
    if shutil.which("nasm") is None:
        raise pytest.UsageError("nasm is not installed: run the README's test command (it installs nasm)")


@pytest.fixture(params=["fast", "interp"])
def engine(request: pytest.FixtureRequest) -> str:
    """Run a test under both execution engines (the compiled fast path must not change behaviour)."""
    return request.param
