"""driver_state: every released version stays decodable."""

from __future__ import annotations

from pathlib import Path

from tart_trio._task.state import STATE_VERSION, decode_state, encode_state

GOLDEN = Path(__file__).parent / "golden"


def test_version_1_golden_state_decodes() -> None:
    state = decode_state((GOLDEN / "driver_state_v1.msgpack").read_bytes())
    assert state.version == 1
    assert state.vm_name == "nomad-6f1c6c9e-2b1c-4f7e-9d33-0a1b2c3d4e5f"
    assert state.supervisor_pid == 4242 and state.supervisor_token == "123456"
    assert state.ip == "192.168.64.5" and state.host_key.startswith("ssh-ed25519 ")
    assert state.task_config.ssh_password == "golden-pw"
    assert state.task_config.directory[0].options is not None
    assert state.task_config.network is not None
    assert state.task_config.network.softnet_expose == ("2222:22",)


def test_current_state_round_trips() -> None:
    state = decode_state((GOLDEN / f"driver_state_v{STATE_VERSION}.msgpack").read_bytes())
    assert decode_state(encode_state(state)) == state
