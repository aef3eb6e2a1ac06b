"""Configuration: whole-file validation, key paths, secrets by reference."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from config_support import channel, write_config

from notifier.channels.render import check_templates
from notifier.channels.targets import validate_channel
from notifier.cli import main
from notifier.config import (
    ChannelConfig,
    ChannelValidator,
    Secret,
    find_config_path,
    load_config,
    parse_config,
)
from notifier.errors import ConfigError
from notifier.model import EventType

MINIMAL = """
[[sources]]
name = "prod"
endpoint = "https://bcs.cn-north-4.myhuaweicloud.com"
project_id = "0123456789abcdef0123456789abcdef"
[sources.auth]
type = "token"
token = "${BCS_TOKEN}"
"""


def problems(text: str, **environ: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, filename="notifier.toml", environ=environ)
    return [str(problem) for problem in caught.value.problems]


def test_minimal_config_gets_the_documented_defaults() -> None:
    config = parse_config(MINIMAL, environ={"BCS_TOKEN": "secret-token"})
    assert config.service.database == "sqlite:////var/lib/bcs-notifier/state.db"
    assert config.service.poll_interval == 60
    assert config.service.active_poll_interval == 5
    assert config.service.notify_existing is False
    assert config.service.unreachable_after == 300
    (source,) = config.sources
    assert source.auth.token == Secret("secret-token")
    assert "secret-token" not in repr(config)


def test_every_problem_is_reported_at_once_with_its_key_path() -> None:
    found = problems(
        """
[service]
poll_interval = "fast"
colour = "blue"

[[sources]]
name = "bad name!"
endpoint = "ftp://x"
[sources.filters]
resource_type = 3
operation_status = "waiting"
[sources.auth]
type = "password"
iam_endpoint = "https://iam.example"

[[channels]]
name = "c"
urls = []
events = ["operation.*", "nothing.*"]
timezone = "Mars/Olympus"
"""
    )
    assert found == [
        "service.poll_interval: must be a number, not a string",
        "service.colour: unknown key",
        "sources[0].name: must be 1-64 letters, digits, '_', '.' or '-'",
        "sources[0].endpoint: must be an http(s) URL, not 'ftp://x'",
        "sources[0].project_id: is required",
        "sources[0].filters.resource_type: must be a string or a list of strings",
        "sources[0].filters.operation_status: unknown key",
        "sources[0].auth.domain: is required",
        "sources[0].auth.username: is required",
        "sources[0].auth.password: is required",
        "channels[0].urls: at least one apprise URL is required",
        "channels[0].events[1]: 'nothing.*' matches no event type (operation.created, "
        "operation.status_changed, step.created, step.status_changed, substep.created, "
        "substep.status_changed, source.unreachable, source.recovered, step.stalled, "
        "substep.stalled)",
        "channels[0].timezone: unknown time zone 'Mars/Olympus'",
    ]


@pytest.mark.parametrize(
    ("channel", "expected"),
    [
        (
            'name = "ops"\nurls = []\ntimezone = "Mars/Olympus"',
            [
                "channels[0].urls: at least one apprise URL is required",
                "channels[0].timezone: unknown time zone 'Mars/Olympus'",
            ],
        ),
        (
            'urls = ["console://"]\ntimezone = "Mars/Olympus"',
            [
                "channels[0].name: is required",
                "channels[0].timezone: unknown time zone 'Mars/Olympus'",
            ],
        ),
        (
            'name = "ops"\nurls = ["json://${HOOK_HOST}/"]\ntimezone = "Mars/Olympus"',
            [
                "channels[0].urls[0]: environment variable not set: ${HOOK_HOST}",
                "channels[0].timezone: unknown time zone 'Mars/Olympus'",
            ],
        ),
        (
            'name = "ops"\nurls = []\ntimezone = "Europe/Paris"',
            ["channels[0].urls: at least one apprise URL is required"],
        ),
    ],
    ids=["no-urls", "no-name", "unset-url-variable", "good-zone"],
)
def test_an_incomplete_channel_still_reports_a_bad_time_zone(
    channel: str, expected: list[str]
) -> None:
    assert problems(MINIMAL + f"[[channels]]\n{channel}\n", BCS_TOKEN="x") == expected


def test_error_message_names_the_file() -> None:
    with pytest.raises(ConfigError, match=r"notifier.toml: sources: at least one"):
        parse_config("", filename="notifier.toml")


def test_missing_environment_variable_is_named() -> None:
    assert problems(MINIMAL) == [
        "sources[0].auth.token: environment variable not set: ${BCS_TOKEN}"
    ]


def test_dollar_dollar_escapes_interpolation() -> None:
    config = parse_config(MINIMAL.replace("${BCS_TOKEN}", "$${literal}"), environ={})
    assert config.sources[0].auth.token == Secret("${literal}")


def test_secret_file_from_credentials_directory(tmp_path: Path) -> None:
    credentials = tmp_path / "creds"
    credentials.mkdir()
    (credentials / "bcs-sk").write_text("sk-from-systemd\n")
    text = MINIMAL.replace(
        '[sources.auth]\ntype = "token"\ntoken = "${BCS_TOKEN}"',
        '[sources.auth]\ntype = "aksk"\naccess_key = "AK"\nsecret_key_file = "bcs-sk"',
    )
    config = parse_config(
        text, environ={"CREDENTIALS_DIRECTORY": str(credentials)}, base_dir=tmp_path
    )
    secret = config.sources[0].auth.secret_key
    assert secret is not None
    assert secret.reveal() == "sk-from-systemd"


def test_secret_and_secret_file_together_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "tok").write_text("x")
    text = MINIMAL.replace('token = "${BCS_TOKEN}"', 'token = "a"\ntoken_file = "tok"')
    with pytest.raises(ConfigError, match="give either token or token_file"):
        parse_config(text, base_dir=tmp_path, environ={})


def test_unreadable_secret_file_is_reported(tmp_path: Path) -> None:
    text = MINIMAL.replace('token = "${BCS_TOKEN}"', 'token_file = "missing"')
    with pytest.raises(ConfigError, match=r"sources\[0\].auth.token_file: cannot read"):
        parse_config(text, base_dir=tmp_path, environ={})


def test_duplicate_names_and_unknown_channel_source() -> None:
    found = problems(
        MINIMAL
        + MINIMAL
        + """
[[channels]]
name = "c"
urls = ["json://127.0.0.1/"]
sources = ["nope"]
""",
        BCS_TOKEN="x",
    )
    assert "sources[1].name: duplicate source name 'prod'" in found
    assert "channels[0].sources: no source named 'nope'" in found


def test_invalid_toml_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_config("[service\n", filename="n.toml")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.toml")


def test_config_path_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BCS_NOTIFIER_CONFIG", raising=False)
    assert find_config_path("x.toml") == Path("x.toml")
    assert find_config_path(None) == Path("notifier.toml")
    monkeypatch.setenv("BCS_NOTIFIER_CONFIG", os.fspath(tmp_path / "env.toml"))
    assert find_config_path(None) == tmp_path / "env.toml"


def test_example_config_loads_and_documents_every_key() -> None:
    example = Path(__file__).parent.parent / "notifier.toml.example"
    environ = {
        "BCS_TOKEN": "t",
        "HUAWEICLOUD_PASSWORD": "p",
        "HUAWEICLOUD_SDK_AK": "ak",
        "HUAWEICLOUD_SDK_SK": "sk",
        "SLACK_WEBHOOK_TOKENS": "T000/B000/XXXX",
        "SMTP_PASSWORD": "pw",
        "WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    }
    config = parse_config(example.read_text(), environ=environ)
    assert config.sources
    assert config.channels
    text = example.read_text()
    from notifier import config as config_module

    for cls in (
        config_module.ServiceConfig,
        config_module.HttpConfig,
        config_module.DeliveryConfig,
        config_module.SourceConfig,
        config_module.AuthConfig,
        config_module.ChannelConfig,
    ):
        for name in cls.__dataclass_fields__:
            documented = (
                f"{name} =" in text
                or f"{name}_file =" in text
                or f"[sources.{name}]" in text
                or f"[service.{name}]" in text
            )
            assert documented, f"{cls.__name__}.{name} is not documented in notifier.toml.example"
    for key in config_module.FILTER_KEYS:
        assert f"{key} =" in text


def test_relative_secret_file_found_in_credentials_folder_outside_systemd(tmp_path: Path) -> None:
    (tmp_path / "credentials").mkdir()
    (tmp_path / "credentials" / "bcs-token").write_text("from-the-credentials-folder\n")
    text = MINIMAL.replace('token = "${BCS_TOKEN}"', 'token_file = "bcs-token"')
    config = parse_config(text, base_dir=tmp_path, environ={})  # no $CREDENTIALS_DIRECTORY
    token = config.sources[0].auth.token
    assert token is not None
    assert token.reveal() == "from-the-credentials-folder"


def test_a_bad_url_error_does_not_echo_its_password() -> None:
    text = MINIMAL.replace(
        'endpoint = "https://bcs.cn-north-4.myhuaweicloud.com"',
        'endpoint = "ftp://user:EndpointPw999@host"',
    )
    found = problems(text, BCS_TOKEN="x")
    assert found == ["sources[0].endpoint: must be an http(s) URL, not 'ftp://user:********@host'"]


def test_an_unset_variable_in_a_url_gives_only_that_error() -> None:
    text = MINIMAL + '[[channels]]\nname = "ops"\nurls = ["slack://${SLACK_TOKENS}/#bcs"]\n'
    assert problems(text, BCS_TOKEN="x") == [
        "channels[0].urls[0]: environment variable not set: ${SLACK_TOKENS}"
    ]
    # among others, the rest keep their own index (none is checked under a wrong one)
    text = MINIMAL + (
        '[[channels]]\nname = "ops"\nurls = ["json://${HOOK_HOST}/", "console://stdout"]\n'
    )
    assert problems(text, BCS_TOKEN="x") == [
        "channels[0].urls[0]: environment variable not set: ${HOOK_HOST}"
    ]
    assert problems(MINIMAL + '[[channels]]\nname = "ops"\nurls = []\n', BCS_TOKEN="x") == [
        "channels[0].urls: at least one apprise URL is required"
    ]


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ('["failed", "stop", "finished", "waiting", "processing"]', []),
        (
            '["failed", "faild"]',
            [
                "channels[0].statuses[1]: unknown status 'faild' (known: failed, finished, "
                "processing, stop, waiting; allow_unknown_statuses = true accepts others)"
            ],
        ),
        ('["failed", "rolled_back"]\nallow_unknown_statuses = true', []),
    ],
    ids=["known", "typo", "opted-in"],
)
def test_channel_statuses_are_known_ones_unless_opted_in(
    statuses: str, expected: list[str]
) -> None:
    text = MINIMAL + f'[[channels]]\nname = "ops"\nurls = ["console://"]\nstatuses = {statuses}\n'
    if expected:
        assert problems(text, BCS_TOKEN="x") == expected
    else:
        (channel,) = parse_config(text, environ={"BCS_TOKEN": "x"}).channels
        assert "failed" in channel.statuses


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("postgresql+pg8000://bcs:DbPw123@db.example.test/bcs", "driver 'pg8000' is not installed"),
        ("oracle+nosuchdriver://db.example.test/x", "unknown database kind"),
        ("not a url", "not a database URL"),
    ],
    ids=["driver-missing", "unknown-kind", "not-a-url"],
)
def test_a_database_that_cannot_be_opened_is_a_config_error(url: str, fragment: str) -> None:
    import importlib.util

    assert importlib.util.find_spec("pg8000") is None  # the driver this case needs missing
    text = f'[service]\ndatabase = "{url}"\n' + MINIMAL
    (problem,) = problems(text, BCS_TOKEN="x")
    assert problem.startswith("service.database: "), problem
    assert fragment in problem
    assert "DbPw123" not in problem


@pytest.mark.parametrize(
    ("database", "expected"),
    [
        ("sqlite:///{tmp}/state.db", None),
        ("postgresql+psycopg://bcs@db.example.test/bcs", None),
        ("sqlite://", "must name a SQLite file (the state must outlive the process)"),
        ("sqlite:///:memory:", "must name a SQLite file (the state must outlive the process)"),
        ("sqlite:///{tmp}", "{tmp} is a directory, not a database file"),
        (
            "sqlite:///{tmp}/file/state.db",
            "cannot create {tmp}/file/state.db: a parent is not a directory",
        ),
    ],
    ids=["file", "postgresql", "no-file", "memory", "directory", "parent-is-a-file"],
)
def test_the_database_must_be_a_place_the_state_can_outlive_the_process(
    tmp_path: Path, database: str, expected: str | None
) -> None:
    (tmp_path / "file").write_text("")
    text = f'[service]\ndatabase = "{database.format(tmp=tmp_path)}"\n' + MINIMAL
    if expected is None:
        parse_config(text, environ={"BCS_TOKEN": "x"})
    else:
        assert problems(text, BCS_TOKEN="x") == [
            f"service.database: {expected.format(tmp=tmp_path)}"
        ]


def test_check_config_exits_78_for_a_database_driver_that_is_not_installed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "notifier.toml"
    database = 'database = "postgresql+pg8000://bcs@db.example.test/bcs"\n'
    path.write_text("[service]\n" + database + MINIMAL.replace("${BCS_TOKEN}", "t"))
    result = CliRunner().invoke(main, ["--config", str(path), "check-config"])
    assert result.exit_code == 78
    assert "service.database: the postgresql driver 'pg8000' is not installed" in result.stderr


# -- templates are config: a runaway template or an unknown time zone names its key ------------


def test_check_config_exits_78_with_the_key_path_for_a_runaway_template(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        channels=[
            channel(
                "chat",
                "console://",
                title="{% for i in range(100000000) %}x{% endfor %}",
                body="n={{ 100 // (events|length - 1) }}",
            )
        ],
    )
    result = CliRunner().invoke(main, ["--config", str(config), "check-config"])
    code, output = result.exit_code, result.output
    assert code == 78, output
    assert "channels[0].title" in output
    assert "channels[0].body" in output
    assert "Traceback" not in output


def test_an_unknown_timezone_and_a_broken_template_are_both_reported() -> None:
    assert [key for key, _ in check_templates("{{ nope }}", None, "Mars/Olympus")] == ["title"]
    text = textwrap.dedent(
        """
        [service]
        database = "sqlite://"

        [[channels]]
        name = "chat"
        urls = ["console://"]
        timezone = "Mars/Olympus"
        title = "{{ nope }}"
        body = "{{ 1 // 0 }}"
        """
    )
    with pytest.raises(ConfigError) as raised:
        parse_config(text, channel_validators=(validate_channel,))
    paths = sorted(
        problem.path for problem in raised.value.problems if problem.path.startswith("channels")
    )
    assert paths == ["channels[0].body", "channels[0].timezone", "channels[0].title"]


def test_channel_validators_are_passed_in_and_report_under_the_channels_key_path() -> None:
    import notifier.channels.targets  # noqa: F401 - importing it must register nothing

    text = MINIMAL + (
        '[[channels]]\nname = "ok"\nurls = ["console://"]\n'
        '[[channels]]\nname = "ops"\nurls = ["console://", "json://h.test/"]\n'
    )
    seen: list[str] = []

    def validator(channel: ChannelConfig) -> list[tuple[str, str]]:
        seen.append(channel.name)
        return [("urls[1]", "refused by the test")] if len(channel.urls) > 1 else []

    assert len(parse_config(text, environ={"BCS_TOKEN": "x"}).channels) == 2  # none passed
    assert problems_with(text, (validator,)) == ["channels[1].urls[1]: refused by the test"]
    assert seen == ["ok", "ops"]
    # an incomplete channel is not handed to a validator (its own problem is reported)
    seen.clear()
    assert problems_with(MINIMAL + '[[channels]]\nname = "x"\nurls = []\n', (validator,)) == [
        "channels[0].urls: at least one apprise URL is required"
    ]
    assert seen == []


def test_load_config_hands_the_validators_on(tmp_path: Path) -> None:
    from notifier.channels.targets import validate_channel

    path = tmp_path / "notifier.toml"
    path.write_text(
        MINIMAL.replace("${BCS_TOKEN}", "t")
        + '[[channels]]\nname = "ops"\nurls = ["unknownschema://x.test/"]\n'
    )
    assert load_config(path).channels[0].urls == ("unknownschema://x.test/",)
    with pytest.raises(ConfigError) as raised:
        load_config(path, channel_validators=(validate_channel,))
    assert [problem.path for problem in raised.value.problems] == ["channels[0].urls[0]"]


@pytest.mark.parametrize(
    ("pattern", "ok"),
    [(event_type.value, True) for event_type in EventType]
    + [("*", True), ("source.*", True), ("*.stall", False), ("operation.deleted", False)],
    ids=str,
)
def test_event_globs_are_checked_against_every_event_type(pattern: str, ok: bool) -> None:
    text = MINIMAL + f'[[channels]]\nname = "c"\nurls = ["console://"]\nevents = ["{pattern}"]\n'
    if ok:
        assert parse_config(text, environ={"BCS_TOKEN": "x"}).channels[0].events == (pattern,)
    else:
        (found,) = problems(text, BCS_TOKEN="x")
        known = ", ".join(event_type.value for event_type in EventType)
        assert found == f"channels[0].events[0]: {pattern!r} matches no event type ({known})"


def problems_with(text: str, validators: tuple[ChannelValidator, ...]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, environ={"BCS_TOKEN": "x"}, channel_validators=validators)
    return [str(problem) for problem in caught.value.problems]


def test_lease_ttl_defaults_to_15_seconds_and_is_checked() -> None:
    config = parse_config(MINIMAL, environ={"BCS_TOKEN": "t"})
    assert config.service.lease_ttl == 15
    short = parse_config("[service]\nlease_ttl = 3\n" + MINIMAL, environ={"BCS_TOKEN": "t"})
    assert short.service.lease_ttl == 3
    found = problems("[service]\nlease_ttl = 0\n" + MINIMAL, BCS_TOKEN="t")
    assert len(found) == 1
    assert found[0].startswith("service.lease_ttl: ")
