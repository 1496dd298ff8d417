"""Shared fixtures; db ones in tests/fixtures/db.py, sandbox ones in tests/fixtures/sandbox.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shared.config import Config

pytest_plugins = ["tests.fixtures.db", "tests.fixtures.sandbox"]


@pytest.fixture
def make_config(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., Config]:
    """Config built through Config.from_env from the test's database and (if requested) sandbox."""

    def _make(**overrides: Any) -> Config:
        env: dict[str, str] = {"DATA_DIR": str(tmp_path / "data")}
        if "database_url" in request.fixturenames:
            env["DATABASE_URL"] = request.getfixturevalue("database_url")
        if "sandbox" in request.fixturenames:
            env.update(request.getfixturevalue("sandbox").env)
        env.update({k.upper(): str(v) for k, v in overrides.items()})
        return Config.from_env(env)

    return _make


@pytest.fixture
def config(make_config: Callable[..., Config]) -> Config:
    return make_config()
