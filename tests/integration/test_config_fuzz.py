"""Config fuzz: every option, hostile values, from the TOML file, the environment and the flags.

The options come from ``PeerConfig`` itself, so an option added later is fuzzed without
a line here. Whatever the value, `hearsay run` either accepts a configuration that
passes every check, or says why in one line with exit code 2: never a traceback. And a
peer given the largest value every duration accepts still stops promptly on SIGTERM.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peer.tools import cli
from peer.runtime.config import PeerConfig
from peer.runtime.option_checks import bounds
from peer.tools.procs import PeerProcess, free_ports

OPTIONS = [f for f in dataclasses.fields(PeerConfig)]
NON_UTF8 = "caf\udce9"  # how Python holds the byte 0xe9 of a non-UTF-8 environment or argv
# As text (environment, flags): non-finite, negative, huge, wrong type, non-UTF-8, control characters.
TEXT_VALUES = ["nan", "inf", "-inf", "-1", "-0.5", "1e300", "9" * 400, "[1, 2]", "yes please", "", "x" * 5000,
               NON_UTF8, "a\nb", "0x10"]
# As TOML values: the same kinds, plus TOML's own types.
TOML_VALUES = ["nan", "inf", "-inf", "-1", "-0.5", "1e300", "9" * 30, "[1, 2]", "{ a = 1 }", '"text"', "true",
               "1979-05-27", '"' + "x" * 5000 + '"', '"a\\u0000b"']
# Values a number option must refuse, whatever its range.
NEVER_A_NUMBER = {"nan", "inf", "-inf", "1e300", "9" * 400, "9" * 30, "[1, 2]", "{ a = 1 }", "yes please", '"text"',
                  "true", "1979-05-27", NON_UTF8, "a\nb", ""}


def run_check_config(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        rc = cli.main(["run", "--check-config", *argv])
    except SystemExit as e:  # argparse's own refusals
        rc = int(e.code or 0)
    out = capsys.readouterr()
    return rc, out.out, out.err


def assert_handled(rc: int, out: str, err: str, where: str) -> None:
    assert "Traceback" not in err, where
    if rc == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("hearsay run: error: "), (where, err)
        return
    assert rc == 0, (where, rc, err)
    shown = json.loads(out)["config"]
    shown.pop("admin_token")  # printed as ***
    PeerConfig(**shown).validate()  # what was accepted passes every check again


def fuzz(source: str, f: dataclasses.Field, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
         monkeypatch: pytest.MonkeyPatch) -> int:
    flag = "--" + f.name.replace("_", "-")
    if source == "toml":
        path = tmp_path / "fuzz.toml"
        path.write_text(f"{f.name} = {value}\n")
        rc, out, err = run_check_config(["--config", str(path)], capsys)
    elif source == "env":
        with monkeypatch.context() as m:
            m.setenv(f"HEARSAY_{f.name.upper()}", value)
            rc, out, err = run_check_config([], capsys)
    else:
        rc, out, err = run_check_config([f"{flag}={value}"], capsys)
    assert_handled(rc, out, err, f"{source} {f.name}={value[:40]!r}")
    return rc


@pytest.mark.parametrize("source", ["toml", "env", "flags"])
def test_every_option_with_hostile_values_from_every_source(source: str, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith("HEARSAY_")]:
        monkeypatch.delenv(name)
    values = TOML_VALUES if source == "toml" else TEXT_VALUES
    refused = 0
    for f in OPTIONS:
        for value in values:
            rc = fuzz(source, f, value, tmp_path, capsys, monkeypatch)
            refused += rc == 2
            if bounds(f) is not None and value in NEVER_A_NUMBER:
                assert rc == 2, f"{source}: {f.name} accepted {value[:40]!r}"
    assert refused > len(OPTIONS) * 5  # the fuzz reached the checks, not just argparse's defaults


def test_a_toml_file_that_is_not_utf8_is_refused_for_every_option(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "latin1.toml"
    for f in OPTIONS:
        path.write_bytes(f"{f.name} = \"".encode() + b"caf\xe9\"\n")
        rc, out, err = run_check_config(["--config", str(path)], capsys)
        assert rc == 2 and "not UTF-8 text" in err and len(err.strip().splitlines()) == 1, (f.name, err)


def test_non_utf8_bytes_through_a_real_process(tmp_path: Path) -> None:
    """The real decoding paths: bytes in argv, in the environment and in the file, as a user's shell passes them."""
    toml = tmp_path / "bad.toml"
    toml.write_bytes(b'peer_id = "caf\xe9"\n')
    base = [sys.executable.encode(), b"-m", b"peer.tools.cli", b"run", b"--check-config"]
    env = {k.encode(): v.encode() for k, v in os.environ.items() if not k.startswith("HEARSAY_")}
    for argv, extra_env in (([b"--peer-id", b"caf\xe9"], {}), ([], {b"HEARSAY_PEER_ID": b"caf\xe9"}),
                            ([b"--config", str(toml).encode()], {}), ([b"--host", b"\xff\xfe"], {}),
                            ([], {b"HEARSAY_PROBE_PERIOD": b"inf"}), ([], {b"HEARSAY_DATA_SEED": b"-1"})):
        out = subprocess.run(base + argv, env={**env, **extra_env}, capture_output=True, timeout=60)
        err = out.stderr.decode(errors="replace")
        assert out.returncode == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (argv, err)


def test_a_peer_with_every_duration_at_its_largest_value_still_stops_promptly(tmp_path: Path) -> None:
    durations = {f.name: bounds(f)[1] for f in OPTIONS if f.metadata.get("seconds")}  # type: ignore[index]
    assert {"gossip_interval", "gossip_timeout", "probe_period", "bootstrap_timeout"} <= set(durations)
    dead, gossip, admin = free_ports(3)
    args = ["--threads", "1", f"--seeds=127.0.0.1:{dead}", "--data-dir", str(tmp_path / "data"),
            *(f"--{name.replace('_', '-')}={value}" for name, value in durations.items())]
    peer = PeerProcess("slowest", gossip, admin, args, tmp_path / "peer.log").start()
    try:
        peer.wait_ready(120)  # it is joining: waiting up to bootstrap_timeout for a seed that never answers
        started = time.monotonic()
        peer.signal(signal.SIGTERM)
        assert peer.proc is not None and peer.proc.wait(timeout=60) == 0, peer.log_tail()
        assert time.monotonic() - started < 30, f"stopping took {time.monotonic() - started:.1f} s"
    finally:
        peer.stop()
