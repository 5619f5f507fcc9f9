"""The one asyncio bridge: typed wrappers around trio-asyncio.

grpclib (the gRPC server) and asyncssh (guest access) are asyncio libraries; everything
else is trio. ``open_loop`` is entered once per process: in ``_rpc.plugin.serve``, or in the
standalone ``warm-check`` (``_driver.warmcheck``); the rpc and guest layers cross between the
two worlds only through these functions.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar, cast

import trio_asyncio

T = TypeVar("T")


def open_loop() -> AbstractAsyncContextManager[object]:
    """The asyncio loop that runs inside trio for the life of the plugin."""
    return cast(AbstractAsyncContextManager[object], trio_asyncio.open_loop())  # type: ignore[attr-defined]


async def run_aio(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """From trio: await an asyncio coroutine function; a trio cancel cancels it."""
    wrapped = trio_asyncio.aio_as_trio(fn)  # type: ignore[attr-defined, no-untyped-call]
    return cast(T, await wrapped(*args))


async def run_trio(fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
    """From asyncio: await a trio async function; cancelling the asyncio task cancels it."""
    wrapped = trio_asyncio.trio_as_aio(fn)  # type: ignore[attr-defined, no-untyped-call]
    return cast(T, await wrapped(*args))
