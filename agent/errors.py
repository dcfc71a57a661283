"""One error hierarchy for the whole agent, split by origin.

Foreign exceptions (OSError, sqlite3.Error, requests exceptions, ...) are
converted into one of these once, where they enter the agent.  The command
line catches AgentError in a single place and prints ``diagnostics()``.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""

    def diagnostics(self) -> str:
        """A text for people: what went wrong and, where known, what to do."""
        return str(self)


class ConfigError(AgentError):
    """The configuration is invalid; ``problems`` lists every finding by key path."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems or [])

    def diagnostics(self) -> str:
        if not self.problems:
            return str(self)
        lines = [str(self)] + [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


class DeviceError(AgentError):
    """A docked device misbehaved: removed, unreadable, protocol failure."""


class DeviceGoneError(DeviceError):
    """The device disappeared (undocked or unmounted) while in use."""


class RecordingMissingError(DeviceError):
    """The device is there, but this recording is not (ENOENT): no I/O failure."""


class RecordingChangedError(DeviceError):
    """What the device holds under a recording's name is not that recording any more.

    Other bytes, size or mtime, another type (a symlink, a FIFO), or another
    file swapped in under the name: never deleted.
    """


class IntegrityError(AgentError):
    """Data does not match what it claims: a hash, a signature, a proof."""


class TransportError(AgentError):
    """The network or a remote service failed; usually worth retrying."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class StoreError(AgentError):
    """The local state database or vault failed or is inconsistent."""


class StoreFullError(StoreError):
    """The disk of the station's database is full: nothing can be recorded until there is room."""


class Cancelled(AgentError):
    """Work stopped because the agent is shutting down; it resumes at the next start."""
