"""registries.conf: where to pull from (containers-registries.conf(5), version 2).

Supported keys::

    unqualified-search-registries = ["quay.io", "docker.io"]
    short-name-mode = "enforcing" | "permissive" | "disabled"
    [[registry]]
    prefix = "example.com/foo" | "*.example.com"   # defaults to location
    location = "mirror.internal/foo"               # rewrites the matched prefix
    insecure = false                               # plain HTTP / unverified TLS allowed
    blocked = false
    mirror-by-digest-only = false                  # old spelling of pull-from-mirror = "digest-only"
    [[registry.mirror]]
    location = "..."; insecure = false; pull-from-mirror = "all" | "digest-only" | "tag-only"
    [aliases]
    "busybox" = "docker.io/library/busybox"

Files ending in ".conf" in the drop-in directory ``registries.conf.d`` next to
the main file are applied in lexical order after it: a [[registry]] with the
same prefix replaces the earlier one, aliases merge key by key, and the scalar
keys (search registries, short-name mode) replace earlier values when set.

There is no terminal to prompt on, so every short-name mode behaves like
"permissive" does non-interactively: aliases first, then each search registry
in order. The registry matched is the one with the longest matching prefix.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from crio_fast.image.reference import (
    ImageReference,
    InvalidReference,
    is_short_name,
    is_valid_registry,
    parse_reference,
    split_short_name,
)

DEFAULT_REGISTRIES_CONF = "/etc/containers/registries.conf"
REGISTRIES_CONF_ENV = "CONTAINERS_REGISTRIES_CONF"
DROP_IN_DIR_NAME = "registries.conf.d"
SHORT_NAME_MODES = ("enforcing", "permissive", "disabled")
PULL_FROM_MIRROR_ALL = "all"
PULL_FROM_MIRROR_DIGEST_ONLY = "digest-only"
PULL_FROM_MIRROR_TAG_ONLY = "tag-only"
PULL_FROM_MIRROR_MODES = (PULL_FROM_MIRROR_ALL, PULL_FROM_MIRROR_DIGEST_ONLY, PULL_FROM_MIRROR_TAG_ONLY)


class RegistriesConfError(ValueError):
    """registries.conf (or a drop-in) is missing, unreadable or invalid."""


class RegistryBlocked(Exception):
    """The reference matches a [[registry]] with blocked = true."""


@dataclass(frozen=True)
class Endpoint:
    """Where to connect: ``location`` is host[:port]; the repository path lives in the paired reference."""

    location: str
    insecure: bool = False
    is_mirror: bool = False


@dataclass(frozen=True)
class Mirror:
    location: str
    insecure: bool = False
    pull_from_mirror: str = PULL_FROM_MIRROR_ALL

    def serves(self, ref: ImageReference) -> bool:
        if self.pull_from_mirror == PULL_FROM_MIRROR_DIGEST_ONLY:
            return ref.digest is not None
        if self.pull_from_mirror == PULL_FROM_MIRROR_TAG_ONLY:
            return ref.digest is None
        return True


@dataclass(frozen=True)
class Registry:
    """One [[registry]] table, validated."""

    prefix: str
    location: str  # "" for a wildcard prefix: the matched host is used as it is
    insecure: bool = False
    blocked: bool = False
    mirrors: tuple[Mirror, ...] = ()
    source: str = ""  # file that defined it, for messages

    @property
    def is_wildcard(self) -> bool:
        return self.prefix.startswith("*.")

    def match_length(self, ref: ImageReference) -> int | None:
        """Length of ``str(ref)`` this prefix covers, or None when it does not match."""
        text = str(ref)
        if self.is_wildcard:
            # "*.example.com" matches any subdomain of example.com (not example.com itself), any port.
            host = ref.registry.rsplit(":", 1)[0] if not ref.registry.endswith("]") else ref.registry
            suffix = self.prefix[1:]
            if host.endswith(suffix) and len(host) > len(suffix):
                return len(ref.registry)
            return None
        if text == self.prefix:
            return len(text)
        if not text.startswith(self.prefix):
            return None
        boundary = text[len(self.prefix)]
        # After a bare host prefix only '/' may follow: a ':' there would be a port, not a tag.
        if boundary == "/" or (boundary in ":@" and "/" in self.prefix):
            return len(self.prefix)
        return None

    def rewrite(self, ref: ImageReference, location: str, matched: int) -> ImageReference:
        """``ref`` with its first ``matched`` characters (the prefix) replaced by ``location``."""
        try:
            if matched <= len(ref.name):
                target = parse_reference(location + ref.name[matched:], default_tag=None)
                return ImageReference(target.registry, target.repository, ref.tag, ref.digest)
            # The prefix named a tag or digest too: location names the whole target, keeping
            # the reference's tag/digest unless it brings its own.
            target = parse_reference(location, default_tag=None)
        except InvalidReference as exc:
            raise RegistriesConfError(
                f"{self.source}: rewriting {ref} from prefix {self.prefix!r} to location {location!r} "
                f"gives an invalid reference: {exc}"
            ) from exc
        if target.tag is None and target.digest is None:
            return ImageReference(target.registry, target.repository, ref.tag, ref.digest)
        return target


@dataclass
class _Layer:
    """What one file contributes, before merging."""

    search: list[str] | None = None
    short_name_mode: str | None = None
    registries: list[Registry] = field(default_factory=list)
    aliases: dict[str, ImageReference] = field(default_factory=dict)


class RegistriesConfig:
    """The merged registries.conf plus drop-ins, ready to answer where to pull from."""

    def __init__(
        self,
        *,
        unqualified_search_registries: Iterable[str] = (),
        short_name_mode: str = "enforcing",
        registries: Iterable[Registry] = (),
        aliases: dict[str, ImageReference] | None = None,
        sources: Iterable[str] = (),
        insecure_registries: Iterable[str] = (),
    ) -> None:
        self.unqualified_search_registries = list(unqualified_search_registries)
        # [crio.image] insecure_registries: hosts (host[:port]) insecure wherever they appear, as
        # location or as mirror, on top of registries.conf's own `insecure = true`.
        self.insecure_registries = frozenset(insecure_registries)
        self.short_name_mode = short_name_mode
        self.registries = list(registries)
        self.aliases = dict(aliases or {})
        self.sources = list(sources)

    # -- loading ---------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> "RegistriesConfig":
        """Load from ``path``, else $CONTAINERS_REGISTRIES_CONF, else /etc/containers/registries.conf.

        A missing default file means an empty configuration; a missing file
        that was asked for explicitly (argument or environment) is an error.
        """
        explicit = path is not None and str(path) != ""
        if not explicit and os.environ.get(REGISTRIES_CONF_ENV):
            path = os.environ[REGISTRIES_CONF_ENV]
            explicit = True
        main = Path(path) if explicit else Path(DEFAULT_REGISTRIES_CONF)
        files: list[Path] = []
        if main.is_file():
            files.append(main)
        elif explicit or main.exists():
            what = "is not a regular file" if main.exists() else "does not exist"
            raise RegistriesConfError(f"registries configuration {main} {what}")
        drop_in_dir = main.parent / DROP_IN_DIR_NAME
        if drop_in_dir.is_dir():
            try:
                names = sorted(p.name for p in drop_in_dir.iterdir() if p.name.endswith(".conf"))
            except OSError as exc:
                raise RegistriesConfError(f"listing {drop_in_dir}: {exc.strerror or exc}") from exc
            files.extend(drop_in_dir / name for name in names if (drop_in_dir / name).is_file())
        return cls.from_layers([(str(f), _read_toml(f)) for f in files])

    @classmethod
    def from_layers(cls, layers: list[tuple[str, dict[str, Any]]]) -> "RegistriesConfig":
        """Merge parsed TOML documents (source name, data) in order, later wins."""
        search: list[str] = []
        mode = "enforcing"
        by_prefix: dict[str, Registry] = {}
        aliases: dict[str, ImageReference] = {}
        for source, data in layers:
            layer = _parse_document(source, data)
            if layer.search is not None:
                search = layer.search
            if layer.short_name_mode is not None:
                mode = layer.short_name_mode
            for registry in layer.registries:
                by_prefix.pop(registry.prefix, None)  # re-insert so later files also win ties
                by_prefix[registry.prefix] = registry
            aliases.update(layer.aliases)
        return cls(
            unqualified_search_registries=search,
            short_name_mode=mode,
            registries=by_prefix.values(),
            aliases=aliases,
            sources=[s for s, _ in layers],
        )

    # -- queries ---------------------------------------------------------------

    def candidates(self, image: str) -> list[ImageReference]:
        """Fully qualified references to try, in order, for what the user typed.

        A fully qualified name gives just itself. A short name gives its alias
        if there is one, else one reference per unqualified-search registry
        (none configured: an empty list).
        """
        if not is_short_name(image):
            return [parse_reference(image)]
        path, tag, digest = split_short_name(image)
        if tag is None and digest is None:
            tag = "latest"
        alias = self.aliases.get(path)
        if alias is not None:
            return [ImageReference(alias.registry, alias.repository, tag, digest)]
        out: list[ImageReference] = []
        for search_registry in self.unqualified_search_registries:
            ref = parse_reference(f"{search_registry}/{image}")
            if ref not in out:
                out.append(ref)
        return out

    def find_registry(self, ref: ImageReference) -> tuple[Registry, int] | None:
        """The [[registry]] with the longest prefix matching ``ref`` (explicit beats wildcard on ties)."""
        best: tuple[Registry, int] | None = None
        best_key = (-1, False)
        for registry in self.registries:
            matched = registry.match_length(ref)
            if matched is None:
                continue
            key = (matched, not registry.is_wildcard)
            if key > best_key:
                best, best_key = (registry, matched), key
        return best

    def endpoints(self, ref: ImageReference) -> list[tuple[Endpoint, ImageReference]]:
        """Mirrors in order (those whose pull-from-mirror admits ``ref``), then the primary location."""
        found = self.find_registry(ref)
        if found is None:
            return [(Endpoint(ref.registry, self._insecure(ref.registry, False), is_mirror=False), ref)]
        registry, matched = found
        if registry.blocked:
            raise RegistryBlocked(
                f"registry {ref.registry} is blocked in {registry.source or 'registries.conf'} "
                f"(prefix {registry.prefix!r}): refusing to pull {ref}"
            )
        out: list[tuple[Endpoint, ImageReference]] = []
        for mirror in registry.mirrors:
            if mirror.serves(ref):
                mirrored = registry.rewrite(ref, mirror.location, matched)
                out.append((Endpoint(mirrored.registry, self._insecure(mirrored.registry, mirror.insecure),
                                     is_mirror=True), mirrored))
        primary = ref if registry.is_wildcard else registry.rewrite(ref, registry.location, matched)
        out.append((Endpoint(primary.registry, self._insecure(primary.registry, registry.insecure),
                             is_mirror=False), primary))
        return out

    def _insecure(self, host: str, configured: bool) -> bool:
        return configured or host in self.insecure_registries


# -- parsing -----------------------------------------------------------------------


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise RegistriesConfError(f"reading {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise RegistriesConfError(f"{path}: invalid TOML: {exc}") from exc


def _expect(value: Any, kind: type | tuple[type, ...], where: str, source: str) -> Any:
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise RegistriesConfError(f"{source}: {where} must be a {names}, not {type(value).__name__}")
    return value


def _expect_string_list(value: Any, where: str, source: str) -> list[str]:
    _expect(value, list, where, source)
    for item in value:
        _expect(item, str, f"each entry of {where}", source)
    return list(value)


def _parse_document(source: str, data: dict[str, Any]) -> _Layer:
    layer = _Layer()
    if "registries" in data:
        raise RegistriesConfError(
            f"{source}: the version 1 format ([registries.search] etc.) is not supported; use version 2 "
            "(unqualified-search-registries and [[registry]] tables)"
        )
    if "unqualified-search-registries" in data:
        layer.search = []
        for entry in _expect_string_list(data["unqualified-search-registries"], "unqualified-search-registries", source):
            layer.search.append(_validate_search_registry(entry, source))
    if "short-name-mode" in data:
        mode = _expect(data["short-name-mode"], str, "short-name-mode", source)
        if mode not in SHORT_NAME_MODES:
            raise RegistriesConfError(f"{source}: short-name-mode {mode!r} is not one of {', '.join(SHORT_NAME_MODES)}")
        layer.short_name_mode = mode
    tables = _expect(data.get("registry", []), list, "[[registry]]", source)
    for index, table in enumerate(tables):
        _expect(table, dict, f"[[registry]] #{index + 1}", source)
        layer.registries.append(_parse_registry(table, f"[[registry]] #{index + 1}", source))
    aliases = _expect(data.get("aliases", {}), dict, "[aliases]", source)
    for key, value in aliases.items():
        layer.aliases[_validate_alias_key(key, source)] = _validate_alias_value(key, value, source)
    return layer


def _validate_search_registry(entry: str, source: str) -> str:
    if not is_valid_registry(entry):
        raise RegistriesConfError(
            f"{source}: unqualified-search-registries entry {entry!r} is not a registry host[:port]"
        )
    return entry


def _validate_alias_key(key: str, source: str) -> str:
    try:
        path, tag, digest = split_short_name(key)
    except InvalidReference as exc:
        raise RegistriesConfError(f"{source}: alias {key!r} must be a short name: {exc}") from exc
    if tag is not None or digest is not None:
        raise RegistriesConfError(f"{source}: alias {key!r} must not carry a tag or digest")
    return path


def _validate_alias_value(key: str, value: Any, source: str) -> ImageReference:
    _expect(value, str, f"alias {key!r}", source)
    try:
        qualified = not is_short_name(value)
        ref = parse_reference(value, default_tag=None)
    except InvalidReference as exc:
        raise RegistriesConfError(f"{source}: alias {key!r} = {value!r} is not a valid reference: {exc}") from exc
    if not qualified:
        raise RegistriesConfError(f"{source}: alias {key!r} = {value!r} must name its registry (fully qualified)")
    if ref.tag is not None or ref.digest is not None:
        raise RegistriesConfError(f"{source}: alias {key!r} = {value!r} must not carry a tag or digest")
    return ref


def _validate_prefix(prefix: str, where: str, source: str) -> None:
    if prefix.startswith("*."):
        host = prefix[2:]
        if not host or "/" in host or ":" in host or "*" in host or "@" in host:
            raise RegistriesConfError(
                f"{source}: {where}: wildcard prefix {prefix!r} must be '*.' followed by a host name only"
            )
        if not is_valid_registry(host):
            raise RegistriesConfError(f"{source}: {where}: wildcard prefix {prefix!r} has an invalid host name")
        return
    if "*" in prefix:
        raise RegistriesConfError(f"{source}: {where}: a wildcard is allowed only at the start of a prefix ('*.host')")
    _validate_location(prefix, f"{where}: prefix", source)


def _validate_location(location: str, where: str, source: str) -> None:
    if "://" in location:
        raise RegistriesConfError(f"{source}: {where} {location!r} must not contain a scheme; use insecure = true for plain HTTP")
    # A bare host is a valid location/prefix; check it as host + a dummy repository.
    probe = location if "/" in location else f"{location}/probe"
    if not probe.split("/", 1)[0]:
        raise RegistriesConfError(f"{source}: {where} {location!r} has no host")
    try:
        if is_short_name(probe):
            raise InvalidReference(f"{location.split('/', 1)[0]!r} is not a registry host (needs '.', ':' or 'localhost')")
        parse_reference(probe)
    except InvalidReference as exc:
        raise RegistriesConfError(f"{source}: {where} {location!r} is invalid: {exc}") from exc


def _expect_bool(table: dict[str, Any], key: str, where: str, source: str) -> bool:
    return bool(_expect(table.get(key, False), bool, f"{where}: {key}", source))


def _parse_registry(table: dict[str, Any], where: str, source: str) -> Registry:
    prefix = _expect(table.get("prefix", ""), str, f"{where}: prefix", source).strip()
    location = _expect(table.get("location", ""), str, f"{where}: location", source).strip()
    if not prefix and not location:
        raise RegistriesConfError(f"{source}: {where} needs a prefix or a location")
    if not prefix:
        prefix = location
    _validate_prefix(prefix, where, source)
    if prefix.startswith("*."):
        if location:
            raise RegistriesConfError(
                f"{source}: {where}: wildcard prefix {prefix!r} cannot have a location (the matched host is used)"
            )
    else:
        if not location:
            location = prefix
        _validate_location(location, f"{where}: location", source)
    insecure = _expect_bool(table, "insecure", where, source)
    blocked = _expect_bool(table, "blocked", where, source)
    digest_only = _expect_bool(table, "mirror-by-digest-only", where, source)
    mirrors: list[Mirror] = []
    for index, mirror_table in enumerate(_expect(table.get("mirror", []), list, f"{where}: mirror", source)):
        mirror_where = f"{where} mirror #{index + 1}"
        _expect(mirror_table, dict, mirror_where, source)
        mirror_location = _expect(mirror_table.get("location", ""), str, f"{mirror_where}: location", source).strip()
        if not mirror_location:
            raise RegistriesConfError(f"{source}: {mirror_where} needs a location")
        _validate_location(mirror_location, f"{mirror_where}: location", source)
        mode = _expect(mirror_table.get("pull-from-mirror", ""), str, f"{mirror_where}: pull-from-mirror", source)
        if mode and mode not in PULL_FROM_MIRROR_MODES:
            raise RegistriesConfError(
                f"{source}: {mirror_where}: pull-from-mirror {mode!r} is not one of {', '.join(PULL_FROM_MIRROR_MODES)}"
            )
        if mode and digest_only:
            raise RegistriesConfError(
                f"{source}: {where}: mirror-by-digest-only and a mirror's pull-from-mirror cannot both be set"
            )
        if not mode:
            mode = PULL_FROM_MIRROR_DIGEST_ONLY if digest_only else PULL_FROM_MIRROR_ALL
        mirrors.append(Mirror(mirror_location, _expect_bool(mirror_table, "insecure", mirror_where, source), mode))
    return Registry(prefix, location, insecure, blocked, tuple(mirrors), source)


__all__ = [
    "DEFAULT_REGISTRIES_CONF",
    "Endpoint",
    "Mirror",
    "Registry",
    "RegistriesConfError",
    "RegistriesConfig",
    "RegistryBlocked",
]
