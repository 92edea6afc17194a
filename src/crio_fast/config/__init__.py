"""crio-fast's configuration: crio.conf-shaped TOML, drop-ins, flags, rendering.

Read order, later winning key by key: built-in defaults < main file
(DEFAULT_CONFIG_PATH or --config) < drop-ins (DEFAULT_CONFIG_DIR or
--config-dir, *.conf in lexical order) < command-line flags.
"""

from crio_fast.config.durations import parse_duration
from crio_fast.config.flags import add_config_flags
from crio_fast.config.loader import ConfigError, defaults_with_flags, load_config
from crio_fast.config.render import render_config
from crio_fast.config.schema import (
    DEFAULT_CONFIG_DIR,
    DEFAULT_CONFIG_PATH,
    ApiSection,
    Config,
    CrioSection,
    ImageSection,
    MetricsSection,
    NetworkSection,
    RuntimeHandler,
    RuntimeSection,
    StatsSection,
)
from crio_fast.config.settings import LINUX_CAPABILITIES

__all__ = [
    "DEFAULT_CONFIG_DIR",
    "DEFAULT_CONFIG_PATH",
    "LINUX_CAPABILITIES",
    "ApiSection",
    "Config",
    "ConfigError",
    "CrioSection",
    "ImageSection",
    "MetricsSection",
    "NetworkSection",
    "RuntimeHandler",
    "RuntimeSection",
    "StatsSection",
    "defaults_with_flags",
    "add_config_flags",
    "load_config",
    "parse_duration",
    "render_config",
]
