"""`crio-fast config`: the effective configuration as commented TOML.

The output is a valid configuration file: loading it gives back an equal
Config. Every key carries its explanation as a comment, and keys whose value
differs from the default also name the default.
"""

from __future__ import annotations

import textwrap
from typing import Any

import tomlkit
from tomlkit.items import Table

from crio_fast.config.schema import (
    DEFAULT_CONFIG_DIR,
    DEFAULT_CONFIG_PATH,
    SECTIONS,
    Config,
    RuntimeHandler,
    defaults_like,
)
from crio_fast.config.settings import KeyInfo, keys_of

COMMENT_WIDTH = 78
# Arrays longer than this many items are written one item per line.
INLINE_ARRAY_ITEMS = 3

HEADER = f"""\
crio-fast configuration.

Read in this order, later values replacing earlier ones key by key: built-in
defaults, the main file ({DEFAULT_CONFIG_PATH} or --config), the *.conf files
of the drop-in directory ({DEFAULT_CONFIG_DIR} or --config-dir) in lexical
order, then command-line flags. Unknown keys are reported and ignored."""


def _toml_value(value: Any, *, inline: bool = False) -> Any:
    if isinstance(value, list):
        array = tomlkit.array()
        array.extend(value)
        if len(value) > INLINE_ARRAY_ITEMS and not inline:
            array.multiline(True)
        return array
    if isinstance(value, dict):
        table = tomlkit.inline_table()
        table.update(value)
        return table
    return value


def _comment_lines(text: str) -> list[str]:
    """``text`` wrapped for "# " comments; blank lines separate paragraphs."""
    lines: list[str] = []
    for index, paragraph in enumerate(text.split("\n\n")):
        if index:
            lines.append("")
        lines.extend(textwrap.wrap(" ".join(paragraph.split()), COMMENT_WIDTH - 2, break_on_hyphens=False))
    return lines


def _add_key(table: Table, info: KeyInfo, value: Any, default: Any) -> None:
    if len(table):
        table.add(tomlkit.nl())
    text = info.doc
    if value != default:
        text += f"\n\nDefault: {tomlkit.item(_toml_value(default, inline=True)).as_string()}"
    for line in _comment_lines(text):
        table.add(tomlkit.comment(line))
    table.add(info.name, _toml_value(value))


def _fill(table: Table, cls: type, values: Any, defaults: Any, only_changed: bool, keep: tuple[str, ...] = ()) -> None:
    for info in keys_of(cls).values():
        value, default = getattr(values, info.name), getattr(defaults, info.name)
        if only_changed and value == default and info.name not in keep:
            continue
        _add_key(table, info, value, default)


def _runtimes_table(config: Config, defaults: Config, only_changed: bool) -> Table | None:
    runtimes = tomlkit.table(is_super_table=True)
    for name, handler in config.runtime.runtimes.items():
        default = defaults.runtime.runtimes.get(name) or RuntimeHandler.defaults_for(name, config.crio.runroot)
        # A handler that exists only by configuration must appear even if nothing else differs.
        keep = ("runtime_type",) if name not in defaults.runtime.runtimes else ()
        table = tomlkit.table()
        _fill(table, RuntimeHandler, handler, default, only_changed, keep)
        if len(table):
            runtimes.add(name, table)
    return runtimes if len(runtimes) else None


def render_config(config: Config, *, only_changed: bool = False) -> str:
    """``config`` as TOML with a comment above every key; with ``only_changed``,
    just the keys that differ from the built-in defaults."""
    defaults = defaults_like(config)
    document = tomlkit.document()
    for line in _comment_lines(HEADER):
        document.add(tomlkit.comment(line))
    document.add(tomlkit.nl())

    tables: dict[tuple[str, ...], Table] = {}
    for section in SECTIONS:
        table = tomlkit.table()
        _fill(
            table, section.cls, getattr(config, section.attribute), getattr(defaults, section.attribute), only_changed
        )
        if section.attribute == "runtime":
            runtimes = _runtimes_table(config, defaults, only_changed)
            if runtimes is not None:
                table.add("runtimes", runtimes)
        tables[section.table] = table

    # Nest the sections as TOML tables; an empty one stays only as a parent of others.
    for path in sorted(tables, key=len, reverse=True):
        if len(path) > 1:
            table = tables[path]
            if len(table):
                parent = tables[path[:-1]]
                parent.add(path[-1], table)
    crio = tables[("crio",)]
    if len(crio):
        document.add("crio", crio)
    return tomlkit.dumps(document)
