"""A live peer's /metrics: what Prometheus tooling expects of it, checked by that tooling.

`promtool check metrics` (Prometheus' own linter) reads a real scrape. promtool comes
from the Debian package `prometheus`, which .ci/run installs, so CI always runs it; on
a developer machine without it the promtool test is skipped, saying how to install it.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
import torch

from peer.tools.procs import PeerProcess, launch_peers, wait_for
from tests.conftest import COMMON_PEER_ARGS


def metrics_url(peer: PeerProcess) -> str:
    """The /metrics URL a peer printed in its ready line."""
    for line in peer.log_path.read_text().splitlines():
        if line.startswith('{"event": "ready"'):
            return f"http://{json.loads(line)['metrics']}/metrics"
    raise AssertionError(f"no ready line in {peer.log_path}")


def scrape_text(url: str) -> str:
    return urllib.request.urlopen(url, timeout=10).read().decode()


def scrape(url: str) -> dict[str, float]:
    """One scrape: ``name{labels}`` -> value."""
    values = {}
    for line in scrape_text(url).splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerProcess]:
    """One peer for the module (a start costs seconds); checkpoints only on demand."""
    tmp = tmp_path_factory.mktemp("metrics")
    (p,) = launch_peers(1, tmp / "logs", lambda i, seeds: [*COMMON_PEER_ARGS, "--metrics-port", "0",
                                                           "--data-dir", str(tmp / "data"),
                                                           "--checkpoint-interval", "0"])
    try:
        p.wait_ready(90)
        yield p
    finally:
        p.stop(timeout=15)


def test_metrics_carry_process_platform_and_build_info_and_no_fake_checkpoint_age(peer: PeerProcess) -> None:
    url = metrics_url(peer)
    values = scrape(url)
    # The standard collectors, on the registry the peer serves.
    assert values["process_resident_memory_bytes"] > 0 and values["process_cpu_seconds_total"] > 0
    assert values["process_open_fds"] > 0
    assert any(k.startswith("python_info{") for k in values)
    assert any(k.startswith("python_gc_collections_total{") for k in values)
    build = f'hearsay_build_info{{python="{platform.python_version()}",torch="{torch.__version__}",' \
            f'version="{metadata.version("hearsay")}"}}'
    assert values[build] == 1.0, [k for k in values if k.startswith("hearsay_build_info")]

    # No checkpoint written yet: no age sample at all (not a -1 an alert would read as fresh).
    assert values["hearsay_checkpoint_present"] == 0.0
    assert "hearsay_checkpoint_age_seconds" not in values
    with peer.admin() as client:
        client.save_checkpoint()
    values = scrape(url)
    assert values["hearsay_checkpoint_present"] == 1.0
    assert 0.0 <= values["hearsay_checkpoint_age_seconds"] < 600


def test_promtool_check_metrics_passes_on_a_live_scrape(peer: PeerProcess) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package `prometheus`; .ci/run installs it)")
    url = metrics_url(peer)
    wait_for(lambda: peer.status().steps > 0, timeout=60, what="training to start")  # histograms filled
    text = scrape_text(url)
    assert "hearsay_checkpoint_age_seconds " in text  # the module's first test wrote one
    done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), done.stdout + done.stderr
    # The check can fail: a series promtool's linter rejects (a counter without _total) is reported.
    broken = text + "# HELP hearsay_bad A counter named wrongly.\n# TYPE hearsay_bad counter\nhearsay_bad 1\n"
    done = subprocess.run([promtool, "check", "metrics"], input=broken, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "hearsay_bad" in done.stdout + done.stderr
