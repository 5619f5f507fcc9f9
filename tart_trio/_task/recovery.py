"""RecoverTask: rebuild a TaskRunner from ``driver_state`` without touching the VM."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tart_trio._errors import TartTrioError
from tart_trio._host import proc
from tart_trio._model import ExitResult, NomadTask
from tart_trio._task.boot import read_status
from tart_trio._task.context import TaskContext
from tart_trio._task.pull_only import PullOnlyRunner
from tart_trio._task.runner import TaskRunner
from tart_trio._task.state import DriverState


class VMVanished(TartTrioError):
    """Neither the VM's supervisor nor its exit status exists any more."""


async def recover_runner(
    task: NomadTask,
    state: DriverState,
    ctx: TaskContext,
    emit: Callable[[str, dict[str, str]], None],
) -> TaskRunner:
    """A runner attached to the VM ``state`` describes: running, or already exited."""
    if state.task_config.pull_only:
        # a pull-only task ended as soon as its image was there
        done = PullOnlyRunner(task, state.task_config, state.vm_name, ctx, emit)
        done.adopt(state)
        done.finish(ExitResult(exit_code=0))
        return done
    runner = TaskRunner(task, state.task_config, state.vm_name, ctx, emit)
    runner.adopt(state)
    if proc.alive(state.supervisor_pid, state.supervisor_token):
        emit(f"Reattached to VM {state.vm_name}", {"vm": state.vm_name})
        return runner
    status = read_status(Path(state.status_file))
    if status is None:
        raise VMVanished(
            f"VM {state.vm_name} is gone: its supervisor (pid {state.supervisor_pid}) is not "
            "running and left no exit status"
        )
    runner.finish(runner.vm_result(status))
    return runner
