"""Checks of CRI requests before anything is made (crio_fast/validation.py)."""

from __future__ import annotations

import pytest

from crio_fast.api import api_pb2 as pb
from crio_fast.errors import InvalidArgument
from crio_fast.validation import (
    check_container_config,
    check_exec_sync,
    check_id,
    check_log_path,
    check_no_nul,
    check_pod_config,
)


def pod(**fields) -> pb.PodSandboxConfig:
    config = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="p", namespace="ns", uid="u"),
                                 hostname="p", log_directory="/var/log/pods/ns_p_u")
    for path, value in fields.items():
        *parents, last = path.split("__")
        target = config
        for name in parents:
            target = getattr(target, name)
        setattr(target, last, value)
    return config


def container(**fields) -> pb.ContainerConfig:
    config = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="c"), image=pb.ImageSpec(image="busybox"),
                                command=["/bin/sh"], log_path="c/0.log")
    for path, value in fields.items():
        *parents, last = path.split("__")
        target = config
        for name in parents:
            target = getattr(target, name)
        setattr(target, last, value)
    return config


def test_what_the_kubelet_sends_passes():
    check_pod_config(pod())
    config = container()
    config.envs.add(key="PATH", value=b"/bin")
    config.mounts.add(container_path="/data", host_path="/var/lib/data")
    config.linux.security_context.run_as_user.value = 2**32 - 2
    config.linux.security_context.supplemental_groups.extend([0, 65534])
    config.linux.resources.oom_score_adj = -997
    check_container_config(config)
    check_exec_sync(["/bin/true"], 0)


@pytest.mark.parametrize("config", [
    pod(metadata__name="a\0b"), pod(metadata__uid="u" * 254), pod(metadata__namespace="a;b=c"),
    pod(hostname="h" * 65), pod(log_directory="relative"), pod(log_directory="/" + "d" * 4096),
], ids=["NUL in the name", "long uid", "CNI_ARGS separators", "hostname of 65", "relative log_directory",
        "log_directory past PATH_MAX"])
def test_bad_pod_configs(config: pb.PodSandboxConfig):
    with pytest.raises(InvalidArgument):
        check_pod_config(config)


def test_a_log_directory_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(InvalidArgument, match="not a directory"):
        check_pod_config(pod(log_directory=str(tmp_path / "file")))
    check_pod_config(pod(log_directory=str(tmp_path / "new")))


@pytest.mark.parametrize(("mapping", "ok"), [
    (dict(host_port=8080, container_port=80), True),
    (dict(host_port=0, container_port=80), True),
    (dict(host_port=70000, container_port=80), False),
    (dict(host_port=-1, container_port=80), False),
    (dict(host_port=8080, container_port=0), False),
    (dict(host_port=8080, container_port=80, host_ip="::1"), True),
    (dict(host_port=8080, container_port=80, host_ip="localhost"), False),
    (dict(host_port=8080, container_port=80, protocol=9), False),
])
def test_port_mappings(mapping, ok: bool):
    config = pod()
    config.port_mappings.add(**mapping)
    if ok:
        check_pod_config(config)
    else:
        with pytest.raises(InvalidArgument):
            check_pod_config(config)


@pytest.mark.parametrize(("field", "values"), [
    ("servers", ["dns.example"]), ("searches", ["a b"]), ("searches", ["a\nnameserver 1.1.1.1"]), ("options", [""]),
])
def test_dns_entries_that_would_break_resolv_conf(field: str, values: list[str]):
    config = pod()
    getattr(config.dns_config, field).extend(values)
    with pytest.raises(InvalidArgument):
        check_pod_config(config)


@pytest.mark.parametrize("change", [
    lambda c: c.command.append("a\0"),
    lambda c: c.args.append("a" * (32 * 4096)),
    lambda c: setattr(c, "working_dir", "relative"),
    lambda c: c.envs.add(key="A=B", value=b""),
    lambda c: c.envs.add(key="", value=b"x"),
    lambda c: c.mounts.add(container_path="/m", host_path="relative"),
    lambda c: c.mounts.add(container_path="", host_path="/h"),
    lambda c: c.devices.add(container_path="/dev/x\0", host_path="/dev/null"),
    lambda c: c.linux.security_context.masked_paths.append("proc"),
    lambda c: setattr(c.linux.security_context.run_as_user, "value", 2**32),
    lambda c: setattr(c.linux.security_context.run_as_group, "value", -1),
    lambda c: c.linux.security_context.supplemental_groups.append(2**32 - 1),
    lambda c: setattr(c.linux.resources, "oom_score_adj", 1001),
    lambda c: c.linux.resources.unified.__setitem__("memory.max", "1\0"),
    lambda c: setattr(c, "log_path", "/abs.log"),
    lambda c: c.mounts.add(container_path="/iv", image=pb.ImageSpec(image="busybox"), image_sub_path="s" * 5000),
], ids=["NUL in command", "argument past MAX_ARG_STRLEN", "relative working_dir", "env key with =",
        "empty env key", "relative host_path", "no container_path", "NUL in a device path", "relative masked path",
        "uid 2^32", "negative gid", "group (gid_t)-1", "oom_score_adj 1001", "NUL in a map value",
        "absolute log_path", "image volume sub path past PATH_MAX"])
def test_bad_container_configs(change):
    config = container()
    change(config)
    with pytest.raises(InvalidArgument):
        check_container_config(config)


def test_labels_and_annotations_are_free_text():
    config = container()
    config.labels["note"] = "a\0b"
    config.annotations["note"] = "a\0b"
    check_no_nul(config, "container")


@pytest.mark.parametrize("log_path", ["../x.log", "a/../../x.log", "a/..", "/x.log", "dir/"])
def test_log_paths_that_leave_the_log_directory_or_name_none(log_path: str):
    with pytest.raises(InvalidArgument):
        check_log_path(log_path)


def test_log_paths_kept_inside():
    for log_path in ("c/0.log", "0.log", "a/b/c.log", "..x.log", ""):
        check_log_path(log_path)


@pytest.mark.parametrize(("cmd", "timeout"), [(["a\0"], 1), (["true"], -1), (["true"], 2**31), (["true"], 2**63 - 1),
                                             ([], 1)])
def test_bad_exec_sync(cmd: list[str], timeout: int):
    with pytest.raises(InvalidArgument):
        check_exec_sync(cmd, timeout)


@pytest.mark.parametrize("value", ["", "a" * 65, "a\0"])
def test_bad_ids(value: str):
    with pytest.raises(InvalidArgument):
        check_id(value, "container_id")


def test_a_message_quotes_a_huge_value_cut_short():
    with pytest.raises(InvalidArgument) as refused:
        check_pod_config(pod(metadata__name="n" * (1 << 20)))
    assert len(str(refused.value)) < 400


# ---------------------------------------------------------------- user namespaces (hostUsers: false)

def _userns(mode: int, uids=None, gids=None) -> pb.NamespaceOption:
    default = [pb.IDMapping(container_id=0, host_id=100000, length=65536)]
    return pb.NamespaceOption(userns_options=pb.UserNamespace(
        mode=mode, uids=default if uids is None else uids, gids=default if gids is None else gids))


def _pod_with(options: pb.NamespaceOption) -> pb.PodSandboxConfig:
    config = pod()
    config.linux.security_context.namespace_options.CopyFrom(options)
    return config


def test_user_namespace_modes_the_kubelet_sends_pass():
    from crio_fast.validation import user_namespace_wanted

    for options, wanted in ((_userns(pb.NamespaceMode.POD), True),
                            (_userns(pb.NamespaceMode.NODE, [], []), False),
                            (pb.NamespaceOption(), False)):  # no userns_options at all: the node's
        check_pod_config(_pod_with(options))
        config = container()
        config.linux.security_context.namespace_options.CopyFrom(options)
        check_container_config(config)
        assert user_namespace_wanted(options) is wanted


@pytest.mark.parametrize("options, words", [
    # critest v1.36's rejections
    (_userns(pb.NamespaceMode.POD, [pb.IDMapping(container_id=0, host_id=1000, length=100000),
                                     pb.IDMapping(container_id=0, host_id=2000, length=100000)]), "exactly one"),
    (_userns(pb.NamespaceMode.POD, [pb.IDMapping(container_id=1, host_id=1000, length=100000)],
             [pb.IDMapping(container_id=1, host_id=1000, length=100000)]), "container id 0"),
    (_userns(pb.NamespaceMode.CONTAINER, [], []), "CONTAINER is not supported"),
    (_userns(pb.NamespaceMode.TARGET, [], []), "TARGET is not supported"),
    # and more
    (_userns(pb.NamespaceMode.POD, [], []), "has 0 mappings"),
    (_userns(pb.NamespaceMode.POD, gids=[]), "gids has 0 mappings"),
    (_userns(pb.NamespaceMode.POD, [pb.IDMapping(container_id=0, host_id=1000, length=0)]), "length is 0"),
    (_userns(pb.NamespaceMode.POD, [pb.IDMapping(container_id=0, host_id=2**32 - 10, length=65536)]), "past"),
    (_userns(7, [], []), "mode 7 is not supported"),
    (pb.NamespaceOption(pid=pb.NamespaceMode.NODE, userns_options=_userns(pb.NamespaceMode.POD).userns_options),
     "pid NODE"),
    (pb.NamespaceOption(ipc=pb.NamespaceMode.NODE, userns_options=_userns(pb.NamespaceMode.POD).userns_options),
     "ipc NODE"),
])
def test_bad_user_namespace_options(options: pb.NamespaceOption, words: str):
    with pytest.raises(InvalidArgument, match=words):
        check_pod_config(_pod_with(options))
    config = container()
    config.linux.security_context.namespace_options.CopyFrom(options)
    with pytest.raises(InvalidArgument, match=words):
        check_container_config(config)
