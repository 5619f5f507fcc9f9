"""Shared image pulls: tasks that need the same image (with the same credentials) wait on
one ``tart pull``; it is cancelled when the last of them goes away."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping

import trio

from tart_trio._errors import TartTrioError
from tart_trio._tart import images
from tart_trio._tart.cli import Tart

ProgressListener = Callable[[int], None]


class _Pull:
    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: BaseException | None = None
        self.listeners: list[ProgressListener] = []
        self.scope = trio.CancelScope()


class Pulls:
    """One ``tart pull`` per (image, credentials) at a time, owned by the driver's nursery."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._pulls: dict[tuple[str, str], _Pull] = {}

    async def pull(
        self,
        tart: Tart,
        url: str,
        credentials: Mapping[str, str],
        *,
        timeout_seconds: float,
        inactivity_seconds: float,
        on_progress: ProgressListener,
    ) -> None:
        """Pull ``url`` or join the pull already running for it."""
        secret = "\0".join(f"{k}={v}" for k, v in sorted(credentials.items()))
        key = (url, hashlib.sha256(secret.encode()).hexdigest())
        shared = self._pulls.get(key)
        if shared is None:
            shared = self._pulls[key] = _Pull()
            self._nursery.start_soon(
                self._run,
                key,
                shared,
                tart,
                url,
                dict(credentials),
                timeout_seconds,
                inactivity_seconds,
            )
        shared.listeners.append(on_progress)
        try:
            await shared.done.wait()
        finally:
            shared.listeners.remove(on_progress)
            if not shared.listeners and not shared.done.is_set():
                shared.scope.cancel()
        if shared.error is not None:
            raise shared.error

    async def _run(
        self,
        key: tuple[str, str],
        shared: _Pull,
        tart: Tart,
        url: str,
        credentials: dict[str, str],
        timeout_seconds: float,
        inactivity_seconds: float,
    ) -> None:
        def progress(percent: int) -> None:
            for listener in list(shared.listeners):
                listener(percent)

        try:
            with shared.scope:
                try:
                    with trio.fail_after(timeout_seconds):
                        await images.pull(
                            tart,
                            url,
                            credentials=credentials,
                            inactivity_seconds=inactivity_seconds,
                            on_progress=progress,
                        )
                except trio.TooSlowError:
                    shared.error = images.PullStalled(
                        ["tart", "pull", url],
                        -1,
                        f"the pull did not finish within {timeout_seconds:.0f}s",
                    )
                except Exception as exc:
                    shared.error = exc
            if shared.scope.cancelled_caught and shared.error is None:
                shared.error = TartTrioError(f"the pull of {url} was cancelled")
        finally:
            del self._pulls[key]
            shared.done.set()
