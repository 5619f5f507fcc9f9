"""Async (trio) client for ``nomadsim``, the Nomad client stand-in.

Usage::

    async with open_nomadsim() as sim:
        info = await sim.call("launch", cmd=[...], log_file=str(log))
        await sim.call("plugin_info")
        fp = await sim.open_stream("fingerprint")
        first = await fp.receive()

Every op and its arguments are documented in ``docs/nomad-standin.md``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import trio

from .build import build_nomadsim

#: How long the shielded cleanup may take (quit kills every plugin; each
#: go-plugin Kill can take 2 s plus the SIGKILL path).
CLEANUP_TIMEOUT = 30.0


class NomadSimError(Exception):
    """An op answered ``ok: false`` (or nomadsim went away).

    ``code`` is the gRPC code name (``"FailedPrecondition"``) for plugin
    errors and None for nomadsim's own errors; ``recoverable`` is decoded
    from the status' RecoverableError detail like Nomad's client does;
    ``kind`` is ``"rpc"``, ``"hcl"`` (decode diagnostics) or ``"local"``.
    """

    def __init__(self, op: str, reply: Mapping[str, Any]) -> None:
        self.op = op
        self.reply: dict[str, Any] = dict(reply)
        self.message: str = str(reply.get("error", ""))
        self.code: str | None = reply.get("code")
        self.recoverable: bool | None = reply.get("recoverable")
        self.kind: str | None = reply.get("kind")
        self.diagnostics: list[dict[str, Any]] | None = reply.get("diagnostics")
        super().__init__(f"{op}: {self.message}")


class StreamEnded(Exception):
    """Raised by :meth:`SimStream.receive` after the stream's end marker."""

    def __init__(self, end: Mapping[str, Any]) -> None:
        self.end: dict[str, Any] = dict(end)
        super().__init__(f"stream {end.get('stream')} ended: {end.get('error')}")


class SimStream:
    """Messages of one server-streaming or bidi RPC.

    Iterate with ``async for msg in stream`` (ends quietly at the end
    marker) or call :meth:`receive`. After the end, :attr:`end` holds the
    end marker and :attr:`error` a :class:`NomadSimError` if the RPC failed.
    """

    def __init__(
        self, stream_id: int, receive: trio.MemoryReceiveChannel[dict[str, Any]], op: str
    ) -> None:
        self.id = stream_id
        self._receive = receive
        self._op = op
        self.end: dict[str, Any] | None = None
        #: fingerprint streams: the node (as the ``node`` op) right after the last message
        self.node: dict[str, Any] | None = None

    @property
    def error(self) -> NomadSimError | None:
        if self.end is None or self.end.get("error") is None:
            return None
        return NomadSimError(self._op, self.end)

    async def receive(self) -> dict[str, Any]:
        """Next message (the ``msg`` payload); raises StreamEnded at the end."""
        if self.end is not None:
            raise StreamEnded(self.end)
        try:
            item = await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            self.end = {"stream": self.id, "end": True, "error": "nomadsim exited", "kind": "local"}
            raise StreamEnded(self.end) from None
        if item.get("end"):
            self.end = item
            raise StreamEnded(item)
        msg: dict[str, Any] = item["msg"]
        self.node = item.get("node", self.node)
        return msg

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            try:
                yield await self.receive()
            except StreamEnded:
                return


class _Pending:
    def __init__(self, op: str) -> None:
        self.op = op
        self.event = trio.Event()
        self.reply: dict[str, Any] | None = None


class NomadSim:
    """A running nomadsim process; create it with :func:`open_nomadsim`."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._streams: dict[
            int,
            tuple[
                trio.MemorySendChannel[dict[str, Any]], trio.MemoryReceiveChannel[dict[str, Any]]
            ],
        ] = {}
        self._stream_ops: dict[int, str] = {}
        self._write_lock = trio.Lock()
        self._closed: str | None = None
        self._reader_scope = trio.CancelScope(shield=True)
        #: pids of plugins launched or reattached through this sim
        self.plugin_pids: set[int] = set()

    @property
    def pid(self) -> int:
        return self.process.pid

    async def call(self, op: str, **args: Any) -> dict[str, Any]:
        """Send one op and wait for its reply; raises NomadSimError on ok:false."""
        if self._closed is not None:
            raise NomadSimError(op, {"error": self._closed, "kind": "local"})
        req_id = next(self._ids)
        pending = _Pending(op)
        self._pending[req_id] = pending
        line = json.dumps({**args, "id": req_id, "op": op}).encode() + b"\n"
        try:
            async with self._write_lock:
                stdin = self.process.stdin
                assert stdin is not None
                try:
                    await stdin.send_all(line)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    raise NomadSimError(
                        op, {"error": f"nomadsim is gone: {exc!r}", "kind": "local"}
                    ) from exc
            await pending.event.wait()
        finally:
            self._pending.pop(req_id, None)
        reply = pending.reply
        assert reply is not None
        if not reply.get("ok"):
            raise NomadSimError(op, reply)
        result: dict[str, Any] = reply.get("result") or {}
        if isinstance(result.get("stream"), int):
            self._stream_ops[result["stream"]] = op
        if op in ("launch", "reattach") and isinstance(result.get("pid"), int):
            self.plugin_pids.add(result["pid"])
        return result

    def _channel(
        self, stream_id: int
    ) -> tuple[trio.MemorySendChannel[dict[str, Any]], trio.MemoryReceiveChannel[dict[str, Any]]]:
        pair = self._streams.get(stream_id)
        if pair is None:
            pair = trio.open_memory_channel[dict[str, Any]](math.inf)
            self._streams[stream_id] = pair
            if self._closed is not None:
                pair[0].close()
        return pair

    def stream(self, stream_id: int) -> SimStream:
        """The message stream of a stream id returned by a streaming op."""
        return SimStream(
            stream_id, self._channel(stream_id)[1], self._stream_ops.get(stream_id, "stream")
        )

    async def open_stream(self, op: str, **args: Any) -> SimStream:
        """Call a streaming op (fingerprint, task_events, task_stats, exec_streaming)."""
        result = await self.call(op, **args)
        return self.stream(int(result["stream"]))

    async def node_attributes(self, plugin: str = "") -> dict[str, str]:
        """The node's attributes as Nomad's client merged the plugin's fingerprints so far.

        What the scheduler sees: kept across plugin restarts, an attribute sent as "" after
        a value is gone, one left out keeps its value (``node`` op, nomadsim's node.go).
        """
        node = await self.call("node", plugin=plugin)
        attributes: dict[str, str] = node["attributes"]
        return attributes

    async def close_stream(self, stream: SimStream | int) -> None:
        stream_id = stream.id if isinstance(stream, SimStream) else stream
        await self.call("close_stream", stream=stream_id)

    # -- plumbing ----------------------------------------------------------

    def _dispatch(self, msg: dict[str, Any]) -> None:
        if "stream" in msg and "id" not in msg:
            send, _ = self._channel(int(msg["stream"]))
            with suppress(trio.ClosedResourceError):
                send.send_nowait(msg)
            if msg.get("end"):
                send.close()
            return
        req_id = msg.get("id")
        pending = self._pending.get(req_id) if isinstance(req_id, int) else None
        if pending is not None:
            pending.reply = msg
            pending.event.set()

    def _fail_all(self, reason: str) -> None:
        self._closed = reason
        for pending in list(self._pending.values()):
            pending.reply = {"ok": False, "error": reason, "kind": "local"}
            pending.event.set()
        for send, _ in self._streams.values():
            send.close()

    async def _read_loop(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        # Shielded so that the reader keeps dispatching replies while a
        # cancelled caller runs the (shielded) cleanup; it ends at EOF or
        # when _shutdown cancels self._reader_scope.
        with self._reader_scope:
            task_status.started()
            stdout = self.process.stdout
            assert stdout is not None
            pending: list[bytes] = []
            try:
                while True:
                    chunk = await stdout.receive_some(1 << 16)
                    if not chunk:
                        break
                    # Split only the new chunk: a line of many MiB costs linear time.
                    *lines, rest = chunk.split(b"\n")
                    if lines:
                        lines[0] = b"".join([*pending, lines[0]])
                        pending = []
                    for line in lines:
                        if line.strip():
                            self._dispatch(json.loads(line))
                    if rest:
                        pending.append(rest)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                self._fail_all(f"nomadsim exited (returncode {self.process.poll()})")

    async def _shutdown(self) -> None:
        """Quit politely, then make sure the process is gone. Bounded."""
        with trio.move_on_after(CLEANUP_TIMEOUT):
            if self._closed is None and self.process.poll() is None:
                with suppress(NomadSimError):
                    await self.call("quit")
            await self.process.wait()
        if self.process.poll() is None:
            # nomadsim is stuck: kill it, and the plugins it could not stop
            # (Nomad never kills plugins when the agent dies; tests must not leak).
            self.process.kill()
            with trio.move_on_after(5):
                await self.process.wait()
            for pid in self.plugin_pids:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self._reader_scope.cancel()


@asynccontextmanager
async def open_nomadsim(
    *,
    binary: Path | None = None,
    env: Mapping[str, str] | None = None,
    stderr: Path | None = None,
) -> AsyncIterator[NomadSim]:
    """Build (once, cached) and start nomadsim; quit it on exit.

    ``env`` is added to the environment nomadsim (and so every plugin it
    launches) runs with. ``stderr`` optionally captures nomadsim's own
    stderr (the plugin logs go to each ``launch``'s ``log_file``).
    """
    path = binary if binary is not None else await trio.to_thread.run_sync(build_nomadsim)
    full_env = {**os.environ, **(env or {})}
    err_file = stderr.open("ab") if stderr is not None else None
    try:
        process = await trio.lowlevel.open_process(
            [str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err_file,
            env=full_env,
        )
        try:
            async with trio.open_nursery() as nursery:
                sim = NomadSim(process)
                await nursery.start(sim._read_loop)
                try:
                    yield sim
                finally:
                    with trio.CancelScope(shield=True):
                        await sim._shutdown()
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # Only the body can fail (the reader does not raise): hand its
            # exception to the caller unwrapped, so pytest.raises works.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        finally:
            with trio.CancelScope(shield=True):
                if process.poll() is None:
                    process.kill()
                with trio.move_on_after(5):
                    await process.wait()
                for pipe in (process.stdin, process.stdout):
                    if pipe is not None:
                        await pipe.aclose()
    finally:
        if err_file is not None:
            err_file.close()
