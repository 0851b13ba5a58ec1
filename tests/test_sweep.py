"""`bsnet sweep` on digits: one search per budget in parallel processes, sweep.csv, reruns skip what finished."""
import csv

from bsnet import FlopsCost
from bsnet.cli import main
from bsnet.sweep import cost_name

SEARCH = ["--supernet-config", "layers=3", "channels=8", "--epochs", "1", "--finetune-epochs", "0"]


def test_sweep_two_budgets_then_rerun(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", "--budgets", "20%,60%", "--workers", "2", "--out", str(out), *SEARCH]) == 0
    rows = list(csv.DictReader(open(out / "sweep.csv")))
    assert [r["budget"] for r in rows] == ["20%", "60%"] and all(r["status"] == "finished" for r in rows)
    for r in rows:
        assert float(r["cost"]) == float(r["flops"])
        assert 0 <= float(r["accuracy"]) <= 1
        assert (out / r["run_dir"].split("/")[-1] / "architecture.json").exists()
    assert float(rows[0]["cost"]) <= float(rows[1]["cost"])
    assert (out / "pareto.png").stat().st_size > 0
    before = (out / "budget-20pct" / "architecture.json").stat().st_mtime_ns

    # a failing budget is reported without losing the others; finished budgets are not run again
    assert main(["sweep", "--budgets", "20%,60%,1", "--workers", "2", "--out", str(out), *SEARCH]) == 1
    rows = {r["budget"]: r for r in csv.DictReader(open(out / "sweep.csv"))}
    assert rows["20%"]["status"] == rows["60%"]["status"] == "skipped"
    assert rows["1"]["status"] == "failed" and "cheapest" in rows["1"]["error"]
    assert (out / "budget-20pct" / "architecture.json").stat().st_mtime_ns == before
    assert "FAILED" in capsys.readouterr().out


def test_sweep_on_ray(tmp_path, monkeypatch):
    import pytest
    pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'bsnet[ray]')")
    monkeypatch.setenv("RAY_ADDRESS", "local")  # a local Ray instance stands in for the user's cluster
    out = tmp_path / "sweep"
    assert main(["sweep", "--engine", "ray", "--budgets", "30%", "--out", str(out), *SEARCH]) == 0
    rows = list(csv.DictReader(open(out / "sweep.csv")))
    assert rows[0]["status"] == "finished" and float(rows[0]["cost"]) > 0


class Energy(FlopsCost):
    """A user's cost class whose recorded name (`energy`) is not its attribute name (`Energy`)."""

    name = "energy"


def test_the_swept_cost_is_read_under_the_name_it_is_recorded_with():
    assert cost_name("flops") == "flops"
    assert cost_name("tests.test_sweep:Energy") == "energy"
    assert cost_name("tests.test_cli_search:constant_cost") == "constant_cost"  # a function: its own name
