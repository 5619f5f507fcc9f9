"""The command runner's shell scripts under the shells guests have.

macOS's /bin/sh is bash 3.2 in POSIX mode; Debian's and Ubuntu's is dash (the fake guest's
too). The conformance tests run the scripts in fake guests (dash); here the same scripts
run on this host under ``bash --posix`` as well, with the same protocol the plugin uses.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tart_trio._guest import scripts

SHELLS = [["dash"], ["bash", "--posix"]]


def run_script(shell: list[str], text: str, *args: str, home: Path, **kw: object) -> str:
    argv = [*shell, "-c", text.replace("$__tt_tag", scripts.DEFAULT_TAG), "tart-command", *args]
    env = {"HOME": str(home), "PATH": os.environ["PATH"]}
    return subprocess.run(argv, env=env, capture_output=True, text=True, **kw).stdout  # type: ignore[call-overload, no-any-return]


def launch(shell: list[str], home: Path, job: str, limit: int, *argv: str) -> subprocess.Popen[str]:
    """Start a runner as sshd would: a new session; password and env on stdin."""
    args = [job, str(home), "darwin", str(limit), "1", "", *argv]
    text = scripts.LAUNCH_SCRIPT.replace("$__tt_tag", scripts.DEFAULT_TAG)
    runner = subprocess.Popen(
        [*shell, "-c", text, "tart-command", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={"HOME": str(home), "PATH": os.environ["PATH"]},
        text=True,
        start_new_session=True,
    )
    assert runner.stdin is not None and runner.stdout is not None
    # the task's env may set PATH and IFS; the runner must not depend on them
    env, _ = scripts.env_file({"GREETING": "it's $HOME", "PATH": "/nowhere", "IFS": "x"}, str(home))
    runner.stdin.write("the-password\n" + env.decode())
    runner.stdin.close()
    assert runner.stdout.readline().startswith("tart-command-started ")
    runner.stdout.close()
    return runner


def outcome(shell: list[str], home: Path, job: str) -> list[str]:
    """The waiter's lines up to the first exit/lost line."""
    waiter = subprocess.Popen(
        [*shell, "-c", scripts.WAIT_SCRIPT, "tart-command", job],
        stdout=subprocess.PIPE,
        env={"HOME": str(home), "PATH": os.environ["PATH"]},
        text=True,
        start_new_session=True,
    )
    assert waiter.stdout is not None
    lines = []
    try:
        for line in waiter.stdout:
            lines.append(line.strip())
            if line.startswith(("exit ", "lost ")):
                break
    finally:
        os.killpg(waiter.pid, signal.SIGKILL)
        waiter.wait()
        waiter.stdout.close()
    return lines


@pytest.mark.parametrize("shell", SHELLS, ids=" ".join)
def test_the_runner_records_exits_signals_timeouts_and_its_own_death(
    shell: list[str], tmp_path: Path
) -> None:
    if shutil.which(shell[0]) is None:
        pytest.skip(f"{shell[0]} is not installed")
    (tmp_path / "local").mkdir()
    jobs = tmp_path / ".nomad-tart"
    exits = launch(
        shell, tmp_path, "exits", 0, "/bin/sh", "-c", 'echo "$GREETING"; echo e >&2; exit 3'
    )
    traps = launch(
        shell,
        tmp_path,
        "traps",
        0,
        "/bin/sh",
        "-c",
        "trap 'echo cleaning up; exit 7' TERM; echo ready; while :; do /bin/sleep 0.1; done",
    )
    slow = launch(shell, tmp_path, "slow", 1, "/bin/sleep", "100")
    killed = launch(shell, tmp_path, "killed", 0, "/bin/sleep", "100")
    deadline = time.monotonic() + 10
    while "ready" not in (jobs / "traps" / "out").read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run_script(shell, scripts.SIGNAL_SCRIPT, "traps", "TERM", home=tmp_path) == ""
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()

    assert outcome(shell, tmp_path, "exits") == ["exit 3 11 2"]
    assert (jobs / "exits" / "out").read_text() == "it's $HOME\n"
    assert (jobs / "exits" / "err").read_text() == "e\n"
    assert not (jobs / "exits" / "env").exists(), "the env file is gone once read"
    (trapped,) = outcome(shell, tmp_path, "traps")
    assert trapped.startswith("exit 7 18 "), "the command's group got TERM, the runner survived"
    assert (jobs / "traps" / "out").read_text() == "ready\ncleaning up\n"
    assert outcome(shell, tmp_path, "slow") == ["timeout", "exit 143 0 0"]
    assert outcome(shell, tmp_path, "killed") == ["lost 0 0"]
    gone = subprocess.run(
        [*shell, "-c", scripts.SIGNAL_SCRIPT, "tart-command", "killed", "TERM"],
        env={"HOME": str(tmp_path), "PATH": os.environ["PATH"]},
        check=False,
    )
    assert gone.returncode == 4, "a runner that is gone is not signalled"
    for runner in (exits, traps, slow):
        runner.wait(timeout=10)
