"""RunConfig is the one source of `bsnet search`'s options: the parser, the YAML file, the resume check and the
defaults all come from it."""
import dataclasses
import io

import pytest
import yaml
from rich.console import Console

from bsnet.architecture import Architecture
from bsnet.cli import make_parser
from bsnet.tables import print_summary, show_lines
from bsnet.config import REMOVED_SEARCH_SETTINGS, ConfigError, RunConfig, resolve, resume_conflicts


def _search_help() -> str:
    sub = next(a for a in make_parser()._actions if a.dest == "command")
    return sub.choices["search"].format_help()


def test_every_field_is_an_option_with_its_default_in_the_help():
    text = " ".join(_search_help().split())
    for f in dataclasses.fields(RunConfig):
        assert "--" + f.name.replace("_", "-") in text, f.name
    assert "(default: 12)" in text and "(default: cnf)" in text and "(default: 30%)" in text


@pytest.mark.parametrize("command", ["search", "train", "eval", "export", "profile", "sweep", "show"])
def test_help_shows_the_defaults_of_every_command(command):
    sub = next(a for a in make_parser()._actions if a.dest == "command")
    parser = sub.choices[command]
    text = " ".join(parser.format_help().split())
    for action in parser._actions:
        if action.default not in (None, False, [], "==SUPPRESS==") and action.option_strings:
            assert f"(default: {action.default})" in text, (command, action.dest)


def test_options_override_the_file_which_overrides_the_defaults():
    cfg = resolve({"epochs": 3, "supernet_config": {"layers": 4}, "search_config": {"seed": 5}},
                  {"epochs": 7, "supernet_config": {"channels": 8}, "seed": 2, "budget": None})
    assert cfg.epochs == 7 and cfg.budget == ["30%"] and cfg.supernet_config == {"layers": 4, "channels": 8}
    assert "seed" not in cfg.search_config  # --seed seeds the gates too


@pytest.mark.parametrize("values, message", [({"epochs": "3"}, "epochs must be an integer"),
                                             ({"epochs": 0}, "epochs and batch_size must be >= 1"),
                                             ({"budget": {"a": 1}}, "budget must be a list"),
                                             ({"select_temperature": float("nan")}, "select_temperature"),
                                             ({"search_config": {"warmup": 0.3}}, "warmup was removed"),
                                             ({"input_shape": [0, 8]}, "input_shape")])
def test_bad_values_are_refused_in_one_line(values, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(**values)


def test_a_config_written_before_the_removed_settings_still_reads():
    cfg = RunConfig(search_config={**REMOVED_SEARCH_SETTINGS, "gate_lr": 0.05})
    assert cfg.search_config == {"gate_lr": 0.05}


def test_resume_conflicts_name_the_changed_option():
    recorded = yaml.safe_load(yaml.safe_dump(RunConfig().to_dict()))
    assert resume_conflicts(recorded, {}, {"epochs": 12, "device": "cuda"}) is None
    assert "epochs is 12" in resume_conflicts(recorded, {}, {"epochs": 5})
    assert "supernet_config.layers" in resume_conflicts(recorded, {"supernet_config": {"layers": 2}}, {})


def test_the_summary_fits_80_columns_without_wrapping(tmp_path, monkeypatch, capsys):
    arch = Architecture("cnf", {}, {"g": 0.9}, ["g"], projected=True, dropped=["h"], added=["g"],
                        exchanged=["e"],
                        cost={"flops": 1.45e5, "params": 1.14e4, "parallel": 9.0, "latency": 1.2e-3},
                        budget={"flops": 1.49e5, "latency": 2e-3},
                        full_cost={"flops": 4.96e5, "params": 1.56e4, "parallel": 9.0, "latency": 3e-3},
                        metrics={"test_acc": 0.93, "test_acc_search_weights": 0.92, "test_acc_finetuned": 0.93,
                                 "full_test_acc": 0.94})
    out = io.StringIO()
    monkeypatch.setattr("rich.console.Console", lambda *a, **k: Console(file=out, width=80))
    print_summary(arch, tmp_path)
    lines = out.getvalue().splitlines()
    labels = [line.split("│")[1].strip() for line in lines if line.startswith("│")]
    assert labels == ["found (projected)", "search weights", "budget", "full network", "found / full"]
    assert "filled to the budget: added 1 gate(s): g; took out 1: e" in capsys.readouterr().out.splitlines()
    assert "filled to the budget: added g; took out e" in show_lines(arch)
    assert max(map(len, lines)) <= 80
