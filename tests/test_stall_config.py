"""``[service] stall_*`` keys and ``*.stalled`` channel globs: values, defaults, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from config_support import channel, config_toml, write_config

from notifier.cli import main
from notifier.config import parse_config
from notifier.errors import ConfigError


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    return [str(problem) for problem in caught.value.problems]


def test_stall_defaults() -> None:
    service = parse_config(config_toml()).service
    assert (service.stall_factor, service.stall_min_samples) == (2.0, 10)
    assert (service.stall_floor, service.stall_reminders) == (600.0, False)


def test_stall_settings_are_read() -> None:
    values = {"stall_factor": 3, "stall_min_samples": 4, "stall_floor": 5, "stall_reminders": True}
    service = parse_config(config_toml(service=values)).service
    assert (service.stall_factor, service.stall_min_samples) == (3.0, 4)
    assert (service.stall_floor, service.stall_reminders) == (5.0, True)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("stall_factor", 0.5, "service.stall_factor: must be at least 1, not 0.5"),
        ("stall_factor", "2", "service.stall_factor: must be a number, not a string"),
        ("stall_min_samples", 0, "service.stall_min_samples: must be at least 1, not 0"),
        ("stall_min_samples", 2.5, "service.stall_min_samples: must be an integer, not a number"),
        ("stall_min_samples", 201,
         "service.stall_min_samples: must be at most 200 (the durations kept per step)"),
        ("stall_floor", -1, "service.stall_floor: must be at least 0, not -1"),
        ("stall_reminders", "yes", "service.stall_reminders: must be true or false, not a string"),
        ("stall_floors", 5, "service.stall_floors: unknown key"),
    ],
    ids=["factor-small", "factor-string", "min-zero", "min-float", "min-too-many", "floor-negative",
         "reminders-string", "unknown"],
)  # fmt: skip
def test_bad_stall_settings_name_their_key_path(key: str, value: object, message: str) -> None:
    assert problems(config_toml(service={key: value})) == [message]


@pytest.mark.parametrize(
    "pattern", ["*.stalled", "step.stalled", "substep.stalled", "*stalled", "step.*"]
)
def test_channels_may_route_stalls(pattern: str) -> None:
    config = parse_config(config_toml(channels=[channel("c", "json://x", events=[pattern])]))
    assert config.channels[0].events == (pattern,)


def test_a_glob_that_matches_no_event_type_is_an_error() -> None:
    (found,) = problems(config_toml(channels=[channel("c", "json://x", events=["*.stall"])]))
    assert found.startswith("channels[0].events[0]: '*.stall' matches no event type")
    assert "step.stalled, substep.stalled" in found


def test_check_config_exits_78_naming_the_stall_key(tmp_path: Path) -> None:
    path = write_config(tmp_path, service={"stall_factor": 0})
    result = CliRunner().invoke(main, ["--config", str(path), "check-config"])
    assert result.exit_code == 78
    assert "service.stall_factor: must be at least 1" in result.output
