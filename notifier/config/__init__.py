"""``notifier.toml``: what it holds, and how it is read and validated.

- :mod:`notifier.config.model`: the frozen values (:class:`Config` and its sections,
  :class:`Secret`) and the fixed choices (auth types, filter keys, poll modes, defaults).
- :mod:`notifier.config.reader`: the key-path-tracking TOML table reader (typed getters,
  ``${NAME}`` and ``*_file`` resolution, problems collected, unknown keys reported).
- :mod:`notifier.config.load`: :func:`load_config` / :func:`parse_config` (every section
  validated, every problem reported at once) and :func:`find_config_path`.

Checks that need apprise or Jinja2 (channel URLs, templates) are not registered here: the
caller passes them in, ``load_config(path, channel_validators=(validate_channel,))``.
"""

from notifier.config.load import ChannelValidator, find_config_path, load_config, parse_config
from notifier.config.model import (
    AUTH_TYPES,
    CONFIG_ENV_VAR,
    DEFAULT_CONFIG_PATHS,
    DEFAULT_DATABASE,
    FILTER_KEYS,
    POLL_MODES,
    AuthConfig,
    ChannelConfig,
    Config,
    DeliveryConfig,
    HttpConfig,
    Secret,
    ServiceConfig,
    SourceConfig,
)
from notifier.config.reader import NUMBER_MAX

__all__ = [
    "AUTH_TYPES",
    "CONFIG_ENV_VAR",
    "DEFAULT_CONFIG_PATHS",
    "DEFAULT_DATABASE",
    "FILTER_KEYS",
    "NUMBER_MAX",
    "POLL_MODES",
    "AuthConfig",
    "ChannelConfig",
    "ChannelValidator",
    "Config",
    "DeliveryConfig",
    "HttpConfig",
    "Secret",
    "ServiceConfig",
    "SourceConfig",
    "find_config_path",
    "load_config",
    "parse_config",
]
