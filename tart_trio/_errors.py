"""The exceptions the domain raises; the rpc layer maps each to one gRPC status."""

from __future__ import annotations


class TartTrioError(Exception):
    """Base class of every error this plugin raises on purpose."""


class ConfigError(TartTrioError):
    """A plugin or task configuration value is invalid; nothing was created."""

    def __init__(self, field: str, problem: str, *, scope: str = "task config") -> None:
        self.field = field
        self.problem = problem
        super().__init__(
            f"invalid {scope}: {field}: {problem}" if field else f"invalid {scope}: {problem}"
        )


class TaskNotFound(TartTrioError):
    """No task with that ID is known to this plugin process."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        super().__init__(f"task not found for given id: {task_id}")


class RecoverableError(TartTrioError):
    """A failure that a later retry may not hit (Nomad's restart policy applies)."""
