"""The OCI config.json generated from a launch plan (container/oci.py)."""

from __future__ import annotations

import itertools
import json
import os
import resource

from crio_fast.api import api_pb2 as pb
from crio_fast.container import oci, security
from crio_fast.runtime.plan import (
    MS_REC,
    MS_SLAVE,
    Capabilities,
    LaunchPlan,
    MountOp,
    Namespace,
    Rlimit,
    default_linux_mounts,
)

POD_NS = {"net": "/pods/p/ns/net", "ipc": "/pods/p/ns/ipc", "uts": "/pods/p/ns/uts"}


def make_plan(**kw) -> LaunchPlan:
    mounts = default_linux_mounts(
        shm_source="/pods/p/shm", cgroup="v1", cgroup_v1_binds={"memory": "/sys/fs/cgroup/memory/x"},
        extra=[MountOp.char_device("/dev/fuse", 10, 229), MountOp.bind("/data", "/mnt/data", readonly=True,
                                                                          propagation=MS_SLAVE)],
    )
    defaults = dict(
        argv=["/bin/sh", "-c", "true"], env=["PATH=/bin"], cwd="/work", uid=1000, gid=1000, additional_gids=[10],
        capabilities=Capabilities.from_names(["CAP_CHOWN", "CAP_KILL"]), no_new_privs=True, mounts=mounts,
        rlimits=[Rlimit(resource.RLIMIT_NOFILE, 1024, 4096)], oom_score_adj=100,
        sysctls={"net.ipv4.ping_group_range": "0 1"},
        namespaces=[Namespace("mnt"), Namespace("pid")],
    )
    defaults.update(kw)
    return LaunchPlan(**defaults)


def test_process_section():
    spec = oci.build_spec(make_plan(), rootfs="/b/rootfs", cgroups_path="/pods/p/c", pod_namespaces=POD_NS)
    assert spec["ociVersion"] == "1.0.2"
    process = spec["process"]
    assert process["args"] == ["/bin/sh", "-c", "true"] and process["cwd"] == "/work"
    assert process["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [10]}
    assert process["capabilities"]["bounding"] == ["CAP_CHOWN", "CAP_KILL"]
    assert process["capabilities"]["ambient"] == []
    assert process["noNewPrivileges"] is True
    assert process["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 1024}]
    assert process["oomScoreAdj"] == 100
    assert spec["root"] == {"path": "/b/rootfs", "readonly": False}
    assert "hostname" not in spec  # the pod's UTS namespace is joined


def test_namespaces_cgroups_and_sysctls():
    spec = oci.build_spec(make_plan(), rootfs="/r", cgroups_path="/pods/p/c",
                          pod_namespaces={"net": "/pods/p/ns/net"})  # ipc and uts of the host
    linux = spec["linux"]
    assert linux["namespaces"] == [{"type": "mount"}, {"type": "pid"},
                                   {"type": "network", "path": "/pods/p/ns/net"}]
    assert linux["cgroupsPath"] == "/pods/p/c"
    assert "sysctl" not in linux  # net.* of a joined namespace: the daemon writes them (runc would refuse them)
    assert "seccomp" not in linux


def test_ipc_sysctls_stay_in_the_spec_and_net_ones_without_a_joined_namespace():
    plan = make_plan(sysctls={"net.ipv4.ping_group_range": "0 1", "kernel.msgmax": "9000"})
    joined = oci.build_spec(plan, rootfs="/r", cgroups_path="/c", pod_namespaces=POD_NS)
    assert joined["linux"]["sysctl"] == {"kernel.msgmax": "9000"}
    own = oci.build_spec(plan, rootfs="/r", cgroups_path="/c", pod_namespaces={})
    assert own["linux"]["sysctl"] == {"net.ipv4.ping_group_range": "0 1", "kernel.msgmax": "9000"}


def test_device_rules_keep_the_requested_access():
    spec = oci.build_spec(make_plan(), rootfs="/r", cgroups_path="/c", pod_namespaces=POD_NS,
                          device_rules=["c 10:229 r", "b 8:* rw"])
    assert spec["linux"]["resources"]["devices"] == [
        {"allow": False, "access": "rwm"}, {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "r"},
        {"allow": True, "type": "b", "major": 8, "access": "rw"}]


def test_mounts_are_translated():
    spec = oci.build_spec(make_plan(), rootfs="/r", cgroups_path="/c", pod_namespaces=POD_NS)
    by_dest = {m["destination"]: m for m in spec["mounts"]}
    assert list(by_dest)[:2] == ["/proc", "/dev"]
    assert by_dest["/dev/shm"] == {"destination": "/dev/shm", "type": "bind", "source": "/pods/p/shm",
                                   "options": ["bind", "nosuid", "nodev", "noexec", "private"]}
    # One cgroup mount instead of the plan's tmpfs, per-hierarchy binds and read-only remount.
    assert by_dest["/sys/fs/cgroup"]["type"] == "cgroup" and "ro" in by_dest["/sys/fs/cgroup"]["options"]
    assert not any(d.startswith("/sys/fs/cgroup/") for d in by_dest)
    assert by_dest["/sys"]["options"] == ["ro", "nosuid", "nodev", "noexec"]
    assert by_dest["/mnt/data"]["options"] == ["rbind", "ro", "rslave"]
    # Devices the runtime creates itself are left out; the others are created and allowed.
    assert spec["linux"]["devices"] == [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229,
                                         "fileMode": 0o666, "uid": 0, "gid": 0}]
    rules = spec["linux"]["resources"]["devices"]
    assert rules[0] == {"allow": False, "access": "rwm"}
    assert {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rwm"} in rules
    assert "/proc/kcore" in spec["linux"]["maskedPaths"]
    assert "/proc/sys" in spec["linux"]["readonlyPaths"] and "/sys/fs/cgroup" not in spec["linux"]["readonlyPaths"]


def test_privileged_allows_every_device():
    spec = oci.build_spec(make_plan(), rootfs="/r", cgroups_path="/c", pod_namespaces=POD_NS, privileged=True)
    assert spec["linux"]["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    assert "ro" not in next(m for m in spec["mounts"] if m["type"] == "cgroup")["options"]


def test_bind_propagation_without_rec_is_not_recursive():
    plan = make_plan(mounts=[MountOp.bind("/a", "/b", recursive=False, propagation=MS_SLAVE)])
    spec = oci.build_spec(plan, rootfs="/r", cgroups_path="/c", pod_namespaces=POD_NS)
    assert spec["mounts"] == [{"destination": "/b", "type": "bind", "source": "/a", "options": ["bind", "slave"]}]
    plan = make_plan(mounts=[MountOp.bind("/a", "/b", propagation=MS_SLAVE)])
    assert oci.build_spec(plan, rootfs="/r", cgroups_path="/c", pod_namespaces=POD_NS)["mounts"][0]["options"] == \
        ["rbind", "rslave"]
    assert MountOp.bind("/a", "/b").flags & MS_REC


def test_a_read_only_bind_repeats_its_sources_locked_flags(monkeypatch):
    """A user namespace may not clear nosuid/nodev/noexec of the source mount (a tmpfs /tmp has two):
    runc's read-only remount must say them, or it fails with EPERM. Writable binds need no remount.
    (The source's flags stand in here; test_user_namespaces binds from the guests' /tmp.)"""
    real_statvfs = os.statvfs

    class Flags:
        f_flag = os.ST_NOSUID | os.ST_NODEV | os.ST_NOEXEC

    monkeypatch.setattr(os, "statvfs", lambda path: Flags() if path == "/locked" else real_statvfs(path))
    plan = make_plan(mounts=[MountOp.bind("/locked", "/ro", readonly=True), MountOp.bind("/locked", "/rw")])
    read_only, writable = oci.build_spec(plan, rootfs="/r", cgroups_path="/c", pod_namespaces=POD_NS)["mounts"]
    assert {"ro", "nosuid", "nodev", "noexec"} <= set(read_only["options"])
    assert not {"ro", "nosuid", "nodev", "noexec"} & set(writable["options"])


def test_seccomp_the_oci_spec_and_the_native_plan_confine_the_same_containers(tmp_path):
    """Every combination of container profile, pod profile, privileged and seccomp_use_default_when_empty:
    the OCI spec has a profile exactly when the native plan has a program, and a Localhost one is that file."""
    localhost_path = tmp_path / "deny-sethostname.json"
    localhost_path.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["sethostname"], "action": "SCMP_ACT_ERRNO"}]}))
    profiles = [None, pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault),
                pb.SecurityProfile(profile_type=pb.SecurityProfile.Unconfined),
                pb.SecurityProfile(profile_type=pb.SecurityProfile.Localhost, localhost_ref=str(localhost_path))]
    for container, pod, privileged, use_default in itertools.product(profiles, profiles, (False, True),
                                                                       (False, True)):
        native = security.seccomp_for(container, pod, privileged, use_default_when_empty=use_default)
        spec = oci.seccomp_profile(security.seccomp_choice(container, pod, privileged,
                                                           use_default_when_empty=use_default))
        case = (container, pod, privileged, use_default)
        assert (native is None) == (spec is None), case
        chosen = container if container is not None else pod
        if spec is not None and chosen is not None and chosen.profile_type == pb.SecurityProfile.Localhost:
            assert spec["syscalls"][0]["names"] == ["sethostname"], case


def test_seccomp_profile_follows_the_native_rules():
    def spec_profile(container, pod, privileged):
        return oci.seccomp_profile(security.seccomp_choice(container, pod, privileged))

    default = spec_profile(None, None, privileged=False)
    assert default["defaultAction"] == "SCMP_ACT_ALLOW" and default["syscalls"]
    assert spec_profile(None, None, privileged=True) is None
    unconfined = pb.SecurityProfile(profile_type=pb.SecurityProfile.Unconfined)
    assert spec_profile(unconfined, None, privileged=False) is None
    assert spec_profile(None, unconfined, privileged=False) is None
