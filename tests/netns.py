"""Linux network namespaces on one bridge, for tests that need real, separate hosts.

Why: loopback cannot show what a deployment sees — distinct addresses per peer, names
resolved through /etc/hosts the way Docker's DNS resolves service names, links that
go down. A ``NetnsLab`` gives each instance its own network namespace with one veth
leg on a shared Linux bridge and its own IPv4 address, plus optional per-namespace
/etc/hosts and a way to cut and restore its link (the membership partition test).

Pure wrappers around the ``ip`` command (iproute2); needs root (CAP_NET_ADMIN and
CAP_SYS_ADMIN). Every object is named with the lab's prefix so that ``cleanup_prefix``
can remove what an earlier, killed run left behind: leaked namespaces or bridges
would otherwise break the next run (same names, same addresses).
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# `ip netns exec NS` bind-mounts /etc/netns/NS/<file> over /etc/<file>.
NETNS_ETC = Path("/etc/netns")
# Interface names are at most 15 bytes (IFNAMSIZ 16 with the NUL).
IFNAMSIZ = 15
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class NetnsError(RuntimeError):
    """An ``ip`` command failed; the message holds the command and its stderr."""


def require_root() -> None:
    """Raise ``PermissionError`` with a clear message unless running as root."""
    if os.geteuid() != 0:
        raise PermissionError("network namespaces need root (CAP_NET_ADMIN, CAP_SYS_ADMIN): "
                              "run this as root, e.g. with sudo")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS``; on failure raise ``NetnsError`` naming the command (unless ``check`` is off)."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip() or f'exit {done.returncode}'}")
    return done


def namespaces() -> list[str]:
    """Names of the named network namespaces (``ip netns list``)."""
    out = ip("netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def links() -> list[str]:
    """Names of the links in the current namespace (without the ``@peer`` suffix)."""
    out = ip("-o", "link", "show").stdout
    names = []
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@")[0])
    return names


def pids_in(namespace: str) -> list[int]:
    """Processes whose network namespace is ``namespace`` (``ip netns pids``)."""
    out = ip("netns", "pids", namespace, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def kill_namespace_processes(namespace: str, timeout: float = 10.0) -> None:
    """SIGKILL every process in ``namespace`` and wait until none is left (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        pids = pids_in(namespace)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() >= deadline:
            raise NetnsError(f"processes {pids} in namespace {namespace} survived SIGKILL for {timeout:.0f} s")
        time.sleep(0.05)  # polling the kernel's view with a deadline


def delete_namespace(namespace: str) -> None:
    """Kill what runs in ``namespace``, delete it (its veth legs go with it) and its /etc/netns files."""
    if namespace in namespaces():
        kill_namespace_processes(namespace)
        ip("netns", "delete", namespace)
    shutil.rmtree(NETNS_ETC / namespace, ignore_errors=True)


def cleanup_prefix(prefix: str) -> list[str]:
    """Remove every namespace, link and /etc/netns entry whose name starts with ``prefix``.

    Returns what was removed. Safe to call when nothing is left over.
    """
    if len(prefix) < 3:
        raise ValueError("refusing a prefix shorter than 3 characters: it could match foreign objects")
    removed = []
    for ns in namespaces():
        if ns.startswith(prefix):
            delete_namespace(ns)
            removed.append(ns)
    for link in links():
        if link.startswith(prefix):
            ip("link", "delete", link, check=False)
            removed.append(link)
    if NETNS_ETC.is_dir():
        for entry in NETNS_ETC.iterdir():
            if entry.name.startswith(prefix):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(str(entry))
    return removed


def run_prefix(tag: str, pid: int | None = None) -> str:
    """A prefix unique to this process: ``<tag><pid>x`` (``x`` ends the number).

    Encoding the owner's pid lets ``cleanup_stale`` tell what a dead run leaked from
    what a run still in progress (another test session on the machine) is using.
    """
    if not re.fullmatch(r"[a-z]{2,3}", tag):
        raise ValueError("tag: 2 or 3 lower-case letters")
    return f"{tag}{os.getpid() if pid is None else pid}x"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale(tag: str) -> list[str]:
    """Remove the leftovers of every ``run_prefix(tag, pid)`` whose process ``pid`` is gone."""
    owner = re.compile(rf"^{re.escape(tag)}(\d+)x")
    candidates = [*namespaces(), *links()]
    if NETNS_ETC.is_dir():
        candidates += [e.name for e in NETNS_ETC.iterdir()]
    removed: list[str] = []
    for pid in sorted({int(m.group(1)) for name in candidates if (m := owner.match(name))}):
        if pid != os.getpid() and not _alive(pid):
            removed += cleanup_prefix(run_prefix(tag, pid))
    return removed


@dataclass(frozen=True)
class Endpoint:
    """One namespace on the bridge: its name, its IPv4 address, and the host leg of its veth."""

    label: str
    namespace: str
    address: str
    host_link: str
    inner_link: str

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside this namespace (with its /etc/netns files mounted)."""
        return ["ip", "netns", "exec", self.namespace, *argv]


def remove_endpoints(endpoints: Iterable[Endpoint]) -> list[str]:
    """Kill every process in the endpoints' namespaces and delete the namespaces and their
    host veth legs; the errors, one line each, for the caller to raise after its own cleanup."""
    errors = []
    for endpoint in endpoints:
        try:
            delete_namespace(endpoint.namespace)
        except NetnsError as e:
            errors.append(str(e))
        ip("link", "delete", endpoint.host_link, check=False)  # gone with the namespace, normally
    return errors


@dataclass
class NetnsLab:
    """A Linux bridge and namespaces attached to it, all named ``<prefix>...``; ``close`` removes all.

    ``prefix`` must be short (interface names are limited to 15 bytes) and unique to
    the run; ``subnet`` is private to the bridge, which gets no address of its own, so
    the host's routing is untouched and two labs may even reuse a subnet.
    """

    prefix: str
    subnet: str = "10.77.0.0/24"
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    _bridge: str | None = None
    _hosts: list[ipaddress.IPv4Address] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not _NAME.match(self.prefix) or len(self.prefix) > 11:
            raise ValueError(f"prefix {self.prefix!r}: use at most 11 letters/digits (interface names are short)")
        network = ipaddress.ip_network(self.subnet)
        if not isinstance(network, ipaddress.IPv4Network):
            raise ValueError("subnet must be IPv4")
        self._hosts = list(network.hosts())

    @property
    def bridge(self) -> str:
        """Create the bridge on first use; its name."""
        if self._bridge is None:
            name = f"{self.prefix}br"
            ip("link", "add", name, "type", "bridge")
            self._bridge = name  # recorded before the next command, so close() removes it on failure
            ip("link", "set", name, "up")
        return self._bridge

    def add(self, label: str, hosts: Mapping[str, str] | None = None) -> Endpoint:
        """A new namespace ``<prefix>-<label>`` with the next free address of the subnet.

        ``hosts`` (name -> address) becomes its /etc/hosts, after the usual loopback
        lines: that is how a program inside resolves compose-style service names.
        """
        if label in self.endpoints:
            raise ValueError(f"endpoint {label!r} exists")
        if not _NAME.match(label):
            raise ValueError(f"label {label!r} is not a plain name")
        index = len(self.endpoints)
        if index >= len(self._hosts):
            raise ValueError(f"subnet {self.subnet} is full")
        bridge = self.bridge
        namespace = f"{self.prefix}-{label}"
        host_link, inner_link = f"{self.prefix}h{index}", f"{self.prefix}n{index}"
        if len(host_link) > IFNAMSIZ:
            raise ValueError(f"interface name {host_link!r} is too long")
        address = str(self._hosts[index])
        prefixlen = ipaddress.ip_network(self.subnet).prefixlen
        ip("netns", "add", namespace)
        endpoint = Endpoint(label, namespace, address, host_link, inner_link)
        self.endpoints[label] = endpoint  # recorded first: close() cleans up a half-built endpoint
        ip("link", "add", host_link, "type", "veth", "peer", "name", inner_link)
        ip("link", "set", inner_link, "netns", namespace)
        ip("link", "set", host_link, "master", bridge)
        ip("link", "set", host_link, "up")
        ip("-n", namespace, "link", "set", "lo", "up")
        ip("-n", namespace, "addr", "add", f"{address}/{prefixlen}", "dev", inner_link)
        ip("-n", namespace, "link", "set", inner_link, "up")
        if hosts is not None:
            self.write_hosts(endpoint, hosts)
        return endpoint

    def write_hosts(self, endpoint: Endpoint, hosts: Mapping[str, str]) -> Path:
        """Write /etc/netns/<ns>/hosts: loopback, then one ``address name`` line per entry."""
        directory = NETNS_ETC / endpoint.namespace
        directory.mkdir(parents=True, exist_ok=True)
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        lines += [f"{address}\t{name}" for name, address in hosts.items()]
        path = directory / "hosts"
        path.write_text("\n".join(lines) + "\n")
        return path

    def cut(self, endpoint: Endpoint) -> None:
        """Take the namespace off the bridge (its host veth leg down): a network partition."""
        ip("link", "set", endpoint.host_link, "down")

    def restore(self, endpoint: Endpoint) -> None:
        """Undo ``cut``: the host veth leg up again."""
        ip("link", "set", endpoint.host_link, "up")

    def close(self) -> None:
        """Kill every process in the lab's namespaces and delete namespaces, veths and the bridge."""
        errors = remove_endpoints(self.endpoints.values())
        self.endpoints.clear()
        if self._bridge is not None:
            ip("link", "delete", self._bridge, check=False)
            self._bridge = None
        if errors:
            raise NetnsError("; ".join(errors))

    def __enter__(self) -> NetnsLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
