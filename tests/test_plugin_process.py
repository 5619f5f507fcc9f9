"""The go-plugin process contract: what go-plugin (and so Nomad) requires of the process."""

from __future__ import annotations

import gc
import grp
import json
import os
import re
import signal
import ssl
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpclib.client import Channel
from grpclib.config import Configuration
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from tart_trio._proto.grpc.health.v1 import health_grpc, health_pb2
from tart_trio._proto.hashicorp.nomad.plugins.base import base_grpc, base_pb2
from tart_trio._version import __version__
from tests.plugin_process import nomad_env, plugin_command, running_plugin

_TLS = Configuration(ssl_target_name_override="localhost")
HCLOG_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)$")


def test_started_by_hand_explains_itself_and_exits_1() -> None:
    env = {k: v for k, v in os.environ.items() if k != "NOMAD_PLUGIN_MAGIC_COOKIE"}
    result = subprocess.run(plugin_command(), env=env, capture_output=True, check=False)
    assert result.returncode == 1
    assert result.stdout == b""
    text = result.stderr.decode()
    assert "Nomad task driver plugin" in text and "plugin_dir" in text


def test_version_flag() -> None:
    result = subprocess.run([*plugin_command(), "--version"], capture_output=True, check=True)
    assert result.stdout.decode().strip() == f"nomad-driver-tart {__version__}"


def test_handshake_then_serving_then_clean_exit(tmp_path: Path) -> None:
    with running_plugin() as plugin:
        assert plugin.handshake[:3] == ["1", "2", "unix"]
        assert plugin.handshake[4:] == ["grpc"], "no certificate field without AutoMTLS"
        sock = Path(plugin.socket)
        assert stat.S_ISSOCK(sock.stat().st_mode)
        assert len(str(sock)) < 100

        async def health(channel: Channel) -> health_pb2.HealthCheckResponse:
            return await health_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="plugin")
            )

        assert plugin.call(health).status == health_pb2.HealthCheckResponse.SERVING
        assert plugin.shutdown() == 0
        assert not sock.exists() and not sock.parent.exists()
        assert plugin.process.stdout is not None
        assert plugin.process.stdout.read() == b"", "stdout after the handshake goes to stderr"


def test_socket_dir_and_group_are_honoured(tmp_path: Path) -> None:
    group = grp.getgrgid(os.getgid()).gr_name
    with running_plugin(
        PLUGIN_UNIX_SOCKET_DIR=str(tmp_path), PLUGIN_UNIX_SOCKET_GROUP=group
    ) as plugin:
        sock = Path(plugin.socket)
        assert sock.parent.parent == tmp_path
        assert stat.S_IMODE(sock.stat().st_mode) == 0o660
        assert sock.stat().st_gid == os.getgid()
        assert plugin.shutdown() == 0


def test_sigint_is_ignored() -> None:
    with running_plugin() as plugin:
        plugin.process.send_signal(signal.SIGINT)

        async def info(channel: Channel) -> base_pb2.PluginInfoResponse:
            return await base_grpc.BasePluginStub(channel).PluginInfo(base_pb2.PluginInfoRequest())

        assert plugin.call(info).name == "tart"
        assert plugin.process.poll() is None
        assert plugin.shutdown() == 0


def test_stderr_is_hclog_json_and_a_broken_pipe_is_survived() -> None:
    with running_plugin("--log-level", "debug") as plugin:
        assert plugin.process.stderr is not None
        first = json.loads(plugin.process.stderr.readline())
        assert first["@level"] == "info" and first["@message"] == "plugin serving"
        assert HCLOG_TIMESTAMP.match(first["@timestamp"])
        assert all(isinstance(first[k], str) for k in ("@level", "@message", "@module"))
        plugin.process.stderr.close()  # the agent that read our stderr died

        async def configure(channel: Channel) -> None:
            await base_grpc.BasePluginStub(channel).SetConfig(base_pb2.SetConfigRequest())

        plugin.call(configure)  # logs at debug into the broken pipe
        assert plugin.shutdown() == 0


# Planted as sitecustomize: a dependency that warns when the plugin imports it, as asyncssh
# does under cryptography 51 (DSA is deprecated), and once more while the plugin serves.
_WARNING_DEPENDENCY = """
import sys, warnings

class WarnOnImport:
    def find_spec(self, name, path=None, target=None):
        if name == "grpclib":
            sys.meta_path.remove(self)
            warnings.warn("grpclib: this API is deprecated", UserWarning, stacklevel=2)
        return None

sys.meta_path.insert(0, WarnOnImport())
"""


def test_a_dependency_warning_reaches_nomad_as_an_hclog_line(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(_WARNING_DEPENDENCY)
    with running_plugin(PYTHONPATH=str(tmp_path)) as plugin:

        async def info(channel: Channel) -> base_pb2.PluginInfoResponse:
            return await base_grpc.BasePluginStub(channel).PluginInfo(base_pb2.PluginInfoRequest())

        assert plugin.call(info).name == "tart"
        assert plugin.shutdown() == 0
        assert plugin.process.stderr is not None
        lines = plugin.process.stderr.read().decode().splitlines()
    entries = [json.loads(line) for line in lines]  # every line is one hclog object
    warned = [e for e in entries if "this API is deprecated" in e["@message"]]
    assert len(warned) == 1, lines
    assert warned[0]["@level"] == "warn"
    assert warned[0]["@module"] == "nomad-driver-tart.warnings"
    assert warned[0]["@message"] == "UserWarning: grpclib: this API is deprecated"


def test_receive_limit_is_well_above_4_mib() -> None:
    with running_plugin() as plugin:

        async def configure(channel: Channel) -> None:
            await base_grpc.BasePluginStub(channel).SetConfig(
                base_pb2.SetConfigRequest(msgpack_config=b"\xc1" * (8 << 20))
            )

        with pytest.raises(GRPCError) as caught:
            plugin.call(configure)
        assert caught.value.status == Status.INVALID_ARGUMENT  # decoded, not refused
        assert plugin.shutdown() == 0


def _client_certificate(tmp_path: Path) -> tuple[str, Path, Path]:
    key = ec.generate_private_key(ec.SECP521R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    import datetime

    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA512())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "client.pem").write_bytes(pem)
    (tmp_path / "client.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pem.decode(), tmp_path / "client.pem", tmp_path / "client.key"


# grpclib's client leaves the transports of refused TLS handshakes for the GC to close.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_auto_mtls_when_the_host_asks_for_it(tmp_path: Path) -> None:
    import base64

    client_pem, cert_file, key_file = _client_certificate(tmp_path)
    with running_plugin(PLUGIN_CLIENT_CERT=client_pem) as plugin:
        assert len(plugin.handshake) == 6
        der = base64.b64decode(plugin.handshake[5] + "=" * (-len(plugin.handshake[5]) % 4))
        assert "=" not in plugin.handshake[5]
        server_cert = x509.load_der_x509_certificate(der)
        (tmp_path / "server.pem").write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))

        def context(with_cert: bool) -> ssl.SSLContext:
            ctx = ssl.create_default_context(cafile=str(tmp_path / "server.pem"))
            ctx.set_alpn_protocols(["h2"])
            if with_cert:
                ctx.load_cert_chain(cert_file, key_file)
            return ctx

        async def info(channel: Channel) -> base_pb2.PluginInfoResponse:
            return await base_grpc.BasePluginStub(channel).PluginInfo(base_pb2.PluginInfoRequest())

        assert plugin.call(info, ssl=context(True), config=_TLS).name == "tart"
        with pytest.raises(
            (ssl.SSLError, ConnectionError, GRPCError, OSError, StreamTerminatedError)
        ):
            plugin.call(info, ssl=context(False), config=_TLS)
        with pytest.raises((ConnectionError, GRPCError, OSError, StreamTerminatedError)):
            plugin.call(info)  # plaintext is refused too
        plugin.process.kill()
    gc.collect()


def test_plain_env_gets_no_certificate_field() -> None:
    env = nomad_env()
    assert "PLUGIN_CLIENT_CERT" not in env
