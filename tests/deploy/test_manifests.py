"""deploy/ files parse, agree with each other, and every peer they start has a config hearsay accepts.

Each check runs the real entrypoint script and `hearsay run --check-config` as a
subprocess with exactly the argv and environment Docker, Compose or Kubernetes would
give the container (tests/deploy/manifests.py builds them); only what a container
runtime provides — hostname, container address, secret values, mounted files — is
substituted, and the substitution is visible in each test.
"""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.manifests import (
    COMPOSE,
    DEPLOY,
    K8S,
    base_env,
    by_kind,
    check_config,
    compose_peer_start,
    container_argv,
    image_bin,
    interpolate,
    k8s_container_env,
    load_compose,
    load_k8s,
    parse_dockerfile,
)

CONTAINER_IP = "172.18.0.5"
TOKEN = "test-token-not-a-secret"


def _cksum(text: str) -> int:
    """POSIX cksum of ``text``, computed by the same tool the entrypoint uses."""
    done = subprocess.run(["cksum"], input=text.encode(), capture_output=True, check=True)
    return int(done.stdout.split()[0])


# --- Dockerfile ------------------------------------------------------------------------------------

def test_dockerfile_builds_a_non_root_cpu_image_with_a_grpc_healthcheck() -> None:
    d = parse_dockerfile()
    assert d.base == "python:3.11-slim"
    assert d.user and d.user not in ("root", "0")
    assert "/data" in d.volumes and d.env["HEARSAY_DATA_DIR"] == "/data"
    text = (DEPLOY / "Dockerfile").read_text()
    torch_at = text.index("pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu")
    assert torch_at < text.index("pip install ."), "CPU torch must be installed before the project"
    # Every file the image runs comes from the repository and exists.
    assert all(src.exists() for src in d.copies.values()), d.copies
    # The entrypoint and the healthcheck script are files the Dockerfile copies in.
    assert f"/usr/local/bin/{d.entrypoint[0]}" in d.copies
    assert any(arg in d.copies for arg in d.healthcheck), d.healthcheck
    # The admin host is left to the entrypoint (loopback unless a token is given).
    assert "HEARSAY_ADMIN_HOST" not in d.env


def test_image_defaults_are_accepted_and_mean_what_the_readme_says(tmp_path: Path) -> None:
    d = parse_dockerfile()
    bin_dir = image_bin(tmp_path / "bin", d, hostname="3f2a9c1d0b7e", address=CONTAINER_IP)
    code, config, err = check_config(container_argv(d), {**base_env(bin_dir), **d.env}, tmp_path)
    assert code == 0, err
    assert config is not None
    assert config["peer_id"] == "3f2a9c1d0b7e"
    assert config["host"] == "0.0.0.0" and config["advertise"] == f"{CONTAINER_IP}:7070"
    assert config["admin_host"] == "127.0.0.1" and config["admin_port"] == 7071
    assert (config["metrics_host"], config["metrics_port"]) == ("0.0.0.0", 9100)
    assert config["data_dir"] == "/data" and config["device"] == "cpu"


def test_image_moves_admin_off_loopback_only_with_a_token(tmp_path: Path) -> None:
    d = parse_dockerfile()
    bin_dir = image_bin(tmp_path / "bin", d, hostname="c1", address=CONTAINER_IP)
    code, config, err = check_config(container_argv(d), {**base_env(bin_dir), **d.env, "HEARSAY_ADMIN_TOKEN": TOKEN},
                                     tmp_path)
    assert code == 0, err
    assert config is not None and config["admin_host"] == "0.0.0.0" and config["admin_token"] == "***"


def test_entrypoint_refuses_what_it_cannot_resolve(tmp_path: Path) -> None:
    """Fails loudly, with exit 2 and one line, instead of starting a peer with a wrong identity."""
    d = parse_dockerfile()
    no_ordinal = image_bin(tmp_path / "a", d, hostname="3f2a9c1d0b7e", address=CONTAINER_IP)
    code, _, err = check_config(container_argv(d), {**base_env(no_ordinal), **d.env,
                                                    "HEARSAY_SHARD_INDEX": "ordinal"}, tmp_path)
    assert code == 2 and "does not end in -<number>" in err
    no_address = image_bin(tmp_path / "b", d, hostname="peer-1", address="")
    code, _, err = check_config(container_argv(d), {**base_env(no_address), **d.env}, tmp_path)
    assert code == 2 and "HEARSAY_ADVERTISE" in err
    no_count = image_bin(tmp_path / "c", d, hostname="peer-1", address=CONTAINER_IP)
    code, _, err = check_config(container_argv(d), {**base_env(no_count), **d.env, "HEARSAY_SHARD_INDEX": "hash"},
                                tmp_path)
    assert code == 2 and "HEARSAY_SHARD_COUNT" in err


# --- compose ---------------------------------------------------------------------------------------

def test_compose_parses_and_defines_a_broker_and_a_scalable_peer() -> None:
    compose = load_compose()
    services = compose["services"]
    assert set(services) == {"mosquitto", "peer"}
    assert services["mosquitto"]["image"].startswith("eclipse-mosquitto")
    peer = services["peer"]
    # --scale needs replicas without fixed names or host ports.
    assert "container_name" not in peer and "ports" not in peer
    assert peer["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (COMPOSE.parent / peer["build"]["context"] / peer["build"]["dockerfile"]).resolve().is_file()
    for volume in services["mosquitto"]["volumes"]:
        source = volume.split(":")[0]
        assert (COMPOSE.parent / source).is_file(), f"mosquitto mounts a missing file {source}"
    config = (DEPLOY / "mosquitto.conf").read_text().split("\n")
    assert "listener 1883" in config and "allow_anonymous true" in config


def test_compose_interpolation_follows_the_environment() -> None:
    assert interpolate("${HEARSAY_SHARD_COUNT:-4}", {}) == "4"
    assert interpolate("${HEARSAY_SHARD_COUNT:-4}", {"HEARSAY_SHARD_COUNT": "8"}) == "8"
    assert load_compose(environ={"HEARSAY_SHARD_COUNT": "8"})["services"]["peer"]["environment"][
        "HEARSAY_SHARD_COUNT"] == "8"


@pytest.mark.parametrize("hostname", ["3f2a9c1d0b7e", "peer-2"])
def test_every_compose_replica_gets_an_accepted_config_of_its_own(tmp_path: Path, hostname: str) -> None:
    d = parse_dockerfile()
    peer = load_compose()["services"]["peer"]
    argv, env = compose_peer_start(d, peer)
    bin_dir = image_bin(tmp_path / "bin", d, hostname=hostname, address=CONTAINER_IP)
    code, config, err = check_config(argv, {**base_env(bin_dir), **env}, tmp_path)
    assert code == 0, err
    assert config is not None
    assert config["peer_id"] == hostname
    assert config["advertise"] == f"{CONTAINER_IP}:7070"
    assert config["mqtt_broker"] == "mosquitto:1883" and config["cluster"] == env["HEARSAY_CLUSTER"]
    count = int(env["HEARSAY_SHARD_COUNT"])
    assert config["shard_count"] == count
    assert config["shard_index"] == _cksum(hostname) % count
    assert config["seed"] == _cksum(hostname)
    assert config["admin_host"] == "127.0.0.1"


# --- Kubernetes ------------------------------------------------------------------------------------

def _statefulset() -> dict[str, Any]:
    (sts,) = by_kind(load_k8s(), "StatefulSet")
    return sts


def test_every_k8s_file_parses_and_kustomization_lists_them() -> None:
    docs = load_k8s()
    assert {d["kind"] for d in docs} >= {"StatefulSet", "Service", "ConfigMap", "Kustomization"}
    (kustomization,) = by_kind(docs, "Kustomization")
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    for path in K8S.iterdir():
        assert path.suffix == ".yaml", f"{path.name}: only .yaml files belong in deploy/k8s"
        list(yaml.safe_load_all(path.read_text()))


def test_headless_service_selects_the_statefulset_pods() -> None:
    docs = load_k8s()
    sts = _statefulset()
    (svc,) = by_kind(docs, "Service")
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    container = sts["spec"]["template"]["spec"]["containers"][0]
    port_names = {p["name"] for p in container["ports"]}
    assert all(p["targetPort"] in port_names for p in svc["spec"]["ports"])


def test_probes_use_grpc_health_on_an_admin_port_the_kubelet_can_reach() -> None:
    container = _statefulset()["spec"]["template"]["spec"]["containers"][0]
    admin_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "admin")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == admin_port, probe
    env = {e["name"]: e for e in container["env"]}
    # The kubelet connects to the pod IP: loopback would fail every probe.
    assert env["HEARSAY_ADMIN_HOST"]["value"] == "0.0.0.0"
    assert "secretKeyRef" in env["HEARSAY_ADMIN_TOKEN"]["valueFrom"]


def test_scaling_knobs_agree_replicas_shard_count_and_seeds() -> None:
    sts = _statefulset()
    replicas = sts["spec"]["replicas"]
    env = {e["name"]: e.get("value") for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert int(env["HEARSAY_SHARD_COUNT"]) == replicas
    name, service = sts["metadata"]["name"], sts["spec"]["serviceName"]
    expected = [f"{name}-{i}.{service}.$(POD_NAMESPACE).svc:7070" for i in range(replicas)]
    assert env["HEARSAY_SEEDS"].split(",") == expected
    assert env["HEARSAY_ADVERTISE"] == f"$(POD_NAME).{service}.$(POD_NAMESPACE).svc:7070"


def test_configmap_sets_nothing_the_environment_would_silently_override() -> None:
    docs = load_k8s()
    (cm,) = by_kind(docs, "ConfigMap")
    toml = tomllib.loads(cm["data"]["hearsay.toml"])
    keys = set(toml.get("peer", {})) | {k for k in toml if k != "peer"}
    container = _statefulset()["spec"]["template"]["spec"]["containers"][0]
    from_env = {e["name"].removeprefix("HEARSAY_").lower() for e in container["env"]}
    from_env |= {k.removeprefix("HEARSAY_").lower() for k in parse_dockerfile().env}
    assert not keys & from_env, f"set in the ConfigMap but overridden by the environment: {keys & from_env}"


def _mounted_config(tmp_path: Path, container: dict[str, Any], pod_spec: dict[str, Any],
                    env: dict[str, str]) -> dict[str, str]:
    """Materialise ConfigMap volumes under tmp_path and point env paths at them."""
    config_maps = {cm["metadata"]["name"]: cm for cm in by_kind(load_k8s(), "ConfigMap")}
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    out = dict(env)
    for mount in container.get("volumeMounts", []):
        volume = volumes.get(mount["name"])
        if volume is None or "configMap" not in volume:
            continue
        local = tmp_path / "mounts" / mount["name"]
        local.mkdir(parents=True)
        for key, text in config_maps[volume["configMap"]["name"]]["data"].items():
            (local / key).write_text(text)
        out = {k: v.replace(mount["mountPath"], str(local), 1) if v.startswith(mount["mountPath"] + "/") else v
               for k, v in out.items()}
    return out


@pytest.mark.parametrize("ordinal", ["first", "last"])
def test_every_statefulset_pod_gets_an_accepted_config_with_its_own_shard(tmp_path: Path, ordinal: str) -> None:
    d = parse_dockerfile()
    sts = _statefulset()
    index = 0 if ordinal == "first" else sts["spec"]["replicas"] - 1
    pod_name = f"{sts['metadata']['name']}-{index}"
    pod_spec = sts["spec"]["template"]["spec"]
    (container,) = pod_spec["containers"]
    env = k8s_container_env(container, {"metadata.name": pod_name, "metadata.namespace": "swarm",
                                        "status.podIP": "10.244.1.7"},
                            secrets={("hearsay-admin", "token"): TOKEN})
    env = _mounted_config(tmp_path, container, pod_spec, env)
    argv = container_argv(d, container.get("command"), container.get("args"))
    bin_dir = image_bin(tmp_path / "bin", d, hostname=pod_name, address="10.244.1.7")
    code, config, err = check_config(argv, {**base_env(bin_dir), **d.env, **env}, tmp_path)
    assert code == 0, err
    assert config is not None
    assert config["peer_id"] == pod_name
    assert config["advertise"] == f"{pod_name}.hearsay.swarm.svc:7070"
    assert config["advertise"] in config["seeds"]  # recognised as itself, never gossiped with
    assert len(config["seeds"]) == sts["spec"]["replicas"]
    assert (config["shard_index"], config["shard_count"], config["seed"]) == (index, sts["spec"]["replicas"], index)
    assert config["admin_host"] == "0.0.0.0" and config["admin_token"] == "***"
    assert config["cluster"] == "k8s" and config["log_json"] is True  # from the ConfigMap's TOML
    assert config["data_dir"] == "/data"
