"""Pure security decisions: capabilities, identities, sysctls, ulimits, seccomp compilation."""

from __future__ import annotations

import os
import resource
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from crio_fast.api import api_pb2 as pb
from crio_fast.container import security
from crio_fast.errors import FailedPrecondition, InvalidArgument
from crio_fast.sandbox.sysctls import classify_sysctl

DEFAULTS = ["CHOWN", "DAC_OVERRIDE", "KILL"]


def caps(add=(), drop=()) -> pb.Capability:
    return pb.Capability(add_capabilities=list(add), drop_capabilities=list(drop))


def test_capabilities_defaults_add_and_drop():
    assert security.capability_names(DEFAULTS, caps(add=["CAP_NET_ADMIN"], drop=["kill"]), False) == [
        "CHOWN", "DAC_OVERRIDE", "NET_ADMIN"]


def test_capabilities_all():
    assert security.capability_names(DEFAULTS, caps(add=["ALL"]), False) == sorted(security.ALL_CAPABILITY_NAMES)
    assert security.capability_names(DEFAULTS, caps(add=["SYS_TIME"], drop=["ALL"]), False) == ["SYS_TIME"]
    assert security.capability_names(DEFAULTS, caps(add=["ALL"], drop=["ALL"]), False) == []
    assert security.capability_names(DEFAULTS, caps(drop=["ALL"]), True) == sorted(security.ALL_CAPABILITY_NAMES)


def test_unknown_capability_is_invalid():
    with pytest.raises(InvalidArgument, match="NOPE"):
        security.capability_names(DEFAULTS, caps(add=["NOPE"]), False)


def test_root_gets_bounding_as_effective_non_root_only_added_ambient():
    root = security.resolve_capabilities(DEFAULTS, caps(add=["NET_RAW"]), False, uid=0)
    assert root.effective == root.permitted == root.bounding
    assert root.ambient == 0
    user = security.resolve_capabilities(DEFAULTS, caps(add=["NET_RAW"]), False, uid=1000)
    net_raw = 1 << 13
    assert user.bounding == root.bounding
    assert user.effective == user.permitted == user.inheritable == user.ambient == net_raw
    plain = security.resolve_capabilities(DEFAULTS, caps(), False, uid=1000)
    assert plain.effective == plain.ambient == 0


def _layer(tmp_path: Path) -> list[Path]:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\napp:x:1000:\nvideo:x:44:app\naudio:x:29:other\n")
    return [tmp_path]


def test_identity_merge_and_strict(tmp_path):
    layers = _layer(tmp_path)
    sc = pb.LinuxContainerSecurityContext(run_as_username="app", supplemental_groups=[500])
    assert security.resolve_identity(sc, "", layers) == security.Identity(1000, 1000, [1000, 44, 500])
    sc.supplemental_groups_policy = pb.SupplementalGroupsPolicy.Strict
    assert security.resolve_identity(sc, "", layers) == security.Identity(1000, 1000, [1000, 500])
    sc = pb.LinuxContainerSecurityContext()
    sc.run_as_user.value = 7
    sc.run_as_group.value = 8
    assert security.resolve_identity(sc, "app", layers) == security.Identity(7, 8, [8])
    assert security.resolve_identity(pb.LinuxContainerSecurityContext(), "app", layers).uid == 1000


def test_run_as_group_needs_a_user(tmp_path):
    sc = pb.LinuxContainerSecurityContext()
    sc.run_as_group.value = 8
    layers = _layer(tmp_path)
    with pytest.raises(InvalidArgument, match="run_as_group is set without run_as_user"):
        security.resolve_identity(sc, "app", layers)
    sc.run_as_username = "app"
    assert security.resolve_identity(sc, "", layers) == security.Identity(1000, 8, [8, 44])  # app is in video


def test_sysctl_classification():
    assert classify_sysctl("kernel.shmmax", own_network=False) == "ipc"
    assert classify_sysctl("fs.mqueue.msg_max", own_network=False) == "ipc"
    assert classify_sysctl("net.ipv4.ip_forward", own_network=True) == "net"
    assert classify_sysctl("net/ipv4/ip_forward", own_network=True) == "net"
    with pytest.raises(InvalidArgument, match="host network"):
        classify_sysctl("net.ipv4.ip_forward", own_network=False)
    with pytest.raises(InvalidArgument, match="not namespaced"):
        classify_sysctl("kernel.panic", own_network=True)
    with pytest.raises(InvalidArgument, match="not namespaced"):
        classify_sysctl("vm.swappiness", own_network=True)


def test_ulimits():
    assert security.parse_ulimits(["nofile=1024:2048", "core=-1"]) == [
        security.Rlimit(resource.RLIMIT_NOFILE, 1024, 2048),
        security.Rlimit(resource.RLIMIT_CORE, resource.RLIM_INFINITY, resource.RLIM_INFINITY),
    ]


def test_selinux_options_refused_without_selinux():
    """AppArmor's part is crio_fast.container.apparmor (tests/unit/test_apparmor.py)."""
    security.check_mac(pb.LinuxContainerSecurityContext(), selinux_enabled=False)
    sc = pb.LinuxContainerSecurityContext(selinux_options=pb.SELinuxOption(type="container_t"))
    with pytest.raises(FailedPrecondition, match="SELinux"):
        security.check_mac(sc, selinux_enabled=False)


_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}


def test_runtime_default_compiles_with_arch_check():
    program = security.compile_profile(security.runtime_default_profile())
    assert len(program) % 8 == 0 and len(program) > 8
    constants = {struct.unpack_from("<HBBI", program, i)[3] for i in range(0, len(program), 8)}
    assert _AUDIT_ARCH[os.uname().machine] in constants  # the filter checks the architecture


def _run_classic_bpf(program: bytes, data: bytes) -> int:
    """What a classic BPF seccomp program returns for ``data`` (a struct seccomp_data)."""
    insns = [struct.unpack_from("<HBBI", program, i) for i in range(0, len(program), 8)]
    a = x = 0
    mem = [0] * 16
    pc = 0
    alu = {0x00: lambda p, q: p + q, 0x10: lambda p, q: p - q, 0x20: lambda p, q: p * q,
           0x40: lambda p, q: p | q, 0x50: lambda p, q: p & q, 0x60: lambda p, q: p << q,
           0x70: lambda p, q: p >> q, 0xA0: lambda p, q: p ^ q}
    jumps = {0x10: lambda p, q: p == q, 0x20: lambda p, q: p > q, 0x30: lambda p, q: p >= q,
             0x40: lambda p, q: bool(p & q)}
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        cls, source = code & 0x07, code & 0x08
        operand = x if source else k
        if code == 0x20:  # ld [k]
            a = struct.unpack_from("<I", data, k)[0]
        elif code == 0x60:  # ld M[k]
            a = mem[k]
        elif code == 0x61:  # ldx M[k]
            x = mem[k]
        elif code == 0x00:  # ld #k
            a = k
        elif code == 0x01:  # ldx #k
            x = k
        elif code == 0x02:  # st M[k]
            mem[k] = a
        elif code == 0x03:  # stx M[k]
            mem[k] = x
        elif cls == 0x04:  # alu
            a = alu[code & 0xF0](a, operand) & 0xFFFFFFFF
        elif code == 0x05:  # ja
            pc += k
        elif cls == 0x05:  # conditional jump
            pc += jt if jumps[code & 0xF0](a, operand) else jf
        elif code == 0x06:  # ret #k
            return k
        elif code == 0x16:  # ret a
            return a
        elif code == 0x07:  # tax
            x = a
        elif code == 0x87:  # txa
            a = x
        else:
            raise AssertionError(f"instruction {code:#x} not interpreted")


def test_the_syscall_tree_decides_as_the_list_does():
    """The binary tree (cheaper for the kernel to install) against the list, for every syscall number
    of the native and the compat architecture, with and without a namespace flag to clone."""
    profile = security.runtime_default_profile()
    tree, listed = security.compile_profile(profile), security.compile_profile(profile, tree=False)
    assert tree != listed
    arches = {"x86_64": (0xC000003E, 0x40000003), "aarch64": (0xC00000B7, 0x40000028)}[os.uname().machine]
    for arch in arches:
        for nr in [*range(0, 460), 0x40000000 + 56]:  # an x32 clone too
            for flags in (0, 0x10000000, 0x01200011):
                data = struct.pack("<iIQ6Q", nr, arch, 0, flags, 0, 0, 0, 0, 0)
                assert _run_classic_bpf(tree, data) == _run_classic_bpf(listed, data), (hex(arch), nr, flags)
    # And the tree does decide: unshare is refused, getpid allowed.
    native = arches[0]
    unshare, getpid = (272, 39) if os.uname().machine == "x86_64" else (97, 172)
    assert _run_classic_bpf(tree, struct.pack("<iIQ6Q", unshare, native, 0, 0, 0, 0, 0, 0, 0)) >> 16 == 0x5
    assert _run_classic_bpf(tree, struct.pack("<iIQ6Q", getpid, native, 0, 0, 0, 0, 0, 0, 0)) == 0x7FFF0000


def test_compiled_profile_enforced_in_a_real_process(tmp_path):
    """Load the BPF in a child (no_new_privs + PR_SET_SECCOMP) and see mkdir fail with the profile's errno."""
    program = security.compile_profile({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}],
    })
    bpf = tmp_path / "prog.bpf"
    bpf.write_bytes(program)
    child = r"""
import ctypes, os, sys
data = open(sys.argv[1], "rb").read()
libc = ctypes.CDLL(None, use_errno=True)
buf = ctypes.create_string_buffer(data, len(data))
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
prog = Prog(len(data) // 8, ctypes.cast(buf, ctypes.c_void_p))
assert libc.prctl(38, 1, 0, 0, 0) == 0
assert libc.prctl(22, 2, ctypes.byref(prog), 0, 0) == 0, os.strerror(ctypes.get_errno())
try:
    os.mkdir(sys.argv[2])
except PermissionError:
    print("denied")
"""
    out = subprocess.run([sys.executable, "-c", child, str(bpf), str(tmp_path / "d")], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "denied"
    assert not (tmp_path / "d").exists()


def test_profile_errors_are_invalid_argument(tmp_path):
    with pytest.raises(InvalidArgument, match="defaultAction"):
        security.compile_profile({"syscalls": []})
    with pytest.raises(InvalidArgument, match="unknown action"):
        security.compile_profile({"defaultAction": "SCMP_ACT_BOGUS"})
    localhost = pb.SecurityProfile(profile_type=pb.SecurityProfile.Localhost, localhost_ref=str(tmp_path / "none"))
    with pytest.raises(InvalidArgument, match="No such file"):
        security.seccomp_for(localhost, None, False)


def test_seccomp_choice_container_pod_and_privileged():
    unconfined = pb.SecurityProfile(profile_type=pb.SecurityProfile.Unconfined)
    default = pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault)
    assert security.seccomp_for(None, unconfined, False) is None  # the pod's profile applies
    assert security.seccomp_for(default, unconfined, False)  # the container's wins
    assert security.seccomp_for(None, None, True) is None
    assert security.seccomp_for(default, default, True) is None  # privileged: always unconfined
    # seccomp_use_default_when_empty = false: no profile named means unconfined, a named one still applies.
    assert security.seccomp_for(None, None, False, use_default_when_empty=False) is None
    assert security.seccomp_for(default, None, False, use_default_when_empty=False)
    assert security.seccomp_for(None, None, False)


def test_requested_seccomp_presence_and_legacy_path():
    sc = pb.LinuxContainerSecurityContext()
    assert security.requested_seccomp(sc) is None
    sc.seccomp.SetInParent()  # an empty message is RuntimeDefault (enum 0)
    assert security.requested_seccomp(sc).profile_type == pb.SecurityProfile.RuntimeDefault
    legacy = pb.LinuxContainerSecurityContext(seccomp_profile_path="localhost/tmp/p.json")
    assert security.requested_seccomp(legacy).localhost_ref == "/tmp/p.json"
    assert security.requested_seccomp(pb.LinuxContainerSecurityContext(
        seccomp_profile_path="unconfined")).profile_type == pb.SecurityProfile.Unconfined
    with pytest.raises(InvalidArgument):
        security.requested_seccomp(pb.LinuxContainerSecurityContext(seccomp_profile_path="bogus"))


def test_devices_from_request_and_host():
    [node] = security.requested_devices([pb.Device(host_path="/dev/null", container_path="/dev/x/null",
                                                   permissions="rw")])
    assert (node.kind, node.major, node.minor, node.cgroup_rule()) == ("c", 1, 3, "c 1:3 rw")
    ops = security.device_mount_ops([node])
    assert [op.destination for op in ops] == ["/dev/x", "/dev/x/null"]
    with pytest.raises(InvalidArgument, match="not a character or block"):
        security.requested_devices([pb.Device(host_path="/etc/hostname", container_path="/dev/h")])
    with pytest.raises(InvalidArgument, match="permissions"):
        security.requested_devices([pb.Device(host_path="/dev/null", container_path="/dev/n", permissions="x")])
    names = {d.container_path for d in security.host_devices()}
    assert "/dev/null" not in names  # standard devices come from the default set
    assert "/dev/kmsg" in names or not os.path.exists("/dev/kmsg")
