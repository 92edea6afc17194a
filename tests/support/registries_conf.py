"""containers-registries.conf files for test and benchmark daemons (no pytest: bench/ uses it)."""

from __future__ import annotations

from pathlib import Path


def write_registries_conf(
    path: Path,
    insecure_hosts: list[str],
    *,
    search: list[str] | None = None,
    extra: str = "",
) -> Path:
    """A registries.conf marking ``insecure_hosts`` insecure (plain HTTP), searching ``search``."""
    lines = [f"unqualified-search-registries = {list(search or insecure_hosts[:1])!r}".replace("'", '"'), ""]
    for host in insecure_hosts:
        lines += ["[[registry]]", f'location = "{host}"', "insecure = true", ""]
    path.write_text("\n".join(lines) + extra)
    return path
