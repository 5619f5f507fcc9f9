"""Shared image pulls.

Every task that needs an image, and the pre-pull, waits on one ``tart pull`` per image
and credentials; a pull is cancelled when the last of its waiters goes away. A pull of
an image that is being cloned waits for those clones to finish: pulling a tag that moved
relinks it, and Tart's cache gc then removes the directory the clone copies from.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

import trio

from tart_trio._errors import TartTrioError
from tart_trio._tart import images
from tart_trio._tart.cli import Tart

#: Docker's driver turns pull progress into a task event every 2 minutes; Nomad keeps
#: only a task's last 10 events (drivers/docker/progress.go, task_runner.go).
PROGRESS_EVENT_SECONDS: Final = 120.0


def _nothing() -> None:
    return None


def _any_space(needed: int) -> None:
    del needed


@dataclass(frozen=True)
class PullListener:
    """What one waiter hears of a pull: whole percents, and when it waits for another."""

    progress: Callable[[int], None]
    waiting: Callable[[], None] = _nothing


class ProgressThrottle:
    """Spaces a long pull's progress events out: the first and each next one ``every`` later."""

    def __init__(self, now: float, every: float = PROGRESS_EVENT_SECONDS) -> None:
        self.every = every
        self.last = now

    def due(self, now: float) -> bool:
        """Whether a progress event may be emitted at ``now`` (and count it if so)."""
        if now - self.last < self.every:
            return False
        self.last = now
        return True


@dataclass
class _Pull:
    url: str
    done: trio.Event = field(default_factory=trio.Event)
    error: BaseException | None = None
    listeners: list[PullListener] = field(default_factory=list)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    percent: int = -1
    background: bool = False


class Pulls:
    """One ``tart pull`` per (image, credentials) at a time, owned by the driver's nursery."""

    def __init__(
        self,
        nursery: trio.Nursery,
        after_pull: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self._nursery = nursery
        self._after_pull = after_pull
        self._pulls: dict[tuple[str, str], _Pull] = {}
        self._clones: dict[str, int] = {}
        self._clone_ended = trio.Event()

    def prepulling(self, url: str) -> bool:
        """Whether the pre-pull is pulling this image now."""
        return self._prepull(url) is not None

    def _prepull(self, url: str) -> _Pull | None:
        name = images.canonical(url)
        return next((p for p in self._pulls.values() if p.url == name and p.background), None)

    async def join_prepull(self, url: str, listener: PullListener) -> bool:
        """Wait for the pre-pull of this image if it runs (its failure is raised)."""
        shared = self._prepull(url)
        if shared is None:
            return False
        await self._wait(shared, listener)
        return True

    async def pull(
        self,
        tart: Tart,
        url: str,
        credentials: Mapping[str, str],
        *,
        timeout_seconds: float,
        inactivity_seconds: float,
        listener: PullListener,
        check_space: Callable[[int], None] = _any_space,
        background: bool = False,
    ) -> None:
        """Pull ``url`` or join the pull already running for it with these credentials.

        ``background``: the pre-pull's, which tasks that need the image join whatever
        credentials they bring.
        """
        secret = "\0".join(f"{k}={v}" for k, v in sorted(credentials.items()))
        key = (images.canonical(url), hashlib.sha256(secret.encode()).hexdigest())
        shared = self._pulls.get(key)
        if shared is None:
            shared = self._pulls[key] = _Pull(url=key[0], background=background)
            self._nursery.start_soon(
                self._run,
                key,
                shared,
                tart,
                url,
                dict(credentials),
                timeout_seconds,
                inactivity_seconds,
                check_space,
            )
        await self._wait(shared, listener)

    async def _wait(self, shared: _Pull, listener: PullListener) -> None:
        shared.listeners.append(listener)
        if shared.percent >= 0:
            listener.progress(shared.percent)
        try:
            await shared.done.wait()
        finally:
            shared.listeners.remove(listener)
            if not shared.listeners and not shared.done.is_set():
                shared.scope.cancel()
        if shared.error is not None:
            raise shared.error

    @contextlib.asynccontextmanager
    async def cloning(self, url: str) -> AsyncIterator[None]:
        """Hold off pulls of this image while a clone copies it."""
        name = images.canonical(url)
        self._clones[name] = self._clones.get(name, 0) + 1
        try:
            yield
        finally:
            self._clones[name] -= 1
            if not self._clones[name]:
                del self._clones[name]
            self._clone_ended.set()
            self._clone_ended = trio.Event()

    async def _run(
        self,
        key: tuple[str, str],
        shared: _Pull,
        tart: Tart,
        url: str,
        credentials: dict[str, str],
        timeout_seconds: float,
        inactivity_seconds: float,
        check_space: Callable[[int], None],
    ) -> None:
        def progress(percent: int) -> None:
            shared.percent = percent
            for listener in list(shared.listeners):
                listener.progress(percent)

        def waiting() -> None:
            for listener in list(shared.listeners):
                listener.waiting()

        try:
            with shared.scope:
                while key[0] in self._clones:
                    await self._clone_ended.wait()
                try:
                    await images.pull(
                        tart,
                        url,
                        credentials=credentials,
                        inactivity_seconds=inactivity_seconds,
                        timeout_seconds=timeout_seconds,
                        on_progress=progress,
                        on_waiting=waiting,
                        check_space=check_space,
                    )
                except Exception as exc:
                    shared.error = exc
            if shared.scope.cancelled_caught and shared.error is None:
                shared.error = TartTrioError(f"the pull of {url} was cancelled")
        finally:
            del self._pulls[key]
            shared.done.set()
        if shared.error is None and self._after_pull is not None:
            await self._after_pull(key[0])
