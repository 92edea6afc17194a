"""A pod's user namespace on the Python side: its mappings (sandbox/userns.py), what a container request
may say of it (translate.check_user_namespace), and how it reaches the monitor (the pod's argv, the plan's
namespace, ID-mapped overlay and binds, the /dev owner)."""

from __future__ import annotations

import pytest

from crio_fast.api import api_pb2 as pb
from crio_fast.container.translate import check_user_namespace
from crio_fast.errors import InvalidArgument
from crio_fast.runtime import wire
from crio_fast.runtime.plan import (
    DevOwner,
    MountKind,
    MountOp,
    Namespace,
    Overlay,
    _encode_namespaces_and_cgroups,
    default_linux_mounts,
    encode_rootfs,
)
from crio_fast.runtime.spawn import PodMonitorSpec
from crio_fast.runtime.wire import TLVWriter, decode_u32, parse_tlv, parse_tlv_by_tag
from crio_fast.sandbox.userns import IdRange, PodUserNamespace, pod_user_namespace

HOST = 196608


def ids(host: int = HOST, container: int = 0, length: int = 65536) -> pb.IDMapping:
    return pb.IDMapping(container_id=container, host_id=host, length=length)


def pod_config(mode: int | None = pb.NamespaceMode.POD) -> pb.PodSandboxConfig:
    config = pb.PodSandboxConfig()
    if mode is not None:
        config.linux.security_context.namespace_options.userns_options.CopyFrom(
            pb.UserNamespace(mode=mode, uids=[ids()], gids=[ids(HOST + 10)]))
    return config


def test_the_pods_mappings():
    userns = pod_user_namespace(pod_config())
    assert userns == PodUserNamespace(IdRange(0, HOST, 65536), IdRange(0, HOST + 10, 65536))
    assert userns.uids.line() == f"0 {HOST} 65536"
    assert userns.root_owner == (HOST, HOST + 10)
    assert userns.uids.to_host(1000) == HOST + 1000
    assert userns.uids.to_host(65536) is None
    # NODE, or nothing said about user namespaces (crictl, an older kubelet): the node's.
    assert pod_user_namespace(pod_config(pb.NamespaceMode.NODE)) is None
    assert pod_user_namespace(pod_config(None)) is None


def container(userns: pb.UserNamespace | None = None, *mounts: pb.Mount) -> pb.ContainerConfig:
    config = pb.ContainerConfig(mounts=list(mounts))
    if userns is not None:
        config.linux.security_context.namespace_options.userns_options.CopyFrom(userns)
    return config


POD_USERNS = pod_user_namespace(pod_config())


def test_a_container_agrees_with_its_pod():
    same = pb.UserNamespace(mode=pb.NamespaceMode.POD, uids=[ids()], gids=[ids(HOST + 10)])
    check_user_namespace(container(same), POD_USERNS)
    check_user_namespace(container(), POD_USERNS)  # says nothing: in its pod's
    check_user_namespace(container(pb.UserNamespace(mode=pb.NamespaceMode.NODE)), None)
    mapped = pb.Mount(container_path="/v", host_path="/tmp", uidMappings=[ids()], gidMappings=[ids(HOST + 10)])
    check_user_namespace(container(None, mapped), POD_USERNS)


@pytest.mark.parametrize("config, pod_userns, words", [
    (container(pb.UserNamespace(mode=pb.NamespaceMode.POD, uids=[ids()], gids=[ids()])), None, "has none"),
    (container(pb.UserNamespace(mode=pb.NamespaceMode.NODE)), POD_USERNS, "pod's user namespace"),
    (container(pb.UserNamespace(mode=pb.NamespaceMode.POD, uids=[ids(HOST + 65536)], gids=[ids(HOST + 10)])),
     POD_USERNS, "differ"),
    (container(None, pb.Mount(container_path="/v", host_path="/tmp", uidMappings=[ids()], gidMappings=[ids()])),
     None, "need a pod with a user namespace"),
    (container(None, pb.Mount(container_path="/v", host_path="/tmp", uidMappings=[ids()],
                              gidMappings=[ids(HOST + 20)])), POD_USERNS, "must be the pod's"),
    (container(None, pb.Mount(container_path="/v", host_path="/tmp", uidMappings=[ids()])), POD_USERNS,
     "must be the pod's"),
    (container(None, pb.Mount(container_path="/v", image=pb.ImageSpec(image="x"), uidMappings=[ids()],
                              gidMappings=[ids(HOST + 10)])), POD_USERNS, "image volume"),
])
def test_what_a_container_may_not_say(config, pod_userns, words):
    with pytest.raises(InvalidArgument, match=words):
        check_user_namespace(config, pod_userns)


def test_the_monitor_is_given_the_mappings():
    spec = PodMonitorSpec(pod_id="p", pod_dir="/run/p", exits_dir="/run/e", userns_uid_map=f"0 {HOST} 65536",
                          userns_gid_map=f"0 {HOST} 65536")
    argv = spec.argv("/m", 3)
    assert argv[argv.index("--userns-uid-map") + 1] == f"0 {HOST} 65536"
    assert argv[argv.index("--userns-gid-map") + 1] == f"0 {HOST} 65536"
    assert "--userns-uid-map" not in PodMonitorSpec(pod_id="p", pod_dir="/run/p", exits_dir="/run/e").argv("/m", 3)
    with pytest.raises(ValueError):
        PodMonitorSpec(pod_id="p", pod_dir="/run/p", exits_dir="/run/e", userns_uid_map="0 1 2").argv("/m", 3)


def test_the_plan_joins_the_pods_user_namespace():
    w = TLVWriter()
    _encode_namespaces_and_cgroups(w, [Namespace("mnt"), Namespace("user", "/run/p/ns/user")], [])
    namespaces = [parse_tlv_by_tag(value) for tag, value in parse_tlv(w.getvalue()) if tag == wire.PLAN_NAMESPACE]
    user = namespaces[1]
    assert decode_u32(user[wire.NS_TYPE][0]) == 0x10000000  # CLONE_NEWUSER
    assert user[wire.NS_PATH][0] == b"/run/p/ns/user\0"


def test_an_idmapped_overlay_and_bind_on_the_wire():
    overlay = Overlay(lower=["/l"], target="/t", upper="/u", work="/w", idmap=True, upper_owner=(HOST, HOST + 10))
    ((tag, value),) = parse_tlv(encode_rootfs(overlay=overlay))
    assert tag == wire.PLAN_OVERLAY
    fields = parse_tlv_by_tag(value)
    assert decode_u32(fields[wire.OVERLAY_IDMAP][0]) == 1
    assert decode_u32(fields[wire.OVERLAY_UPPER_UID][0]) == HOST
    assert decode_u32(fields[wire.OVERLAY_UPPER_GID][0]) == HOST + 10
    plain = parse_tlv_by_tag(parse_tlv(encode_rootfs(overlay=Overlay(lower=["/l"], target="/t")))[0][1])
    assert wire.OVERLAY_IDMAP not in plain and wire.OVERLAY_UPPER_UID not in plain
    bind = MountOp.bind("/src", "/dst", flags=wire.MOUNT_FLAG_IDMAP)
    assert bind.flags & wire.MOUNT_FLAG_IDMAP and wire.MOUNT_FLAG_IDMAP > 0xFFFFFFFF  # above every MS_* bit


def test_dev_is_the_containers_roots():
    owner = DevOwner(uid=HOST, gid=HOST, tty_gid=HOST + 5)
    ops = default_linux_mounts(dev_owner=owner)
    dev = next(op for op in ops if op.destination == "/dev")
    assert dev.data.endswith(f",uid={HOST},gid={HOST}")
    devpts = next(op for op in ops if op.destination == "/dev/pts")
    assert f"uid={HOST},gid={HOST + 5}" in devpts.data
    nodes = [op for op in ops if op.kind == MountKind.MKNOD]
    assert nodes and all((op.uid, op.gid) == (HOST, HOST) for op in nodes)
    plain = default_linux_mounts()
    assert next(op for op in plain if op.destination == "/dev/pts").data.endswith("gid=5")
    assert all((op.uid, op.gid) == (0, 0) for op in plain if op.kind == MountKind.MKNOD)


def test_an_oci_runtime_needs_the_run_root_open_to_the_pods_root(tmp_path, monkeypatch):
    import os
    import shutil
    import tempfile
    from pathlib import Path

    from crio_fast.config.schema import Config, CrioSection, RuntimeHandler, RuntimeSection
    from crio_fast.runtime.idmap_support import IdmapSupport
    from crio_fast.sandbox import manager as sandbox_manager
    from crio_fast.runtime.idmap_support import first_closed_directory
    from crio_fast.sandbox.manager import SandboxManager
    from crio_fast.state.records import StateStore

    monkeypatch.setattr(sandbox_manager, "idmapped_overlay_support",
                        lambda monitor, directory: IdmapSupport(True, "ok"))
    runtimes = {"native": RuntimeHandler(runtime_type="native"),
                "runc": RuntimeHandler(runtime_type="oci", runtime_path="/usr/sbin/runc"),
                "other": RuntimeHandler(runtime_type="oci", runtime_path="/usr/bin/kata-runtime")}
    # Under /tmp (searchable by all), not tmp_path: pytest's base directory is 0700.
    top = Path(tempfile.mkdtemp(prefix="crio-fast-userns-"))
    state = StateStore(str(tmp_path / "root"))
    try:
        os.chmod(top, 0o711)
        closed = top / "closed"
        (closed / "run").mkdir(parents=True)
        os.chmod(closed, 0o700)
        assert first_closed_directory(closed / "run" / "containers") == str(closed)
        config = Config(crio=CrioSection(root=str(tmp_path / "root"), runroot=str(closed / "run")),
                        runtime=RuntimeSection(container_exits_dir=str(tmp_path / "exits"), runtimes=runtimes))
        sandboxes = SandboxManager(config, state, cgroups=None, monitor_path="/nonexistent")  # type: ignore[arg-type]
        assert sandboxes.user_namespace_support("native").supported
        refused = sandboxes.user_namespace_support("runc")
        assert not refused.supported and str(closed) in refused.detail and "chmod o+x" in refused.detail
        assert "not known" in sandboxes.user_namespace_support("other").detail
        os.chmod(closed, 0o711)
        assert first_closed_directory(closed / "run" / "containers") is None
        assert sandboxes.user_namespace_support("runc").supported
    finally:
        state.close()
        shutil.rmtree(top, ignore_errors=True)


def test_config_json_joins_the_pods_user_namespace():
    from crio_fast.container.oci import build_spec
    from crio_fast.runtime.plan import LaunchPlan

    plan = LaunchPlan(argv=["true"], namespaces=[Namespace("mnt"), Namespace("user", "/run/p/ns/user")])
    spec = build_spec(plan, rootfs="/r", cgroups_path="/c", pod_namespaces={}, userns=POD_USERNS)
    assert {"type": "user", "path": "/run/p/ns/user"} in spec["linux"]["namespaces"]
    assert spec["linux"]["uidMappings"] == [{"containerID": 0, "hostID": HOST, "size": 65536}]
    assert spec["linux"]["gidMappings"] == [{"containerID": 0, "hostID": HOST + 10, "size": 65536}]
    assert "uidMappings" not in build_spec(LaunchPlan(argv=["true"]), rootfs="/r", cgroups_path="/c",
                                           pod_namespaces={})["linux"]
