"""Placeholder: being written."""

from __future__ import annotations

from typing import Any

from sandbox.core import Emulator


class MetaEmulator(Emulator):
    name = "meta"

    def initial_credential(self, name: str, accounts: list[Any]) -> dict[str, Any]:
        raise NotImplementedError
