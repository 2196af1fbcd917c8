"""Groups of network namespaces, one bridge per group, bridges joined by one veth pair.

Why: the partition test must split the swarm into two sides that each stay connected
inside. ``tests.netns.NetnsLab.cut`` takes a single namespace off its bridge, so cutting
every namespace of one side would also cut that side's peers from each other. Here
each group has its own bridge, the two bridges are joined by one veth pair (the
"trunk"), and ``cut`` / ``restore`` take the trunk down / up: a clean partition with
both sides intact. All addresses share one subnet, so the peers see one flat LAN.

Everything is named ``<prefix>...`` (``tests.netns.run_prefix``), so ``close`` and
``tests.netns.cleanup_stale`` remove it all, including after a killed run.

``AdminAgent`` is a long-lived process inside one namespace that answers admin queries
(status, peers) over a pipe: a peer's admin API listens on the namespace's own
loopback, which the test process cannot reach, and starting ``hearsay status`` for
every query costs a quarter of a CPU-second each, too much on 2 shared cores.
"""

from __future__ import annotations

import ipaddress
import json
import os
import select
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

from tests.netns import IFNAMSIZ, Endpoint, NetnsError, ip, remove_endpoints


@dataclass
class GroupLab:
    """Namespaces in named groups; each group on its own bridge; ``trunk`` joins two bridges.

    Interface names: bridge ``<prefix>b<g>``, namespace veth ``<prefix><g><i>`` (host
    leg) / ``<prefix><g><i>i`` (inside), trunk ``<prefix>t<g>``; group names are one
    lower-case letter so these fit the 15-byte limit with an 11-character prefix.
    """

    prefix: str
    subnet: str = "10.78.0.0/24"
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    groups: dict[str, list[Endpoint]] = field(default_factory=dict)
    _bridges: dict[str, str] = field(default_factory=dict)
    _trunk: tuple[str, str] | None = None
    _hosts: list[ipaddress.IPv4Address] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.prefix.isalnum() or len(self.prefix) > 11:
            raise ValueError(f"prefix {self.prefix!r}: at most 11 letters/digits")
        network = ipaddress.ip_network(self.subnet)
        if not isinstance(network, ipaddress.IPv4Network):
            raise ValueError("subnet must be IPv4")
        self._hosts = list(network.hosts())

    def _name(self, suffix: str) -> str:
        name = f"{self.prefix}{suffix}"
        if len(name) > IFNAMSIZ:
            raise ValueError(f"interface name {name!r} is too long")
        return name

    def bridge(self, group: str) -> str:
        """The group's bridge, created (up, no address) on first use."""
        if not (len(group) == 1 and group.islower()):
            raise ValueError(f"group {group!r}: one lower-case letter")
        if group not in self._bridges:
            name = self._name(f"b{group}")
            ip("link", "add", name, "type", "bridge")
            self._bridges[group] = name  # recorded before the next command: close() removes it on failure
            self.groups.setdefault(group, [])
            ip("link", "set", name, "up")
        return self._bridges[group]

    def add(self, group: str, label: str) -> Endpoint:
        """A namespace ``<prefix>-<label>`` on ``group``'s bridge, with the next address of the subnet."""
        if label in self.endpoints:
            raise ValueError(f"endpoint {label!r} exists")
        if not label.replace("-", "").isalnum():
            raise ValueError(f"label {label!r} is not a plain name")
        index = len(self.endpoints)
        if index >= len(self._hosts):
            raise ValueError(f"subnet {self.subnet} is full")
        bridge = self.bridge(group)
        slot = len(self.groups[group])
        host_link, inner_link = self._name(f"{group}{slot}"), self._name(f"{group}{slot}i")
        namespace = f"{self.prefix}-{label}"
        address = str(self._hosts[index])
        prefixlen = ipaddress.ip_network(self.subnet).prefixlen
        ip("netns", "add", namespace)
        endpoint = Endpoint(label, namespace, address, host_link, inner_link)
        self.endpoints[label] = endpoint  # recorded first: close() cleans up a half-built endpoint
        self.groups[group].append(endpoint)
        ip("link", "add", host_link, "type", "veth", "peer", "name", inner_link)
        ip("link", "set", inner_link, "netns", namespace)
        ip("link", "set", host_link, "master", bridge)
        ip("link", "set", host_link, "up")
        ip("-n", namespace, "link", "set", "lo", "up")
        ip("-n", namespace, "addr", "add", f"{address}/{prefixlen}", "dev", inner_link)
        ip("-n", namespace, "link", "set", inner_link, "up")
        return endpoint

    def trunk(self, first: str, second: str) -> None:
        """Join the bridges of two groups with one veth pair, up."""
        if self._trunk is not None:
            raise ValueError("this lab has one trunk")
        left, right = self._name(f"t{first}"), self._name(f"t{second}")
        ip("link", "add", left, "type", "veth", "peer", "name", right)
        self._trunk = (left, right)
        ip("link", "set", left, "master", self.bridge(first))
        ip("link", "set", right, "master", self.bridge(second))
        self.restore()

    def cut(self) -> None:
        """Take both legs of the trunk down: the groups are partitioned, each stays whole."""
        assert self._trunk is not None, "no trunk"
        for leg in self._trunk:
            ip("link", "set", leg, "down")

    def restore(self) -> None:
        """Both legs of the trunk up again (the bridges run no STP: they forward at once)."""
        assert self._trunk is not None, "no trunk"
        for leg in self._trunk:
            ip("link", "set", leg, "up")

    def close(self) -> None:
        """Kill every process in the namespaces; delete namespaces, veths, trunk and bridges."""
        errors = remove_endpoints(self.endpoints.values())
        self.endpoints.clear()
        self.groups.clear()
        if self._trunk is not None:
            ip("link", "delete", self._trunk[0], check=False)  # deletes its peer too
            self._trunk = None
        for bridge in self._bridges.values():
            ip("link", "delete", bridge, check=False)
        self._bridges.clear()
        if errors:
            raise NetnsError("; ".join(errors))

    def __enter__(self) -> GroupLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# The agent: one request per stdin line ("status" or "peers"), one JSON line per answer.
_AGENT = r"""
import json, sys
from google.protobuf.json_format import MessageToDict
from peer.tools.admin_client import AdminClient, AdminError

def as_dict(m):
    return MessageToDict(m, always_print_fields_with_no_presence=True, preserving_proto_field_name=True)

client = AdminClient(sys.argv[1], float(sys.argv[2]))
print(json.dumps({"ok": True, "data": "ready"}), flush=True)
for line in sys.stdin:
    what = line.strip()
    try:
        if what == "status":
            data = as_dict(client.status())
        elif what == "peers":
            data = [as_dict(p) for p in client.list_peers().peers]
        else:
            raise ValueError(f"unknown request {what!r}")
        print(json.dumps({"ok": True, "data": data}), flush=True)
    except (AdminError, ValueError) as e:
        print(json.dumps({"ok": False, "error": str(e)}), flush=True)
"""


class AdminAgent:
    """Asks one peer's admin API (on its namespace's loopback) from inside that namespace."""

    def __init__(self, endpoint: Endpoint, admin: str, call_timeout: float = 5.0,
                 env: dict[str, str] | None = None) -> None:
        self.endpoint = endpoint
        self.call_timeout = call_timeout
        self.proc = subprocess.Popen(endpoint.command([sys.executable, "-c", _AGENT, admin, str(call_timeout)]),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env={**os.environ, **(env or {})}, text=True, bufsize=1)
        self._read(timeout=60.0)  # its imports done

    def _read(self, timeout: float) -> Any:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
            stderr = self.proc.stderr.read() if self.proc.stderr else ""
            self.close()
            raise RuntimeError(f"admin agent in {self.endpoint.namespace} gave no answer within {timeout:.0f} s "
                               f"(exit {self.proc.returncode}): {stderr.strip()[-2000:]}")
        return json.loads(line)

    def send(self, what: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(what + "\n")
        self.proc.stdin.flush()

    def answer(self) -> Any:
        """The answer to the oldest request sent; ``None`` when the peer did not answer."""
        reply = self._read(timeout=self.call_timeout + 10.0)
        return reply["data"] if reply["ok"] else None

    def ask(self, what: str) -> Any:
        self.send(what)
        return self.answer()

    def close(self) -> None:
        if self.proc.poll() is None:
            if self.proc.stdin is not None:
                try:
                    self.proc.stdin.close()
                except OSError:
                    pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def ask_all(agents: list[AdminAgent], what: str) -> list[Any]:
    """Send ``what`` to every agent first, then collect: the peers are asked in parallel."""
    for agent in agents:
        agent.send(what)
    return [agent.answer() for agent in agents]
