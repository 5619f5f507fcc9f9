"""Domain types the driver hands to the rpc layer (which turns them into protobuf)."""

from __future__ import annotations

from collections.abc import ItemsView, Mapping
from datetime import datetime
from typing import Literal

import msgspec

Health = Literal["undetected", "unhealthy", "healthy"]
AttributeValue = str | int | float | bool


class PluginInfo(msgspec.Struct, frozen=True):
    """What the plugin tells Nomad about itself."""

    name: str
    version: str
    api_versions: tuple[str, ...]


class Capabilities(msgspec.Struct, frozen=True):
    """The driver features Nomad may rely on."""

    send_signals: bool
    exec: bool
    fs_isolation: Literal["none", "chroot", "image"]
    network_isolation_modes: tuple[Literal["host", "group", "task", "none"], ...]
    must_create_network: bool
    mount_configs: Literal["any", "none"]
    disable_log_collection: bool
    dynamic_workload_users: bool


class Fingerprint(msgspec.Struct, frozen=True):
    """One fingerprint report: node attributes and the driver's health."""

    attributes: dict[str, AttributeValue]
    health: Health
    description: str


class TaskEvent(msgspec.Struct, frozen=True):
    """A line in ``nomad alloc status`` for one task."""

    task_id: str
    alloc_id: str
    task_name: str
    timestamp: datetime
    message: str
    annotations: dict[str, str] = {}


class ExitResult(msgspec.Struct, frozen=True):
    """How a task ended. ``err`` is set only when it did not end by itself."""

    exit_code: int = 0
    signal: int = 0
    oom_killed: bool = False
    err: str = ""


class PortMapping(msgspec.Struct, frozen=True, kw_only=True):
    """One port of the group's ``network`` block as Nomad allocated it on this node."""

    label: str
    #: The host's port (static or dynamic).
    value: int
    #: The port inside the task (``to``); 0 when the job does not set it.
    to: int = 0
    #: The host address the port is allocated on (the node's, or a host_network's).
    host_ip: str = ""

    @property
    def guest_port(self) -> int:
        """The port the task listens on: ``to`` when set, else the host's port (Docker's rule)."""
        return self.to if self.to > 0 else self.value


class NomadTask(msgspec.Struct, frozen=True, kw_only=True):
    """The parts of Nomad's TaskConfig the driver uses (the environment is a TaskEnv)."""

    id: str
    name: str
    alloc_id: str
    alloc_dir: str
    stdout_path: str = ""
    stderr_path: str = ""
    job_name: str = ""
    task_group_name: str = ""
    namespace: str = ""
    cpuset_cpus: str = ""
    cpu_shares: int = 0
    memory_mb: int = 0
    memory_max_mb: int = 0
    user: str = ""
    #: cpu_shares / the node's usable compute (LinuxResources.PercentTicks, on every OS).
    percent_ticks: float = 0.0
    #: The group network's ports allocated to the allocation (``resources.ports``).
    ports: tuple[PortMapping, ...] = ()

    @property
    def reserved_cores(self) -> int:
        """Cores reserved with ``resources.cores`` (0 when only cpu MHz was asked for)."""
        return len([c for c in self.cpuset_cpus.split(",") if c.strip()])


class TaskEnv:
    """The task's environment as Nomad built it: the env block, env templates, ``NOMAD_*``.

    It can hold secrets (values rendered from Vault or Nomad variables), so it is handed
    only to the guest command's runner: never logged, stored or put in an argv. Its repr
    shows how many variables it holds, never what they are.
    """

    __slots__ = ("_variables",)

    def __init__(self, variables: Mapping[str, str] | None = None) -> None:
        self._variables = dict(variables or {})

    def __len__(self) -> int:
        return len(self._variables)

    def items(self) -> ItemsView[str, str]:
        """Name and value of every variable."""
        return self._variables.items()

    def __repr__(self) -> str:
        return f"TaskEnv(<{len(self._variables)} variables>)"

    __str__ = __repr__


TaskPhase = Literal["starting", "running", "exited"]


class TaskStatus(msgspec.Struct, frozen=True):
    """InspectTask's answer."""

    id: str
    name: str
    phase: TaskPhase
    started_at: datetime
    completed_at: datetime | None
    result: ExitResult | None
    attributes: dict[str, str]


class HostCompute(msgspec.Struct, frozen=True):
    """The host's CPU as Nomad counts it: total MHz over all cores, and the core count."""

    total_mhz: float
    cores: int


class ProcessUsage(msgspec.Struct, frozen=True):
    """What one process (or all of the VM's) uses, with the meanings Nomad gives them.

    ``cpu_percent`` is summed over processes, 100 for each core kept busy; ``cpu_mhz`` is
    Nomad's ``TotalTicks``: the CPU in use now in MHz (percent / 100 * total MHz / cores),
    None when the host's capacity is unknown; ``rss_bytes`` is the resident set size.
    """

    cpu_percent: float
    cpu_mhz: float | None
    rss_bytes: int


class ResourceUsage(msgspec.Struct, frozen=True):
    """One TaskStats sample of the processes that make up the VM."""

    timestamp: datetime
    total: ProcessUsage
    by_pid: dict[str, ProcessUsage] = {}


class ExecOutput(msgspec.Struct, frozen=True):
    """ExecTask's answer: the captured output (each stream capped) and how the command ended."""

    stdout: bytes
    stderr: bytes
    result: ExitResult


class StdinData(msgspec.Struct, frozen=True):
    """Bytes a ``nomad alloc exec`` user typed or piped."""

    data: bytes


class StdinClose(msgspec.Struct, frozen=True):
    """The exec user's stdin ended."""


class TerminalResize(msgspec.Struct, frozen=True):
    """The exec user's terminal changed size."""

    width: int
    height: int


ExecInput = StdinData | StdinClose | TerminalResize
ExecStream = Literal["stdout", "stderr"]
