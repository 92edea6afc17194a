"""Default sysctls: which a pod takes, and that its own sysctls win."""

from __future__ import annotations

import pytest

from crio_fast.api import api_pb2 as pb
from crio_fast.errors import InvalidArgument
from crio_fast.sandbox.sysctls import pod_sysctls
from crio_fast.sysctls import namespace_of, parse_default, with_defaults


def test_namespace_of_knows_ipc_net_and_node_sysctls():
    assert namespace_of("kernel.msgmax") == "ipc"
    assert namespace_of("fs/mqueue/msg_max") == "ipc"
    assert namespace_of("net.ipv4.ip_forward") == "net"
    assert namespace_of("kernel.panic") is None
    assert namespace_of("vm.swappiness") is None


def test_parse_default_refuses_node_sysctls_and_bad_shapes():
    assert parse_default("net/ipv4/ping_group_range=0 2147483647") == ("net.ipv4.ping_group_range", "0 2147483647")
    with pytest.raises(ValueError, match="'kernel.panic' is not namespaced"):
        parse_default("kernel.panic=5")
    with pytest.raises(ValueError, match="key=value"):
        parse_default("kernel.msgmax")


def test_pod_sysctls_win_over_defaults():
    merged = with_defaults({"kernel.msgmax": "9"}, ["kernel.msgmax=1", "net.ipv4.ip_forward=1"],
                           own_network=True, own_ipc=True)
    assert merged == {"kernel.msgmax": "9", "net.ipv4.ip_forward": "1"}


def test_defaults_of_a_host_namespace_are_skipped_for_that_pod():
    defaults = ["kernel.msgmax=1", "net.ipv4.ip_forward=1"]
    assert with_defaults({}, defaults, own_network=False, own_ipc=True) == {"kernel.msgmax": "1"}
    assert with_defaults({}, defaults, own_network=True, own_ipc=False) == {"net.ipv4.ip_forward": "1"}


def test_pod_sysctls_apply_defaults_and_report_a_bad_one():
    config = pb.PodSandboxConfig()
    config.linux.sysctls["net/ipv4/ip_forward"] = "0"
    assert pod_sysctls(config, ["net.ipv4.ip_forward=1", "kernel.sem=1 2 3 4"]) == {
        "net.ipv4.ip_forward": "0", "kernel.sem": "1 2 3 4"}
    with pytest.raises(InvalidArgument, match="default_sysctls: sysctl 'vm.swappiness' is not namespaced"):
        pod_sysctls(config, ["vm.swappiness=1"])
