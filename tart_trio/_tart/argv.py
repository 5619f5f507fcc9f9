"""Pure functions from a TaskConfig to ``tart`` argv, exactly as the seed documents them."""

from __future__ import annotations

from collections.abc import Sequence

from tart_trio._config.task import (
    SECRETS_SHARE,
    Directory,
    Network,
    RootDisk,
    TaskConfig,
    network_mode,
    share_name,
)


def network_args(network: Network | None) -> list[str]:
    """``--net-*`` flags; the default shared NAT network needs none."""
    mode = network_mode(network)
    if network is None or mode == "shared":
        return []
    if mode == "host":
        return ["--net-host"]
    if mode == "bridged":
        assert network.bridged_interface is not None
        return ["--net-bridged", network.bridged_interface]
    args = ["--net-softnet"]
    if network.softnet_allow:
        args += ["--net-softnet-allow", ",".join(network.softnet_allow)]
    if network.softnet_expose:
        args += ["--net-softnet-expose", ",".join(network.softnet_expose)]
    return args


def root_disk_opts(root_disk: RootDisk | None) -> str:
    """``ro,caching=<m>,sync=<m>`` as applicable; empty when nothing is set."""
    if root_disk is None:
        return ""
    opts = ["ro"] if root_disk.readonly else []
    if root_disk.caching_mode:
        opts.append(f"caching={root_disk.caching_mode}")
    if root_disk.sync_mode:
        opts.append(f"sync={root_disk.sync_mode}")
    return ",".join(opts)


def dir_spec(directory: Directory) -> str:
    """Tart's ``[name:]path[:ro,tag=...]`` for one directory block."""
    name = share_name(directory)
    spec = f"{name}:{directory.path}" if name is not None else directory.path
    opts = []
    if directory.options is not None:
        if directory.options.readonly:
            opts.append("ro")
        if directory.options.tag is not None:
            opts.append(f"tag={directory.options.tag}")
    return f"{spec}:{','.join(opts)}" if opts else spec


def run_argv(
    vm_name: str, config: TaskConfig, secrets_dir: str, task_shares: Sequence[tuple[str, str]] = ()
) -> list[str]:
    """``tart run`` arguments (without the executable).

    ``task_shares``: more of the task's directories shared read-write beside secrets/
    (name, host path): local/ and alloc/ for a task with a command.
    """
    argv = ["run", vm_name]
    if not config.show_ui:
        argv.append("--no-graphics")
    argv.append(f"--dir={SECRETS_SHARE}:{secrets_dir}:ro")
    argv += [f"--dir={name}:{path}" for name, path in task_shares]
    argv += network_args(config.network)
    opts = root_disk_opts(config.root_disk)
    if opts:
        argv.append(f"--root-disk-opts={opts}")
    argv += [f"--dir={dir_spec(d)}" for d in config.directory]
    return argv


def set_argv(vm_name: str, cpus: int | None, memory_mb: int | None, disk_size: int) -> list[str]:
    """``tart set`` arguments: always a fresh MAC, then resources as given."""
    argv = ["set", vm_name, "--random-mac"]
    if cpus:
        argv += ["--cpu", str(cpus)]
    if memory_mb:
        argv += ["--memory", str(memory_mb)]
    if disk_size > 0:
        argv += ["--disk-size", str(disk_size)]
    return argv
