"""bench.grid: the full learning grid in resumable one-setting processes, and its must-hold-2 report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.grid import main, setting_name
from bench.learning import Setting


def test_run_writes_one_result_per_setting_and_skips_finished_ones(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """Two real bench.learning processes side by side (two rounds each); started again, the run
    finds both settings done and starts nothing, so an interrupted grid resumes where it stopped."""
    args = ["run", str(tmp_path), "--datasets", "digits", "--peers", "16", "--models", "mlp",
            "--splits", "iid", "dir0.1", "--methods", "fedavg", "--rounds", "2", "--jobs", "2"]
    assert main(args) == 0
    for split in ("iid", "dir0.1"):
        result = json.loads((tmp_path / f"digits_16_mlp_{split}.json").read_text())
        assert result["budget"]["rounds"] == 2
        assert [r["method"] for r in result["configs"]] == ["fedavg"]
        assert (tmp_path / f"digits_16_mlp_{split}_accuracy_vs_rounds.png").exists()
        assert (tmp_path / f"digits_16_mlp_{split}.log").exists()
    assert not list((tmp_path / ".running").iterdir())
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "2 of 2 settings already in" in out and "started" not in out


def test_run_fails_loudly_when_a_setting_fails(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """A method bench.learning does not know: the process fails, its log's tail is shown, the run
    exits 1 and no JSON counts the setting as done."""
    args = ["run", str(tmp_path), "--datasets", "digits", "--peers", "16", "--models", "mlp", "--splits", "iid",
            "--methods", "no_such_method", "--rounds", "1"]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "digits_16_mlp_iid FAILED" in out
    assert not (tmp_path / "digits_16_mlp_iid.json").exists()


def _row(setting: Setting, method: str, rounds: int | None, mb: float, final: float = 0.9) -> dict:
    return {"dataset": setting.dataset, "peers": setting.peers, "split": setting.split, "alpha": setting.alpha,
            "model": setting.model, "method": method, "rounds_to_95pct_fedavg": rounds,
            "bytes_per_round": mb * 1e6, "final_accuracy_mean": final}


def _write(path: Path, rows: list[dict], rounds: int = 60) -> None:
    budget = {"rounds": rounds, "local_steps": 10, "batch_size": 32, "lr": 0.05, "momentum": 0.9, "init": "default",
              "seed": 0, "lr_schedule": "cosine", "lr_floor": 0.0}
    path.write_text(json.dumps({"budget": budget, "configs": rows}))


def test_report_judges_each_setting_and_lists_what_is_missing(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    holds = Setting(16, "iid", None, "mlp")
    misses = Setting(64, "dirichlet", 0.1, "cnn", "fashion-mnist")
    _write(tmp_path / f"{setting_name(holds)}.json", [
        _row(holds, "fedavg", 10, 10.0), _row(holds, "sampled", 12, 9.0), _row(holds, "gossip_vc_dc_int8x5", 15, 20.0)])
    _write(tmp_path / f"{setting_name(misses)}.json", [
        _row(misses, "fedavg", 10, 10.0), _row(misses, "sampled", 13, 9.0),  # 1.3x the rounds
        _row(misses, "gossip_vc_dc_int8x5", 15, 20.5)])                      # over 2x the bytes
    out_json = tmp_path / "merged.json"
    assert main(["report", str(tmp_path), "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "2 of 24 settings of the full grid measured" in out
    assert "| fashion-mnist | 64 | dir 0.1 | cnn | 10 (" in out  # the table names the split's alpha
    assert "digits_64_cnn_dir0.5" in out.split("not measured:")[1]
    assert "digits_16_mlp_iid" not in out.split("not measured:")[1]
    merged = json.loads(out_json.read_text())
    verdict = merged["must_hold_2"]
    assert verdict["digits, 16, iid, mlp"] == ("must-hold 2: server-free <=1.2x at <=1x bytes: sampled; "
                                              "async VC <=1.5x at <=2x bytes: gossip_vc_dc_int8x5")
    assert verdict["fashion-mnist, 64, dir 0.1, cnn"] == (
        "must-hold 2: server-free <=1.2x at <=1x bytes: NONE (of sampled, gossip_vc_dc_int8x5); "
        "async VC <=1.5x at <=2x bytes: NONE (of gossip_vc_dc_int8x5)")
    assert out.split("missing a half of must-hold 2:")[1].strip() == "fashion-mnist, 64, dir 0.1, cnn"
    assert len(merged["configs"]) == 6 and len(merged["not_measured"]) == 22
    assert main(["report", str(tmp_path), "--strict"]) == 1


def test_report_refuses_to_judge_runs_of_different_budgets(tmp_path: Path) -> None:
    a, b = Setting(16, "iid", None, "mlp"), Setting(16, "iid", None, "cnn")
    _write(tmp_path / "a.json", [_row(a, "fedavg", 10, 10.0)])
    _write(tmp_path / "b.json", [_row(b, "fedavg", 1, 10.0)], rounds=2)
    with pytest.raises(SystemExit, match="another budget.*rounds"):
        main(["report", str(tmp_path)])
