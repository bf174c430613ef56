"""data/flags.py: command-line flags and choice checks made from a settings dataclass's fields."""
import argparse
import dataclasses

import pytest

from data.flags import add_flags, check_choices, setting, settings_fields


@dataclasses.dataclass
class Example:
    size: int                      # not a setting: no flag
    rate: float = setting(0.5, "how fast")
    mode: str = setting("a", "which mode", choices=("a", "b"))
    limit: float | None = setting(None, "cap (none: no cap)")
    fast: bool = setting(False, "go fast", flag="turbo")
    level: str = setting("", "bare flag: high", choices=("", "high", "low"), const="high")

    def __post_init__(self):
        check_choices(self)


def parser(**options) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="example")
    add_flags(p, Example, **options)
    return p


def test_only_the_flags_given_are_parsed():
    p = parser()
    assert vars(p.parse_args([])) == {}
    assert vars(p.parse_args(["--rate", "2", "--mode", "b", "--limit", "none", "--turbo",
                              "--level"])) == {
        "rate": 2.0, "mode": "b", "limit": None, "fast": True, "level": "high"}
    assert vars(p.parse_args(["--limit", "3", "--no-turbo", "--level", "low"])) == {
        "limit": 3.0, "fast": False, "level": "low"}
    assert [f.name for f in settings_fields(Example)] == ["rate", "mode", "limit", "fast", "level"]


def test_kept_defaults_snake_case_names_and_prefix():
    p = parser(keep_defaults=True, separator="_", prefix="ex_")
    assert vars(p.parse_args([])) == {"ex_rate": 0.5, "ex_mode": "a", "ex_limit": None,
                                      "ex_fast": False, "ex_level": ""}
    parsed = vars(p.parse_args(["--ex_rate", "1"]))
    assert parsed["ex_rate"] == 1.0 and parsed["ex_mode"] == "a" and parsed["ex_fast"] is False
    assert vars(p.parse_args(["--turbo"]))["ex_fast"] is True  # a named flag takes no prefix
    assert "(default: 0.5)" in p.format_help() and "(default: 'a')" in p.format_help()


def test_shown_defaults_and_bad_values(capsys):
    p = parser(shown={"rate": 0.25})
    assert "how fast (default: 0.25)" in " ".join(p.format_help().split())
    assert vars(p.parse_args([])) == {}
    with pytest.raises(SystemExit):
        p.parse_args(["--mode", "c"])
    assert "--mode: invalid choice: 'c'" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"Example.mode must be one of \['a', 'b'\], got 'c'"):
        Example(size=1, mode="c")
