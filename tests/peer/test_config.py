"""Configuration: defaults < TOML file < environment < flags, every option documented."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from peer.runtime import config
from peer.runtime.config import ConfigError, PeerConfig, add_flags, load
from peer.runtime.config_docs import options_table

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
    assert options_table() in readme, "README's option table is stale: run python -m peer.runtime.config_docs README.md"


@pytest.mark.parametrize("env, message", [
    ({"HEARSAY_LR": "inf"}, "lr: inf is not a finite number"),
    ({"HEARSAY_LR": "nan"}, "lr: nan is not a finite number"),
    ({"HEARSAY_MAX_PACKET_MB": "inf"}, "max_packet_mb: inf is not a finite number"),
    ({"HEARSAY_MAX_PACKET_MB": "1e300"}, r"max_packet_mb: 1e\+300 is out of range"),
    ({"HEARSAY_DATA_SEED": "-1"}, "data_seed: -1 is out of range, must be in 0..4294967295"),
    ({"HEARSAY_PROBE_PERIOD": "inf"}, "probe_period: inf is not a finite number"),
    ({"HEARSAY_PROBE_PERIOD": "1e9"}, "probe_period: 1000000000.0 is out of range"),
    ({"HEARSAY_GOSSIP_INTERVAL": "0"}, r"gossip_interval: 0.0 is out of range, must be in \[0.001, 3600\]"),
    ({"HEARSAY_PORT": "99999999999999999999999"}, "port: 99999999999999999999999 is out of range"),
    ({"HEARSAY_TOPK_RATIO": "0"}, r"topk_ratio: 0.0 is out of range, must be in \(0, 1\]"),
])
def test_numbers_are_finite_and_in_range(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(parse(), environ=env)


def test_every_number_option_declares_its_range() -> None:
    """The range comes from the option's definition; one without would only get the broad default."""
    for f in dataclasses.fields(PeerConfig):
        if type(f.default) in (int, float):
            assert f.metadata.get("range") is not None, f"{f.name} declares no range (lo=, hi= in _opt)"


def test_defaults_pass_their_own_checks() -> None:
    for f in dataclasses.fields(PeerConfig):
        config.check_value(f, getattr(PeerConfig(), f.name))


def test_a_toml_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "peer.toml"
    cfg.write_bytes(b'peer_id = "caf\xe9"\n')
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 0xe9 at offset 14\)"):
        load(parse("--config", str(cfg)), environ={})


def test_text_must_be_utf8_printable_and_bounded() -> None:
    with pytest.raises(ConfigError, match="peer_id: .* is not valid UTF-8"):
        load(parse(), environ={"HEARSAY_PEER_ID": "caf\udce9"})  # how os.environ holds a non-UTF-8 byte
    with pytest.raises(ConfigError, match="peer_id: .* holds control characters"):
        load(parse("--peer-id", "a\nb"), environ={})
    with pytest.raises(ConfigError, match="data_dir: 5000 characters"):
        load(parse("--data-dir", "d" * 5000), environ={})


@pytest.mark.parametrize("token, message", [
    (" ", "blank"), ("                    ", "blank"), ("short", "5 characters, at least 16"),
    ("with a space inside it", "without spaces"), ("tab\tinside-a-long-token", "without spaces|control characters"),
])
def test_admin_tokens_are_long_and_unambiguous(tmp_path: Path, token: str, message: str) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    for flags in (("--admin-token", token), ("--admin-token-file", str(token_file))):
        with pytest.raises(ConfigError, match=message) as refused:
            load(parse(*flags), environ={})
        assert token.strip() not in str(refused.value) or not token.strip()  # never echoed
    assert load(parse("--admin-token", "0123456789abcdef"), environ={}).token() == "0123456789abcdef"


def test_unknown_model_lists_the_zoo_and_suggests_the_nearest() -> None:
    with pytest.raises(ConfigError, match=r"model: 'resnet' is not one of mlp, cnn, cnn-small, cnn-pooled, cnn-wide .*PYTHONPATH"):
        load(parse("--model", "resnet"), environ={})
    with pytest.raises(ConfigError, match="did you mean 'cnn-wide'"):
        load(parse("--model", "cnn_wide"), environ={})
    assert load(parse("--model", "mypkg.models:make"), environ={}).model == "mypkg.models:make"


def test_the_name_lists_kept_here_match_their_modules() -> None:
    """config knows the zoo and the merge rules by name so that it need not import torch or numpy."""
    from peer.models import ZOO
    from protocol.merge import RULES

    from peer.tools.cli import DEFAULT_ADMIN_PORT

    assert set(config.ZOO_MODELS) == set(ZOO)
    assert set(config.MERGE_RULES) == set(RULES)
    assert DEFAULT_ADMIN_PORT == PeerConfig().admin_port  # what `--admin HOST` dials


def test_parse_option_checks_like_the_config_does() -> None:
    assert config.parse_option("gossip_interval", "0.5") == 0.5
    for bad in ("inf", "nan", "-1", "1e300", "fast"):
        with pytest.raises(ConfigError, match="gossip_interval"):
            config.parse_option("gossip_interval", bad)
    with pytest.raises(ConfigError, match="did you mean 'topk'"):
        config.parse_option("codec", "tpok")
    with pytest.raises(ConfigError, match="unknown option 'gossip_intervl'; did you mean 'gossip_interval'"):
        config.parse_option("gossip_intervl", "1")
