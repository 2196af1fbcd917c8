"""A real Mosquitto broker for tests, on a free loopback port, that a test can stop and restart.

Import the fixture into a test module with ``from tests.mqtt_broker import mqtt_broker``
(pytest finds fixtures imported into a module), or use ``MosquittoBroker`` directly,
e.g. from a test that launches real peer processes.

Mosquitto is a hard requirement, not an optional extra: a missing binary fails the
test with the install command instead of skipping it, so CI cannot go green by
silently not testing discovery. The Debian package is ``mosquitto``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

INSTALL_HINT = ("mosquitto is not installed: install the Debian package "
                "(`apt-get install -y mosquitto`) or point $MOSQUITTO at the binary")
# Debian installs the broker in /usr/sbin, which is not on a normal user's PATH.
_FALLBACK_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def find_mosquitto() -> str:
    """Path of the mosquitto binary, or ``pytest.fail`` saying how to install it."""
    explicit = os.environ.get("MOSQUITTO")
    if explicit:
        if os.access(explicit, os.X_OK):
            return explicit
        pytest.fail(f"$MOSQUITTO={explicit!r} is not an executable file; {INSTALL_HINT}")
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in _FALLBACK_PATHS:
        if os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(INSTALL_HINT)


def _passwd_tool() -> str:
    """mosquitto_passwd, from the same Debian package as the broker."""
    found = shutil.which("mosquitto_passwd") or next(
        (p for p in ("/usr/bin/mosquitto_passwd", "/usr/sbin/mosquitto_passwd") if os.access(p, os.X_OK)), None)
    if found is None:
        pytest.fail(INSTALL_HINT)
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the broker binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class MosquittoBroker:
    """One ``mosquitto`` process on ``host:port``; ``start`` / ``stop`` / ``kill`` / ``restart``.

    The port is chosen once, so a restarted broker comes back where clients expect it.
    Persistence is off: a restarted broker has forgotten every retained message, which
    is the harder case for discovery (peers must announce themselves again).
    """

    def __init__(self, workdir: Path, host: str = "127.0.0.1", port: int | None = None,
                 users: dict[str, str] | None = None, tls: tuple[Path, Path, Path] | None = None,
                 require_certificate: bool = False) -> None:
        """``users`` (name -> password): only they may connect (a mosquitto_passwd file).
        ``tls`` (CA, certificate, key): the listener speaks TLS only; ``require_certificate``
        makes it demand a client certificate signed by that CA."""
        self.binary = find_mosquitto()
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "mosquitto.conf"
        access = "allow_anonymous true\n"
        if users is not None:
            password_file = workdir / "passwords"
            password_file.write_text("")
            password_file.chmod(0o600)
            for name, password in users.items():
                subprocess.run([_passwd_tool(), "-b", str(password_file), name, password], check=True,
                               capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
            access = f"allow_anonymous false\npassword_file {password_file}\n"
        if tls is not None:
            ca, cert, key = tls
            access += (f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
                       f"require_certificate {'true' if require_certificate else 'false'}\n")
        self.config_path.write_text(
            f"listener {self.port} {host}\n"
            # Started as root (CI), mosquitto would drop to the `mosquitto` user before reading
            # the password and TLS files, which sit in the test's private (0700) directory.
            # Without root this line has no effect.
            "user root\n"
            f"{access}"
            "persistence false\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            "connection_messages true\n")
        self.log_path = workdir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def address(self) -> str:
        """``host:port``, the form MqttDiscovery and the daemon's config take."""
        return f"{self.host}:{self.port}"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def start(self, timeout: float = 15.0) -> None:
        """Start the broker and return once it accepts TCP connections (or fail, with its log)."""
        assert self.proc is None or self.proc.poll() is not None, "broker already running"
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"--- start #{self.starts}\n".encode())
            log.flush()
            self.proc = subprocess.Popen([self.binary, "-c", str(self.config_path)],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"mosquitto exited with {self.proc.returncode} at start:\n{self.log_text()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"mosquitto did not accept connections on {self.address} within {timeout} s:\n"
                            f"{self.log_text()}")
            time.sleep(0.02)  # polling a port with a deadline

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM): the broker closes every client connection."""
        self._end(signal.SIGTERM, timeout)

    def kill(self, timeout: float = 10.0) -> None:
        """Abrupt stop (SIGKILL): the kernel closes the sockets, the broker says nothing."""
        self._end(signal.SIGKILL, timeout)

    def restart(self, timeout: float = 15.0) -> None:
        self.stop()
        self.start(timeout)

    def _end(self, sig: signal.Signals, timeout: float) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


@pytest.fixture
def mqtt_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A running Mosquitto broker on a free loopback port, killed at teardown."""
    broker = MosquittoBroker(tmp_path / "mosquitto")
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()
