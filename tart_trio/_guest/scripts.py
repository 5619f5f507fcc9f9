"""The runner of a task's ``command``: POSIX ``sh`` scripts and what they are given.

Pure text, no I/O: the scripts that launch the command detached in the guest, wait for its
status, follow an output file and signal its process group (``/bin/sh`` in the guest: bash
3.2 in POSIX mode on macOS, dash or bash on Linux; no ``setsid``, no GNU-only flags), the
environment file that carries the task's env on stdin, and the signal names the command
may be sent. ``command`` runs them over SSH; ``tests/test_guest_runner.py`` runs them under
dash and ``bash --posix``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from tart_trio._config.task import DEFAULT_TAG

JOBS_DIR: Final = ".nomad-tart"
RUNNER_NAME: Final = "tart-command"
#: Where the default-tag shares (secrets/, local/, alloc-data/, alloc-tmp/, directory blocks)
#: are in the guest.
SHARES_ROOT: Final = {"darwin": "/Volumes/My Shared Files", "linux": "/mnt/shared"}
#: After the time limit: SIGTERM, then this long before SIGKILL.
TIMEOUT_GRACE: Final = 10
#: Signals that may be sent to the command (names common to macOS and Linux).
SIGNALS: Final = frozenset(
    [
        "HUP",
        "INT",
        "QUIT",
        "ILL",
        "TRAP",
        "ABRT",
        "FPE",
        "KILL",
        "BUS",
        "SEGV",
        "SYS",
        "PIPE",
        "ALRM",
        "TERM",
        "URG",
        "STOP",
        "TSTP",
        "CONT",
        "CHLD",
        "TTIN",
        "TTOU",
        "IO",
        "XCPU",
        "XFSZ",
        "VTALRM",
        "PROF",
        "WINCH",
        "USR1",
        "USR2",
    ]
)
_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
#: Variables the guest's ``/bin/sh`` will not let a script set: bash (macOS's ``/bin/sh``
#: is bash in POSIX mode) aborts the script at ``export UID=...``. Left out of the env file.
READONLY_NAMES: Final = frozenset({"BASHOPTS", "BASH_VERSINFO", "EUID", "PPID", "SHELLOPTS", "UID"})

# argv: JOB ROOT OS LIMIT GRACE WORKDIR COMMAND [ARG...]
# stdin: the guest password (one line, for `sudo mount` in Linux guests), then the env file.
LAUNCH_SCRIPT: Final = r"""
__tt_jobs="$HOME/.nomad-tart"
__tt_j="$__tt_jobs/$1"; __tt_root=$2; __tt_os=$3; __tt_limit=$4; __tt_grace=$5; __tt_dir=$6
__tt_drain=5
shift 6
umask 077
mkdir -p "$__tt_jobs" && mkdir "$__tt_j" 2>/dev/null || {
  echo "tart-command-error cannot create $__tt_j (it exists already, or the home is full)"
  exit 70
}
IFS= read -r __tt_pw
cat > "$__tt_j/env" || { echo "tart-command-error cannot write $__tt_j/env"; exit 70; }
if [ "$__tt_os" = linux ] && ! mountpoint -q "$__tt_root" 2>/dev/null; then
  printf '%s\n' "$__tt_pw" | sudo -S -p '' mkdir -p "$__tt_root" >/dev/null 2>&1
  printf '%s\n' "$__tt_pw" | sudo -S -p '' mount -t virtiofs "$__tt_tag" "$__tt_root" \
    >/dev/null 2>&1 || {
    echo "tart-command-error cannot mount the shared folders at $__tt_root (sudo mount -t virtiofs)"
    exit 71
  }
fi
__tt_pw=
# $NOMAD_ALLOC_DIR in the guest: data/ and tmp/ of the allocation's alloc/, never its logs/.
mkdir "$__tt_j/alloc" && ln -s "$__tt_root/alloc-data" "$__tt_j/alloc/data" &&
  ln -s "$__tt_root/alloc-tmp" "$__tt_j/alloc/tmp" || {
  command -p rm -f "$__tt_j/env"
  echo "tart-command-error cannot create $__tt_j/alloc"; exit 70
}
case $__tt_dir in
  /*) ;;
  alloc | alloc/*) __tt_dir="$__tt_j/$__tt_dir" ;;
  *) __tt_dir="$__tt_root/$__tt_dir" ;;
esac
cd "$__tt_dir" 2>/dev/null || {
  command -p rm -f "$__tt_j/env"
  echo "tart-command-error no such directory: $__tt_dir"; exit 72
}
( . "$__tt_j/env" ) >/dev/null 2>&1 || {
  command -p rm -f "$__tt_j/env"
  echo "tart-command-error the guest's /bin/sh refused the task's environment"; exit 73
}
: > "$__tt_j/out"; : > "$__tt_j/err"; : > "$__tt_j/status"
echo "$$ $(echo $(ps -o lstart= -p $$))" > "$__tt_j/pid"
echo "tart-command-started $$"
exec </dev/null >>"$__tt_j/out" 2>>"$__tt_j/runner.log"
trap : HUP INT QUIT TERM USR1 USR2 ALRM
# On Linux the command writes into pipes, copied into out and err by readers in a session
# of their own (signals to the command's group do not reach them): a regular file as
# stdout would be truncated by `> /dev/stdout` or `tee /dev/stderr`, which reopen it there.
# macOS's /dev/fd duplicates the descriptor instead, and has no setsid.
__tt_pipes=
if [ "$__tt_os" = linux ] && command -v setsid >/dev/null 2>&1 &&
  command -p mkfifo "$__tt_j/out.pipe" "$__tt_j/err.pipe" 2>/dev/null; then
  __tt_pipes=1
  setsid cat < "$__tt_j/out.pipe" >> "$__tt_j/out" 2>/dev/null &
  __tt_cout=$!
  setsid cat < "$__tt_j/err.pipe" >> "$__tt_j/err" 2>/dev/null &
  __tt_cerr=$!
fi
. "$__tt_j/env"
command -p rm -f "$__tt_j/env"
export NOMAD_ALLOC_DIR="$__tt_j/alloc"
if [ "$__tt_limit" != 0 ]; then
  (
    trap '' HUP INT QUIT TERM USR1 USR2 ALRM
    command -p sleep "$__tt_limit" || exit 0
    echo timeout >> "$__tt_j/status"
    kill -s TERM -- "-$$" 2>/dev/null
    command -p sleep "$__tt_grace"
    kill -s KILL -- "-$$" 2>/dev/null
  ) &
  __tt_watchdog=$!
fi
if [ -n "$__tt_pipes" ]; then
  ( exec "$@" ) >"$__tt_j/out.pipe" 2>"$__tt_j/err.pipe"
else
  ( exec "$@" ) 2>>"$__tt_j/err"
fi
__tt_code=$?
[ -z "${__tt_watchdog:-}" ] || kill -s KILL "$__tt_watchdog" 2>/dev/null
if [ -n "$__tt_pipes" ]; then
  # The readers end when the last writer is gone; a process the command left running
  # may hold the pipes, so wait at most $__tt_drain seconds (then stop waiting, not them).
  ( command -p sleep "$__tt_drain"; : > "$__tt_j/drained"; kill -s ALRM $$ ) &
  __tt_timer=$!
  while kill -0 "$__tt_cout" 2>/dev/null || kill -0 "$__tt_cerr" 2>/dev/null; do
    [ -e "$__tt_j/drained" ] && break
    wait "$__tt_cout" "$__tt_cerr" 2>/dev/null
  done
  kill -s KILL "$__tt_timer" 2>/dev/null
fi
unset IFS  # the task's environment may have set PATH or IFS: the runner uses neither
set -- $(command -p wc -c < "$__tt_j/out") $(command -p wc -c < "$__tt_j/err")
echo "exit $__tt_code $1 $2" >> "$__tt_j/status"
"""

# argv: JOB. Prints the status lines as they come; "lost OUTSIZE ERRSIZE" when the runner
# is gone without an exit line; "missing" when the job was never started.
WAIT_SCRIPT: Final = r"""
__tt_j="$HOME/.nomad-tart/$1"
[ -f "$__tt_j/pid" ] || { echo missing; exit 0; }
read -r __tt_pid __tt_start < "$__tt_j/pid"
tail -n +1 -f "$__tt_j/status" 2>/dev/null &
__tt_tail=$!
while [ "$(echo $(ps -o lstart= -p "$__tt_pid" 2>/dev/null))" = "$__tt_start" ]; do
  sleep 1
done
if ! grep -q '^exit ' "$__tt_j/status"; then
  set -- $(wc -c < "$__tt_j/out") $(wc -c < "$__tt_j/err")
  echo "lost $1 $2"
fi
kill "$__tt_tail" 2>/dev/null
wait
"""

# argv: JOB FILE OFFSET(1-based). The file from that byte on, and whatever is appended.
FOLLOW_SCRIPT: Final = r"""
__tt_f="$HOME/.nomad-tart/$1/$2"
[ -f "$__tt_f" ] || exit 3
exec tail -c "+$3" -f "$__tt_f" 2>/dev/null
"""

# argv: JOB SIGNAL. Exit 3: never started; 4: the runner is gone.
SIGNAL_SCRIPT: Final = r"""
__tt_j="$HOME/.nomad-tart/$1"
[ -f "$__tt_j/pid" ] || exit 3
read -r __tt_pid __tt_start < "$__tt_j/pid"
[ "$(echo $(ps -o lstart= -p "$__tt_pid" 2>/dev/null))" = "$__tt_start" ] || exit 4
kill -s "$2" -- "-$__tt_pid"
"""


def script(text: str, *args: str) -> list[str]:
    """The argv that runs one of the scripts under the guest's ``/bin/sh``."""
    return ["/bin/sh", "-c", text.replace("$__tt_tag", DEFAULT_TAG), RUNNER_NAME, *args]


def shares_root(guest_os: str) -> str:
    """Where the guest sees the task's shares (secrets/, local/, alloc-data/, alloc-tmp/)."""
    return SHARES_ROOT.get(guest_os, SHARES_ROOT["darwin"])


def env_file(env: Mapping[str, str], root: str) -> tuple[bytes, list[str]]:
    """The task environment as ``export`` lines for ``sh``; and the names left out.

    The directory variables point at the guest's view of the shares. Names a shell
    cannot export (``a.b``), names the guest's shell keeps read-only (``UID``), and values
    with a NUL byte, are left out and returned (names only), so that the caller can say so.
    """
    variables = dict(env)
    variables.update(NOMAD_TASK_DIR=f"{root}/local", NOMAD_SECRETS_DIR=f"{root}/secrets")
    variables.pop("NOMAD_ALLOC_DIR", None)  # the runner's: its view of alloc/data and tmp
    lines, skipped = [], []
    for name in sorted(variables):
        value = variables[name]
        if (
            not _NAME.match(name)
            or name.startswith("__tt_")
            or name in READONLY_NAMES
            or "\0" in value
        ):
            skipped.append(name)
            continue
        quoted = value.replace("'", "'\\''")
        lines.append(f"export {name}='{quoted}'\n")
    return "".join(lines).encode(), skipped


def signal_name(name: str, default: str = "INT") -> str:
    """``SIGTERM``, ``TERM`` or ``""`` (Nomad's default, SIGINT) as ``kill -s`` takes it."""
    bare = name.upper().removeprefix("SIG") or default
    if bare not in SIGNALS:
        raise ValueError(
            f"signal {name!r} is not one the command can be sent; use one of "
            f"{', '.join(sorted('SIG' + s for s in SIGNALS))}"
        )
    return bare
