"""registries.conf v2: loading, drop-ins, short names, prefixes, mirrors, blocking."""

from __future__ import annotations

from pathlib import Path

import pytest

from crio_fast.image import registries as registries_module
from crio_fast.image.reference import parse_reference
from crio_fast.image.registries import Endpoint, RegistriesConfError, RegistriesConfig, RegistryBlocked

SHA = "sha256:" + "c" * 64


def load(tmp_path: Path, text: str, **drop_ins: str) -> RegistriesConfig:
    conf = tmp_path / "registries.conf"
    conf.write_text(text)
    if drop_ins:
        directory = tmp_path / "registries.conf.d"
        directory.mkdir()
        for name, content in drop_ins.items():
            (directory / name).write_text(content)
    return RegistriesConfig.load(str(conf))


def endpoints(config: RegistriesConfig, ref: str) -> list[tuple[Endpoint, str]]:
    return [(endpoint, str(rewritten)) for endpoint, rewritten in config.endpoints(parse_reference(ref))]


# -- file resolution ----------------------------------------------------------------------


def test_missing_explicit_file_is_an_error(tmp_path):
    with pytest.raises(RegistriesConfError, match="does not exist"):
        RegistriesConfig.load(str(tmp_path / "nope.conf"))


def test_missing_default_file_means_empty_config(tmp_path, monkeypatch):
    monkeypatch.delenv("CONTAINERS_REGISTRIES_CONF", raising=False)
    monkeypatch.setattr(registries_module, "DEFAULT_REGISTRIES_CONF", str(tmp_path / "etc" / "registries.conf"))
    config = RegistriesConfig.load()
    assert config.candidates("busybox") == []
    assert endpoints(config, "quay.io/a") == [(Endpoint("quay.io", False, False), "quay.io/a:latest")]


def test_environment_variable_names_the_file_and_explicit_path_wins(tmp_path, monkeypatch):
    from_env = tmp_path / "env.conf"
    from_env.write_text('unqualified-search-registries = ["env.example"]\n')
    explicit = tmp_path / "explicit.conf"
    explicit.write_text('unqualified-search-registries = ["explicit.example"]\n')
    monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", str(from_env))
    assert [str(r) for r in RegistriesConfig.load().candidates("x")] == ["env.example/x:latest"]
    assert [str(r) for r in RegistriesConfig.load(str(explicit)).candidates("x")] == ["explicit.example/x:latest"]
    monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", str(tmp_path / "gone.conf"))
    with pytest.raises(RegistriesConfError, match="gone.conf does not exist"):
        RegistriesConfig.load()


# -- short names ----------------------------------------------------------------------------


def test_search_registries_in_order_with_docker_hub_normalization(tmp_path):
    config = load(tmp_path, 'unqualified-search-registries = ["registry.fedoraproject.org", "docker.io"]\nshort-name-mode = "enforcing"\n')
    assert [str(r) for r in config.candidates("busybox")] == [
        "registry.fedoraproject.org/busybox:latest",
        "docker.io/library/busybox:latest",
    ]
    assert [str(r) for r in config.candidates(f"ns/app:2@{SHA}")] == [
        f"registry.fedoraproject.org/ns/app:2@{SHA}",
        f"docker.io/ns/app:2@{SHA}",
    ]
    assert config.short_name_mode == "enforcing"


def test_fully_qualified_name_is_its_only_candidate(tmp_path):
    config = load(tmp_path, 'unqualified-search-registries = ["docker.io"]\n[aliases]\n"busybox" = "quay.io/x/busybox"\n')
    assert [str(r) for r in config.candidates("localhost:5000/busybox:1")] == ["localhost:5000/busybox:1"]


def test_alias_wins_over_search_and_keeps_tag_or_digest(tmp_path):
    config = load(
        tmp_path,
        'unqualified-search-registries = ["docker.io"]\n[aliases]\n"busybox" = "quay.io/mirrored/busybox"\n"team/app" = "registry.example.com:5000/team/app"\n',
    )
    assert [str(r) for r in config.candidates("busybox")] == ["quay.io/mirrored/busybox:latest"]
    assert [str(r) for r in config.candidates("busybox:1.36")] == ["quay.io/mirrored/busybox:1.36"]
    assert [str(r) for r in config.candidates(f"team/app@{SHA}")] == [f"registry.example.com:5000/team/app@{SHA}"]
    assert [str(r) for r in config.candidates("other")] == ["docker.io/library/other:latest"]


def test_no_search_registries_gives_no_candidates(tmp_path):
    assert load(tmp_path, "").candidates("busybox") == []


# -- prefixes, locations, mirrors -----------------------------------------------------------


def test_unconfigured_registry_is_its_own_secure_endpoint(tmp_path):
    config = load(tmp_path, '[[registry]]\nlocation = "other.example"\ninsecure = true\n')
    assert endpoints(config, "quay.io/a/b:1") == [(Endpoint("quay.io", False, False), "quay.io/a/b:1")]


def test_longest_prefix_wins_and_location_rewrites(tmp_path):
    config = load(
        tmp_path,
        """
[[registry]]
prefix = "example.com"
location = "general.mirror"

[[registry]]
prefix = "example.com/team"
location = "team.mirror:5000/team-images"
insecure = true
""",
    )
    assert endpoints(config, "example.com/team/app:1") == [
        (Endpoint("team.mirror:5000", True, False), "team.mirror:5000/team-images/app:1")
    ]
    assert endpoints(config, "example.com/teamwork/app:1") == [
        (Endpoint("general.mirror", False, False), "general.mirror/teamwork/app:1")
    ]
    # A host prefix does not match the same host on another port.
    assert endpoints(config, "example.com:5000/x") == [(Endpoint("example.com:5000", False, False), "example.com:5000/x:latest")]


def test_prefix_naming_a_repository_and_tag(tmp_path):
    config = load(
        tmp_path,
        """
[[registry]]
prefix = "example.com/app"
location = "pinned.example/app-copy"

[[registry]]
prefix = "example.com/app:v1"
location = "v1.example/app:v1-frozen"
""",
    )
    assert endpoints(config, f"example.com/app@{SHA}") == [(Endpoint("pinned.example"), f"pinned.example/app-copy@{SHA}")]
    assert endpoints(config, "example.com/app:v2") == [(Endpoint("pinned.example"), "pinned.example/app-copy:v2")]
    assert endpoints(config, "example.com/app:v1") == [(Endpoint("v1.example"), "v1.example/app:v1-frozen")]


def test_wildcard_prefix_matches_subdomains_only(tmp_path):
    config = load(
        tmp_path,
        """
[[registry]]
prefix = "*.example.com"
insecure = true
[[registry.mirror]]
location = "cache.local/proxy"

[[registry]]
prefix = "exact.example.com"
""",
    )
    assert endpoints(config, "a.b.example.com:5000/x:1") == [
        (Endpoint("cache.local", False, True), "cache.local/proxy/x:1"),
        (Endpoint("a.b.example.com:5000", True, False), "a.b.example.com:5000/x:1"),
    ]
    # Not the bare domain, and an explicit prefix of the same length beats the wildcard.
    assert endpoints(config, "example.com/x") == [(Endpoint("example.com"), "example.com/x:latest")]
    assert endpoints(config, "exact.example.com/x") == [(Endpoint("exact.example.com"), "exact.example.com/x:latest")]


def test_mirrors_come_first_in_order_filtered_by_pull_from_mirror(tmp_path):
    config = load(
        tmp_path,
        """
[[registry]]
location = "docker.io"
[[registry.mirror]]
location = "mirror-a.local"
insecure = true
[[registry.mirror]]
location = "mirror-b.local/hub"
pull-from-mirror = "digest-only"
[[registry.mirror]]
location = "mirror-c.local"
pull-from-mirror = "tag-only"
""",
    )
    assert endpoints(config, "busybox:1") == [
        (Endpoint("mirror-a.local", True, True), "mirror-a.local/library/busybox:1"),
        (Endpoint("mirror-c.local", False, True), "mirror-c.local/library/busybox:1"),
        (Endpoint("docker.io", False, False), "docker.io/library/busybox:1"),
    ]
    assert endpoints(config, f"busybox@{SHA}") == [
        (Endpoint("mirror-a.local", True, True), f"mirror-a.local/library/busybox@{SHA}"),
        (Endpoint("mirror-b.local", False, True), f"mirror-b.local/hub/library/busybox@{SHA}"),
        (Endpoint("docker.io", False, False), f"docker.io/library/busybox@{SHA}"),
    ]


def test_insecure_registries_setting_makes_a_host_insecure_as_location_and_as_mirror(tmp_path):
    config = load(tmp_path, '[[registry]]\nlocation = "docker.io"\n[[registry.mirror]]\nlocation = "mirror.local:5000"\n')
    assert [e.insecure for e, _ in endpoints(config, "busybox:1")] == [False, False]
    config.insecure_registries = frozenset({"mirror.local:5000", "plain.local"})
    assert endpoints(config, "busybox:1") == [
        (Endpoint("mirror.local:5000", True, True), "mirror.local:5000/library/busybox:1"),
        (Endpoint("docker.io", False, False), "docker.io/library/busybox:1"),
    ]
    # A host not in registries.conf at all, and a port that is not the listed one.
    assert endpoints(config, "plain.local/a:1") == [(Endpoint("plain.local", True, False), "plain.local/a:1")]
    assert endpoints(config, "mirror.local:5001/a:1")[0][0].insecure is False


def test_mirror_by_digest_only_applies_to_all_mirrors(tmp_path):
    config = load(tmp_path, '[[registry]]\nlocation = "q.io"\nmirror-by-digest-only = true\n[[registry.mirror]]\nlocation = "m.local"\n')
    assert [e.location for e, _ in endpoints(config, "q.io/a:1")] == ["q.io"]
    assert [e.location for e, _ in endpoints(config, f"q.io/a@{SHA}")] == ["m.local", "q.io"]


def test_blocked_registry_is_refused_with_reason(tmp_path):
    config = load(tmp_path, '[[registry]]\nprefix = "blocked.example/bad"\nblocked = true\n')
    with pytest.raises(RegistryBlocked) as info:
        config.endpoints(parse_reference("blocked.example/bad/app:1"))
    message = str(info.value)
    assert "blocked" in message and "blocked.example/bad/app:1" in message and "registries.conf" in message
    # Only what the prefix covers is blocked.
    assert endpoints(config, "blocked.example/good:1") == [(Endpoint("blocked.example"), "blocked.example/good:1")]


# -- drop-ins -----------------------------------------------------------------------------


def test_drop_ins_apply_in_lexical_order_later_wins(tmp_path):
    config = load(
        tmp_path,
        """
unqualified-search-registries = ["main.example"]
short-name-mode = "enforcing"
[[registry]]
location = "r.example"
insecure = false
[aliases]
"one" = "main.example/one"
"two" = "main.example/two"
""",
        **{
            "20-second.conf": '[[registry]]\nlocation = "r.example"\ninsecure = true\n[aliases]\n"two" = "second.example/two"\n',
            "10-first.conf": 'unqualified-search-registries = ["first.example", "docker.io"]\n[[registry]]\nlocation = "r.example"\nblocked = true\n',
            "30-mode.conf": 'short-name-mode = "disabled"\n',
            "99-ignored.txt": "this is not TOML and is not read",
        },
    )
    assert [str(r) for r in config.candidates("x")] == ["first.example/x:latest", "docker.io/library/x:latest"]
    assert config.short_name_mode == "disabled"
    # 20-second replaced 10-first's table for the same prefix: insecure, not blocked.
    assert endpoints(config, "r.example/a") == [(Endpoint("r.example", True, False), "r.example/a:latest")]
    assert [str(r) for r in config.candidates("one")] == ["main.example/one:latest"]
    assert [str(r) for r in config.candidates("two")] == ["second.example/two:latest"]


# -- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,message",
    [
        ("unqualified-search-registries = [", "invalid TOML"),
        ('short-name-mode = "sometimes"', "short-name-mode 'sometimes' is not one of"),
        ('unqualified-search-registries = "docker.io"', "must be a list"),
        ('unqualified-search-registries = ["not a host"]', "is not a registry host"),
        ("[registries.search]\nregistries = ['docker.io']", "version 1 format"),
        ('[[registry]]\ninsecure = true', "needs a prefix or a location"),
        ('[[registry]]\nlocation = "https://r.example"', "must not contain a scheme"),
        ('[[registry]]\nprefix = "*.example.com"\nlocation = "x.example"', "cannot have a location"),
        ('[[registry]]\nprefix = "a.*.example.com"', "wildcard is allowed only at the start"),
        ('[[registry]]\nprefix = "*.example.com/path"', "host name only"),
        ('[[registry]]\nlocation = "r.example"\ninsecure = "yes"', "insecure must be a bool"),
        ('[[registry]]\nlocation = "r.example"\n[[registry.mirror]]\ninsecure = true', "needs a location"),
        ('[[registry]]\nlocation = "r.example"\n[[registry.mirror]]\nlocation = "m.example"\npull-from-mirror = "never"', "pull-from-mirror 'never'"),
        (
            '[[registry]]\nlocation = "r.example"\nmirror-by-digest-only = true\n[[registry.mirror]]\nlocation = "m.example"\npull-from-mirror = "all"',
            "cannot both be set",
        ),
        ('[aliases]\n"busybox" = "busybox"', "must name its registry"),
        ('[aliases]\n"busybox" = "quay.io/busybox:1"', "must not carry a tag or digest"),
        ('[aliases]\n"quay.io/busybox" = "quay.io/busybox"', "must be a short name"),
        ('[aliases]\n"busybox:1" = "quay.io/busybox"', "must not carry a tag"),
    ],
)
def test_invalid_configurations_are_errors_naming_the_file(tmp_path, text, message):
    with pytest.raises(RegistriesConfError) as info:
        load(tmp_path, text)
    assert message in str(info.value)
    assert "registries.conf" in str(info.value)


def test_invalid_drop_in_names_the_drop_in(tmp_path):
    with pytest.raises(RegistriesConfError, match=r"50-bad\.conf.*short-name-mode"):
        load(tmp_path, "", **{"50-bad.conf": 'short-name-mode = "often"\n'})
