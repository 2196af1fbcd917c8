"""Read deploy/ the way Docker, Compose and Kubernetes do, and run its peers without them.

Why this exists: no container engine or cluster runs here, yet the deployment files
must be checked for real. These helpers reproduce just enough of each tool's
semantics — Dockerfile ENV/ENTRYPOINT/CMD/HEALTHCHECK/COPY, compose variable
interpolation and entrypoint/command overrides, Kubernetes ``$(VAR)`` expansion,
downward API and secret references, ConfigMap volumes — to build the exact argv and
environment a container would get, with the image's files mapped to the repository
files they are copied from. What cannot be reproduced (hostname, container address,
secret values) is substituted explicitly by the caller.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s"
VENV_BIN = Path(sys.executable).parent
# PATH of the python:3.11-slim image, after the test's own bin directory.
IMAGE_PATH = "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"


# --- Dockerfile --------------------------------------------------------------------------------

@dataclass
class Dockerfile:
    """The parts of a Dockerfile that decide how a container starts."""

    env: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    healthcheck: list[str] = field(default_factory=list)
    copies: dict[str, Path] = field(default_factory=dict)  # path in the image -> repository file
    volumes: list[str] = field(default_factory=list)
    base: str = ""
    user: str = ""


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _exec_form(value: str, what: str) -> list[str]:
    """A JSON-array (exec form) argument list; shell form is refused (signals would not reach the peer)."""
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        raise AssertionError(f"{what} must use the exec (JSON array) form, got {value!r}") from None
    assert isinstance(parsed, list) and all(isinstance(p, str) for p in parsed), f"{what}: {value!r}"
    return parsed


def parse_dockerfile(path: Path = DOCKERFILE) -> Dockerfile:
    """Parse the instructions hearsay's Dockerfile uses; anything unexpected is an assertion error."""
    result = Dockerfile()
    for word, rest in _instructions(path.read_text()):
        if word == "FROM":
            result.base = rest
        elif word == "ENV":
            for item in shlex.split(rest):
                key, sep, value = item.partition("=")
                assert sep, f"ENV {item!r}: use the KEY=value form"
                result.env[key] = value
        elif word == "ENTRYPOINT":
            result.entrypoint = _exec_form(rest, "ENTRYPOINT")
            result.cmd = []  # Docker: setting ENTRYPOINT resets an inherited CMD
        elif word == "CMD":
            result.cmd = _exec_form(rest, "CMD")
        elif word == "HEALTHCHECK":
            _, sep, command = rest.partition("CMD ")
            assert sep, f"HEALTHCHECK without CMD: {rest!r}"
            result.healthcheck = _exec_form(command.strip(), "HEALTHCHECK CMD")
        elif word == "COPY":
            parts = shlex.split(rest)
            sources, target = [p for p in parts[:-1] if not p.startswith("--")], parts[-1]
            for source in sources:
                if not target.endswith("/") and len(sources) == 1:
                    result.copies[target] = REPO / source
        elif word == "VOLUME":
            result.volumes += _exec_form(rest, "VOLUME") if rest.startswith("[") else rest.split()
        elif word == "USER":
            result.user = rest
    return result


# --- a container's filesystem, mapped onto this machine ------------------------------------------

def image_bin(directory: Path, dockerfile: Dockerfile, hostname: str | None = None,
              address: str | None = None) -> Path:
    """A bin directory that stands in for the image's /usr/local/bin.

    It holds every file the Dockerfile copies to /usr/local/bin (linked to the
    repository file), ``hearsay`` and ``python`` from this virtualenv, and — when
    ``hostname`` is given — a fake ``hostname`` command answering the name and, for
    ``-i``, ``address``: what Docker's /etc/hosts entry gives a container.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for image_path, source in dockerfile.copies.items():
        if image_path.startswith("/usr/local/bin/"):
            link = directory / Path(image_path).name
            link.unlink(missing_ok=True)
            link.symlink_to(source)
    # Wrappers, not symlinks: a virtualenv's python finds its site-packages through the
    # path it was invoked by, which a link in another directory would hide.
    for name, target in (("hearsay", VENV_BIN / "hearsay"), ("python", Path(sys.executable))):
        wrapper = directory / name
        wrapper.unlink(missing_ok=True)
        wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(str(target))} "$@"\n')
        wrapper.chmod(0o755)
    if hostname is not None:
        fake = directory / "hostname"
        fake.write_text("#!/bin/sh\n"
                        f"if [ \"${{1:-}}\" = -i ]; then echo {shlex.quote(address or '')}; "
                        f"else echo {shlex.quote(hostname)}; fi\n")
        fake.chmod(0o755)
    return directory


def map_image_path(argv: Sequence[str], bin_dir: Path) -> list[str]:
    """Rewrite absolute /usr/local/bin/X arguments to the stand-in bin directory."""
    return [str(bin_dir / a.removeprefix("/usr/local/bin/")) if a.startswith("/usr/local/bin/") else a
            for a in argv]


def container_argv(dockerfile: Dockerfile, entrypoint: Sequence[str] | None = None,
                   command: Sequence[str] | None = None) -> list[str]:
    """Docker's rule: an overridden entrypoint drops the image's CMD; a given command replaces CMD."""
    if entrypoint is not None:
        return [*entrypoint, *(command or [])]
    return [*dockerfile.entrypoint, *(dockerfile.cmd if command is None else command)]


def base_env(bin_dir: Path) -> dict[str, str]:
    """What any container starts with: a PATH (our stand-in bin first) and a HOME; nothing from the host."""
    return {"PATH": f"{bin_dir}:{IMAGE_PATH}", "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}


# --- compose ---------------------------------------------------------------------------------------

_INTERPOLATION = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}"
                            r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value: str, environ: Mapping[str, str]) -> str:
    """Compose variable interpolation: ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``."""
    def replace(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("name") or m.group("bare")
        op = m.group("op")
        if op == ":-" and not environ.get(name):
            return m.group("default")
        if op == "-" and name not in environ:
            return m.group("default")
        return environ.get(name, "")
    leftover = _INTERPOLATION.sub(lambda m: "", value)
    assert "${" not in leftover, f"unsupported interpolation in {value!r}"
    return _INTERPOLATION.sub(replace, value)


def _interpolate_tree(node: Any, environ: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, environ)
    if isinstance(node, list):
        return [_interpolate_tree(n, environ) for n in node]
    if isinstance(node, dict):
        return {k: _interpolate_tree(v, environ) for k, v in node.items()}
    return node


def load_compose(path: Path = COMPOSE, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose file as Compose sees it: YAML, then variable interpolation (empty environment by default)."""
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), f"{path}: no services"
    return _interpolate_tree(data, environ or {})


def service_env(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's ``environment`` (map or list form) as strings."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
        return {str(k): str(v) for k, v in pairs.items()}
    return {str(k): "" if v is None else (str(v).lower() if isinstance(v, bool) else str(v))
            for k, v in env.items()}


def _argv(value: Any) -> list[str] | None:
    if value is None:
        return None
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def compose_peer_start(dockerfile: Dockerfile, service: Mapping[str, Any]) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) of one replica: image ENV under the service's, image entrypoint unless overridden."""
    argv = container_argv(dockerfile, _argv(service.get("entrypoint")), _argv(service.get("command")))
    return argv, {**dockerfile.env, **service_env(service)}


# --- Kubernetes ---------------------------------------------------------------------------------------

def load_k8s(directory: Path = K8S) -> list[dict[str, Any]]:
    """Every document of every YAML file in ``directory`` (each must be a mapping with a kind)."""
    docs = []
    for path in sorted(directory.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            assert isinstance(doc, dict) and doc.get("kind") and doc.get("apiVersion"), f"{path}: {doc!r}"
            docs.append(doc)
    return docs


def by_kind(docs: Sequence[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


_K8S_REF = re.compile(r"\$\((?P<name>[A-Za-z_][A-Za-z0-9_]*)\)|\$\$")


def k8s_container_env(container: Mapping[str, Any], pod: Mapping[str, str],
                      secrets: Mapping[tuple[str, str], str],
                      config_maps: Mapping[tuple[str, str], str] | None = None) -> dict[str, str]:
    """A container's env as the kubelet builds it.

    ``pod`` answers downward-API fieldPaths (``metadata.name``, ``status.podIP``...);
    ``secrets`` answers (secret name, key). ``$(VAR)`` expands to a variable defined
    earlier in the list (unknown references stay as written, ``$$`` is a literal ``$``).
    """
    env: dict[str, str] = {}
    for item in container.get("env") or []:
        name = item["name"]
        if "value" in item:
            raw = str(item["value"])
            env[name] = _K8S_REF.sub(lambda m: "$" if m.group(0) == "$$" else env.get(m.group("name"), m.group(0)),
                                     raw)
            continue
        source = item["valueFrom"]
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            assert path in pod, f"env {name}: no test value for fieldPath {path}"
            env[name] = pod[path]
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[name] = secrets[(ref["name"], ref["key"])]
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            env[name] = (config_maps or {})[(ref["name"], ref["key"])]
        else:
            raise AssertionError(f"env {name}: unsupported valueFrom {source!r}")
    return env


# --- running `hearsay run --check-config` -----------------------------------------------------------

def check_config(argv: Sequence[str], env: Mapping[str, str], cwd: Path,
                 timeout: float = 60.0) -> tuple[int, dict[str, Any] | None, str]:
    """Run ``argv + --check-config`` with exactly ``env``; (exit code, config or None, stderr)."""
    done = subprocess.run([*argv, "--check-config"], env=dict(env), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    config = None
    if done.returncode == 0:
        reply = json.loads(done.stdout.strip().splitlines()[-1])
        assert reply["ok"] is True, reply
        config = reply["config"]
    return done.returncode, config, done.stderr.strip()
