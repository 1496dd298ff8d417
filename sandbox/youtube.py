"""Placeholder: being written."""

from __future__ import annotations

from sandbox.core import Emulator


class YouTubeDataEmulator(Emulator):
    name = "youtube_data"


class YouTubeAnalyticsEmulator(Emulator):
    name = "youtube_analytics"
