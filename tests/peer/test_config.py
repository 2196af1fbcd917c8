"""Configuration: defaults < TOML file < environment < flags, every option documented."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from peer.config import ConfigError, PeerConfig, add_flags, load, options_table

ROOT = Path(__file__).resolve().parents[2]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_flags(parser)
    return parser.parse_args(list(argv))


def test_precedence_file_then_environment_then_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "peer.toml"
    cfg.write_text('lr = 0.2\nbatch_size = 8\nseeds = ["10.0.0.1:7070"]\nmodel = "cnn"\n')
    env = {"HEARSAY_BATCH_SIZE": "16", "HEARSAY_SEEDS": "10.0.0.2:7070, 10.0.0.3:7070", "HEARSAY_LOG_JSON": "true"}
    c = load(parse("--config", str(cfg), "--model", "mlp"), environ=env)
    assert c.lr == 0.2  # file only
    assert c.batch_size == 16  # env beats file
    assert c.seeds == ["10.0.0.2:7070", "10.0.0.3:7070"]
    assert c.log_json is True
    assert c.model == "mlp"  # flag beats file
    assert c.merge == PeerConfig().merge  # untouched default
    c = load(parse("--config", str(cfg), "--batch-size", "4"), environ=env)
    assert c.batch_size == 4  # flag beats env


def test_config_file_from_environment_and_peer_table(tmp_path: Path) -> None:
    cfg = tmp_path / "peer.toml"
    cfg.write_text('[peer]\nport = 9000\n')
    assert load(parse(), environ={"HEARSAY_CONFIG": str(cfg)}).port == 9000


@pytest.mark.parametrize("content, message", [
    ("no_such_option = 1\n", "unknown option"),
    ("lr = 'fast'\n", "lr"),
    ("port = 70000\n", "port"),
    ("partition = 'by-colour'\n", "partition"),
    ("seeds = ['nohostport']\n", "seeds"),
    ("lr = [", "peer.toml"),
])
def test_bad_files_name_the_problem(tmp_path: Path, content: str, message: str) -> None:
    cfg = tmp_path / "peer.toml"
    cfg.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load(parse("--config", str(cfg)), environ={})


def test_bad_environment_and_flags_name_the_option() -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        load(parse(), environ={"HEARSAY_BATCH_SIZE": "many"})
    with pytest.raises(ConfigError, match="shard_index"):
        load(parse("--shard-index", "3", "--shard-count", "2"), environ={})
    with pytest.raises(ConfigError, match="config file"):
        load(parse("--config", "/nonexistent/peer.toml"), environ={})


def test_every_option_has_documentation_and_the_readme_table_is_current() -> None:
    for f in dataclasses.fields(PeerConfig):
        assert len(f.metadata.get("help", "")) > 10, f"{f.name} is undocumented"
    readme = (ROOT / "README.md").read_text()
    assert options_table() in readme, "README's option table is stale: run python -m peer.config README.md"
