"""Fan-out of task events to every open TaskEvents stream."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from tart_trio._model import TaskEvent

_BACKLOG = 1000


class EventBus:
    """Publish never blocks; each subscriber gets every event published while it listens."""

    def __init__(self) -> None:
        self._subscribers: set[trio.MemorySendChannel[TaskEvent]] = set()

    def publish(self, event: TaskEvent) -> None:
        """Queue ``event`` for every subscriber; a subscriber too far behind loses it."""
        for channel in list(self._subscribers):
            try:
                channel.send_nowait(event)
            except trio.WouldBlock:
                pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.discard(channel)

    async def subscribe(self, deliver: Callable[[TaskEvent], Awaitable[None]]) -> None:
        """Call ``deliver`` for each event until cancelled (the stream stays open)."""
        send, receive = trio.open_memory_channel[TaskEvent](_BACKLOG)
        self._subscribers.add(send)
        try:
            async with receive:
                async for event in receive:
                    await deliver(event)
        finally:
            self._subscribers.discard(send)
            send.close()
