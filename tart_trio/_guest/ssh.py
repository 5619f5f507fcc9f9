"""Guest access over SSH: the only module that imports asyncssh.

Every asyncssh call runs on the one asyncio loop through ``_bridge``; cancelling the trio
scope around a call cancels the asyncio task and closes the SSH channel under it. Host
keys are pinned on first contact (trust on first use): a later, different key is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import shlex
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final

import msgspec
import trio

from tart_trio._bridge import run_aio
from tart_trio._errors import TartTrioError

if TYPE_CHECKING:
    import asyncssh
else:

    class _OnFirstUse(ModuleType):
        """asyncssh (with cryptography) costs ~0.1 s to import. Nomad launches the plugin
        up to three times per agent start, and nothing needs SSH before a task starts."""

        def __getattr__(self, name: str) -> Any:
            module = importlib.import_module("asyncssh")
            globals()["asyncssh"] = module
            return getattr(module, name)

    asyncssh = _OnFirstUse("asyncssh")

CONNECT_SECONDS: Final = 10.0
KEEPALIVE_SECONDS: Final = 60
# AES-GCM first: about half the CPU of asyncssh's default choice for the log stream.
CIPHERS: Final = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
)
_CHUNK: Final = 65536


class GuestError(TartTrioError):
    """The guest could not be reached or refused us."""


class HostKeyMismatch(GuestError):
    """The guest presented a host key other than the one pinned at first contact."""


class GuestAddress(msgspec.Struct, frozen=True):
    """Where and as whom to log in. The password never appears in repr."""

    host: str
    user: str
    password: str
    port: int = 22
    host_key: str = ""

    def __repr__(self) -> str:
        return f"GuestAddress({self.user}@{self.host}:{self.port})"


class ExecResult(msgspec.Struct, frozen=True):
    """A finished remote command."""

    stdout: bytes
    stderr: bytes
    exit_code: int
    signal: str = ""
    truncated: bool = False


class Gate:
    """Backpressure for an SSH read loop: opened and closed from trio, awaited in asyncio.

    A read loop that finds the gate closed stops reading its channel; asyncssh then stops
    granting the guest flow-control window, and the guest's writer waits. Both sides run
    on one thread (trio-asyncio), so opening resolves the asyncio waiters directly.
    """

    def __init__(self) -> None:
        self._open = True
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def is_open(self) -> bool:
        """Whether readers may go on."""
        return self._open

    def open(self) -> None:
        """Let waiting readers go on."""
        self._open = True
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def close(self) -> None:
        """Make readers wait at their next chunk."""
        self._open = False

    async def wait_open(self) -> None:
        """(asyncio side) Return once the gate is open."""
        while not self._open:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter


def shell_join(argv: Sequence[str]) -> str:
    """One POSIX shell command line whose words are exactly ``argv``."""
    return " ".join(shlex.quote(arg) for arg in argv)


def _options(address: GuestAddress) -> dict[str, Any]:
    known: Any = None
    if address.host_key:
        known = asyncssh.import_known_hosts(f"{address.host} {address.host_key}\n")
    return {
        "host": address.host,
        "port": address.port,
        "username": address.user,
        "password": address.password,
        "known_hosts": known,
        "client_keys": None,
        "agent_path": None,
        "preferred_auth": "keyboard-interactive,password",
        "connect_timeout": CONNECT_SECONDS,
        "login_timeout": CONNECT_SECONDS,
        "keepalive_interval": KEEPALIVE_SECONDS,
        "encryption_algs": CIPHERS,
    }


async def _connect(address: GuestAddress) -> asyncssh.SSHClientConnection:
    try:
        return await asyncssh.connect(**_options(address))
    except asyncssh.HostKeyNotVerifiable as exc:
        raise HostKeyMismatch(
            f"the SSH host key of the VM at {address.host} changed since first contact; "
            "refusing to connect (a different machine may be answering on this address)"
        ) from exc
    except asyncssh.PermissionDenied as exc:
        raise GuestError(
            f"SSH login as {address.user!r} at {address.host} was refused: check ssh_user "
            "and ssh_password"
        ) from exc
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        raise GuestError(f"cannot reach the VM over SSH at {address.host}: {exc}") from exc


def _export_key(conn: asyncssh.SSHClientConnection) -> str:
    key = conn.get_server_host_key()
    return "" if key is None else key.export_public_key().decode().strip()


class Guest:
    """An open SSH connection to a VM."""

    def __init__(self, conn: asyncssh.SSHClientConnection, address: GuestAddress) -> None:
        self._conn = conn
        self.address = address
        self.host_key = _export_key(conn)

    @property
    def closed(self) -> bool:
        """Whether the connection is gone (closed by us, the guest or the network)."""
        return bool(self._conn.is_closed())

    async def run(
        self, argv: Sequence[str], *, stdin: bytes | None = None, max_output: int = 1 << 20
    ) -> ExecResult:
        """Run argv; capture at most ``max_output`` bytes of each stream.

        Cancellation (a timeout around the call) kills the remote process.
        """
        try:
            return await run_aio(self._run_aio, shell_join(argv), stdin, max_output)
        except (OSError, asyncssh.Error) as exc:
            raise GuestError(f"SSH command failed on {self.address.host}: {exc}") from exc

    async def _run_aio(self, command: str, stdin: bytes | None, limit: int) -> ExecResult:
        async with self._conn.create_process(command, encoding=None) as process:
            try:
                if stdin is not None:
                    process.stdin.write(stdin)
                process.stdin.write_eof()
                outputs = [bytearray(), bytearray()]
                truncated = False

                async def drain(stream: Any, buf: bytearray) -> None:
                    nonlocal truncated
                    while chunk := await stream.read(_CHUNK):
                        room = limit - len(buf)
                        if len(chunk) > room:
                            truncated = True
                        buf.extend(chunk[: max(room, 0)])

                await asyncio.gather(
                    drain(process.stdout, outputs[0]), drain(process.stderr, outputs[1])
                )
                completed = await process.wait()
            except BaseException:
                _kill(process)
                raise
        return ExecResult(
            stdout=bytes(outputs[0]),
            stderr=bytes(outputs[1]),
            exit_code=completed.exit_status if completed.exit_status is not None else -1,
            signal=(completed.exit_signal or ("", False, "", ""))[0] or "",
            truncated=truncated,
        )

    async def stream(
        self,
        argv: Sequence[str],
        on_data: Callable[[bytes], None],
        on_started: Callable[[], None] = lambda: None,
        gate: Gate | None = None,
    ) -> int:
        """Run argv and hand stdout to ``on_data`` as it arrives; return the exit status.

        ``on_started`` is called once the remote process runs. While ``gate`` is closed
        the channel is not read, which pauses the remote writer.
        """
        try:
            return await run_aio(self._stream_aio, shell_join(argv), on_data, on_started, gate)
        except (OSError, asyncssh.Error) as exc:
            raise GuestError(f"SSH stream ended on {self.address.host}: {exc}") from exc

    async def shutdown(self) -> None:
        """Ask the guest OS to power off (``sudo shutdown -h now``; the password on stdin).

        The connection usually drops as the guest goes down; that counts as success.
        """
        try:
            await self.run(
                ["sudo", "-S", "shutdown", "-h", "now"], stdin=f"{self.address.password}\n".encode()
            )
        except GuestError as exc:
            if not isinstance(exc.__cause__, asyncssh.ConnectionLost):
                raise

    async def _stream_aio(
        self,
        command: str,
        on_data: Callable[[bytes], None],
        on_started: Callable[[], None],
        gate: Gate | None,
    ) -> int:
        async with self._conn.create_process(
            command, encoding=None, stderr=asyncssh.DEVNULL
        ) as process:
            try:
                process.stdin.write_eof()
                on_started()
                while chunk := await process.stdout.read(_CHUNK):
                    on_data(chunk)
                    if gate is not None and not gate.is_open:
                        await gate.wait_open()
                completed = await process.wait()
            except BaseException:
                _kill(process)
                raise
        return completed.exit_status if completed.exit_status is not None else -1

    async def aclose(self) -> None:
        """Close the connection (shielded; bounded)."""
        self._conn.close()
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            await run_aio(self._conn.wait_closed)


def _kill(process: Any) -> None:
    with contextlib.suppress(OSError, asyncssh.Error):
        process.kill()
    process.close()


@asynccontextmanager
async def open_guest(address: GuestAddress) -> AsyncIterator[Guest]:
    """Connect (pinning the host key when ``address.host_key`` is set) and close on exit."""
    conn = await run_aio(_connect, address)
    guest = Guest(conn, address)
    try:
        yield guest
    finally:
        await guest.aclose()


async def wait_for_guest(
    address: GuestAddress, *, first_delay: float = 0.5, max_delay: float = 5.0
) -> str:
    """Retry until the guest accepts our login; return its host key (for pinning).

    A refused password or a changed host key fails at once; unreachable retries with
    backoff until the caller's deadline.
    """
    delay = first_delay
    while True:
        try:
            async with open_guest(address) as guest:
                return guest.host_key
        except HostKeyMismatch:
            raise
        except GuestError as exc:
            if isinstance(exc.__cause__, asyncssh.PermissionDenied):
                raise
        await trio.sleep(delay)
        delay = min(delay * 2, max_delay)


def login_refused(exc: GuestError) -> bool:
    """Whether the guest refused the login (a wrong user or password), not unreachable."""
    return isinstance(exc.__cause__, asyncssh.PermissionDenied)


async def reach_guest(
    address: GuestAddress, within: float, *, first_delay: float = 0.25, max_delay: float = 2.0
) -> Guest:
    """Connect, retrying for ``within`` seconds while the guest is unreachable.

    A refused login or a changed host key fails at once. The caller closes the guest.
    """
    delay = first_delay
    last: GuestError | None = None
    with trio.move_on_after(within):
        while True:
            try:
                conn = await run_aio(_connect, address)
            except HostKeyMismatch:
                raise
            except GuestError as exc:
                if isinstance(exc.__cause__, asyncssh.PermissionDenied):
                    raise
                last = exc
            else:
                return Guest(conn, address)
            await trio.sleep(delay)
            delay = min(delay * 2, max_delay)
    raise GuestError(f"the VM was not reachable over SSH within {within:.0f}s: {last}")
