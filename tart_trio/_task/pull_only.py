"""``pull_only`` tasks: make the image present on the node, then exit 0 without a VM.

A ``sysbatch`` job of such a task warms a whole fleet on demand. The task joins a
pre-pull of its image, honours ``force_pull`` and the disk reserve, prunes to the cache
budget like any pull, and its image stays protected from pruning until Nomad destroys
the task.
"""

from __future__ import annotations

from datetime import UTC, datetime

from tart_trio._errors import TartTrioError
from tart_trio._host.safefs import make_private_dir
from tart_trio._model import ExitResult
from tart_trio._task.runner import TaskRunner
from tart_trio._task.state import DriverState


class PullOnlyRunner(TaskRunner):
    """A task whose whole life is one pull."""

    async def _start(self) -> DriverState:
        tart = self.ctx.tart
        try:
            make_private_dir(str(self.runtime_dir))
        except OSError as exc:
            raise TartTrioError(str(exc)) from None
        await self.provision.ensure_image(tart, self.config.url)
        return DriverState(
            vm_name=self.vm_name,
            task_config=self.config,
            supervisor_pid=0,
            supervisor_token=None,
            runtime_dir=str(self.runtime_dir),
            status_file=str(self.runtime_dir / "status.json"),
            tart_path=tart.path,
            tart_home=tart.home,
            started_at=self.started_at.timestamp(),
            ip="",
            host_key="",
            stdout_path=self.task.stdout_path,
            stderr_path=self.task.stderr_path,
        )

    async def _watch(self, state: DriverState) -> None:
        self.finish(ExitResult(exit_code=0))

    def finish(self, result: ExitResult) -> None:
        if self.exited.is_set():
            return
        if result.exit_code == 0 and not result.err:
            self._emit(
                f"Image {self.config.url} is present on this node", {"image": self.config.url}
            )
            self.result = result
            self.phase = "exited"
            self.completed_at = datetime.now(UTC)
            self.exited.set()
            return
        super().finish(result)
