"""Local emulators of the TikTok, Meta, YouTube, Google OAuth and Secret Manager APIs (see README.md)."""

from sandbox.core import FaultRule
from sandbox.server import Sandbox, SandboxSettings
from sandbox.world import WorldSettings

__all__ = ["FaultRule", "Sandbox", "SandboxSettings", "WorldSettings"]
