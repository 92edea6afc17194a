"""The CNI client against small script plugins that record what they were given."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from crio_fast.errors import DeadlineExceeded, FailedPrecondition
from crio_fast.network.cni import Attachment, CniClient, CniError, NetworkList, result_ips
from crio_fast.network.pod import capability_args, parse_bandwidth
from crio_fast.api import api_pb2 as api

# Records its stdin and CNI_* environment to $LOG_DIR/<type>-<command>.json, then
# answers ADD with prevResult plus one address of its own.
RECORDING_PLUGIN = """#!/usr/bin/env python3
import json, os, sys
config = json.load(sys.stdin)
name = os.path.basename(sys.argv[0])
env = {k: v for k, v in os.environ.items() if k.startswith("CNI_")}
with open(os.path.join(os.environ["LOG_DIR"], f"{name}-{env['CNI_COMMAND']}.json"), "w") as f:
    json.dump({"stdin": config, "env": env}, f)
if env["CNI_COMMAND"] == "ADD":
    result = dict(config.get("prevResult") or {"cniVersion": config["cniVersion"], "ips": []})
    result["ips"] = result["ips"] + [{"address": config["address"]}]
    print(json.dumps(result))
"""

FAILING_PLUGIN = """#!/bin/sh
cat >/dev/null
echo '{"cniVersion":"1.0.0","code":7,"msg":"no addresses left","details":"range 10.250.0.0/30 is full"}'
exit 1
"""


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "plugins"
    directory.mkdir()
    for name in ("first", "second"):
        (directory / name).write_text(RECORDING_PLUGIN)
        (directory / name).chmod(0o755)
    (directory / "failing").write_text(FAILING_PLUGIN)
    (directory / "failing").chmod(0o755)
    (directory / "slow").write_text("#!/bin/sh\nexec sleep 30\n")
    (directory / "slow").chmod(0o755)
    (tmp_path / "log").mkdir()
    monkeypatch.setenv("LOG_DIR", str(tmp_path / "log"))
    return directory


def recorded(tmp_path: Path, name: str) -> dict:
    return json.loads((tmp_path / "log" / f"{name}.json").read_text())


def network(version: str = "1.0.0", *types: str) -> NetworkList:
    plugins = [
        {"type": "first", "address": "10.250.0.2/24"},
        {"type": "second", "address": "fd00::2/64", "capabilities": {"portMappings": True, "bandwidth": False}},
    ]
    if types:
        plugins = [{"type": t, "address": "10.250.0.9/24"} for t in types]
    return NetworkList.from_dict({"cniVersion": version, "name": "unit", "plugins": plugins})


ATTACHMENT = Attachment("c0ffee", "/proc/self/ns/net", pod_name="web", pod_namespace="prod", pod_uid="u-1")


def test_add_chains_prev_result_and_passes_declared_capabilities(plugins: Path, tmp_path: Path) -> None:
    client = CniClient([str(tmp_path / "missing"), str(plugins)], 10, tmp_path / "cache")
    caps = {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}], "bandwidth": {"x": 1}}
    result = client.add(network(), ATTACHMENT, caps)
    assert result.ips() == ["10.250.0.2", "fd00::2"]
    assert [call.plugin for call in result.calls] == ["first", "second"]

    first, second = recorded(tmp_path, "first-ADD"), recorded(tmp_path, "second-ADD")
    assert "prevResult" not in first["stdin"] and "runtimeConfig" not in first["stdin"]
    assert second["stdin"]["prevResult"]["ips"] == [{"address": "10.250.0.2/24"}]
    # Only the capability the plugin declares as true is passed.
    assert second["stdin"]["runtimeConfig"] == {"portMappings": caps["portMappings"]}
    assert second["stdin"]["name"] == "unit" and second["stdin"]["cniVersion"] == "1.0.0"
    assert first["env"] == {
        "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c0ffee", "CNI_NETNS": "/proc/self/ns/net", "CNI_IFNAME": "eth0",
        "CNI_PATH": f"{tmp_path / 'missing'}:{plugins}",
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=c0ffee;"
                    "K8S_POD_UID=u-1",
    }


def test_delete_uses_cached_config_and_result_in_reverse(plugins: Path, tmp_path: Path) -> None:
    client = CniClient([str(plugins)], 10, tmp_path / "cache")
    client.add(network(), ATTACHMENT, {"portMappings": [{"hostPort": 1, "containerPort": 2, "protocol": "tcp"}]})
    # A new client (as after a restart) without the network: the cache has everything DEL needs.
    again = CniClient([str(plugins)], 10, tmp_path / "cache")
    deleted = again.delete(Attachment("c0ffee", "", ifname="eth0"))
    assert deleted is not None
    first, second = recorded(tmp_path, "first-DEL"), recorded(tmp_path, "second-DEL")
    assert first["stdin"]["prevResult"]["ips"] == [{"address": "10.250.0.2/24"}, {"address": "fd00::2/64"}]
    assert second["stdin"]["runtimeConfig"]["portMappings"][0]["hostPort"] == 1
    assert "K8S_POD_NAME=web" in first["env"]["CNI_ARGS"]
    assert first["env"]["CNI_NETNS"] == ""
    assert os.listdir(tmp_path / "cache" / "results") == []
    # Nothing cached and no network given: nothing to undo.
    assert again.delete(Attachment("c0ffee", "")) is None


def test_check_runs_from_0_4_0_and_not_before(plugins: Path, tmp_path: Path) -> None:
    client = CniClient([str(plugins)], 10, tmp_path / "cache")
    client.add(network("0.3.1"), ATTACHMENT, {})
    client.check(ATTACHMENT)
    assert not (tmp_path / "log" / "first-CHECK.json").exists()
    client.add(network("0.4.0"), ATTACHMENT, {})
    client.check(ATTACHMENT)
    assert recorded(tmp_path, "first-CHECK")["stdin"]["prevResult"]["ips"][0]["address"] == "10.250.0.2/24"


def test_status_and_gc_only_from_1_1_0(plugins: Path, tmp_path: Path) -> None:
    client = CniClient([str(plugins)], 10, tmp_path / "cache")
    client.status(network("1.0.0"))
    client.gc(network("1.0.0"), [ATTACHMENT])
    assert not (tmp_path / "log" / "first-STATUS.json").exists()
    client.status(network("1.1.0"))
    client.gc(network("1.1.0"), [ATTACHMENT])
    gc = recorded(tmp_path, "second-GC")
    assert gc["stdin"]["cni.dev/valid-attachments"] == [{"containerID": "c0ffee", "ifname": "eth0"}]
    assert "CNI_CONTAINERID" not in gc["env"]
    assert recorded(tmp_path, "first-STATUS")["env"]["CNI_COMMAND"] == "STATUS"


def test_plugin_error_object_becomes_a_message_naming_the_plugin(plugins: Path, tmp_path: Path) -> None:
    client = CniClient([str(plugins)], 10, tmp_path / "cache")
    with pytest.raises(CniError) as failure:
        client.add(network("1.0.0", "first", "failing"), ATTACHMENT, {})
    assert str(failure.value) == (
        "CNI plugin failing failed (ADD): no addresses left: range 10.250.0.0/30 is full (CNI error code 7)"
    )
    assert failure.value.plugin == "failing" and failure.value.cni_code == 7
    # The pending entry stays for the caller's DEL, which undoes what "first" did and drops it.
    assert client.cached_result(ATTACHMENT) is None and client.cached_attachments() == [("c0ffee", "eth0")]
    (plugins / "failing").write_text("#!/bin/sh\ncat >/dev/null\n")  # its DEL succeeds
    client.delete(ATTACHMENT)
    assert recorded(tmp_path, "first-DEL")["stdin"].get("prevResult") is None
    assert os.listdir(tmp_path / "cache" / "results") == []


def test_an_add_cut_short_is_undone_with_the_configuration_it_began_with(plugins: Path, tmp_path: Path) -> None:
    """The cache entry is written before the first plugin runs: a daemon that dies during ADD (here:
    the second plugin never answers) finds, after its restart, what DEL needs, whatever the
    configuration says by then."""
    client = CniClient([str(plugins)], 0.5, tmp_path / "cache")
    with pytest.raises(DeadlineExceeded):
        client.add(network("1.0.0", "first", "slow"), ATTACHMENT, {"portMappings": [{"hostPort": 9}]})
    again = CniClient([str(plugins)], 10, tmp_path / "cache")
    assert again.cached_attachments() == [("c0ffee", "eth0")]
    with pytest.raises(FailedPrecondition, match="no cached CNI result"):
        again.check(ATTACHMENT)  # a pending entry has no result to check against
    (plugins / "slow").write_text("#!/bin/sh\ncat >/dev/null\n")  # its DEL answers
    deleted = again.delete(Attachment("c0ffee", ""))
    assert deleted is not None and deleted.network == "unit"
    first = recorded(tmp_path, "first-DEL")
    assert "prevResult" not in first["stdin"] and "K8S_POD_NAME=web" in first["env"]["CNI_ARGS"]
    assert again.cached_attachments() == []


def test_missing_plugin_and_timeout(plugins: Path, tmp_path: Path) -> None:
    client = CniClient([str(plugins)], 0.5, tmp_path / "cache")
    with pytest.raises(FailedPrecondition, match="CNI plugin 'nope' not found in"):
        client.add(network("1.0.0", "nope"), ATTACHMENT, {})
    with pytest.raises(DeadlineExceeded, match=r"CNI plugin slow \(ADD\) did not finish within 0.5s"):
        client.add(network("1.0.0", "slow"), ATTACHMENT, {})


def test_single_plugin_conf_is_a_list_of_one() -> None:
    single = NetworkList.from_dict({"cniVersion": "0.4.0", "name": "one", "type": "bridge", "bridge": "br0"})
    assert [p["type"] for p in single.plugins] == ["bridge"]
    with pytest.raises(FailedPrecondition, match="plugin 0 has no 'type'"):
        NetworkList.from_dict({"cniVersion": "1.0.0", "name": "bad", "plugins": [{}]})


def test_result_ips_ipv4_first_and_legacy_form() -> None:
    assert result_ips({"ips": [{"address": "fd00::5/64"}, {"address": "10.0.0.5/24"}]}) == ["10.0.0.5", "fd00::5"]
    assert result_ips({"ip4": {"ip": "10.1.0.3/16"}}) == ["10.1.0.3"]


def test_capability_args_from_pod_config() -> None:
    config = api.PodSandboxConfig(
        port_mappings=[
            api.PortMapping(protocol=api.Protocol.UDP, container_port=53, host_port=5353, host_ip="127.0.0.1"),
            api.PortMapping(container_port=80),  # no host port: nothing to forward
        ],
        dns_config=api.DNSConfig(servers=["10.96.0.10"], searches=["svc.cluster.local"], options=["ndots:5"]),
        annotations={"kubernetes.io/ingress-bandwidth": "10M", "kubernetes.io/egress-bandwidth": "1Mi"},
    )
    assert capability_args(config) == {
        "portMappings": [{"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"}],
        "dns": {"servers": ["10.96.0.10"], "searches": ["svc.cluster.local"], "options": ["ndots:5"]},
        "bandwidth": {"ingressRate": 10_000_000, "ingressBurst": 10_000_000,
                      "egressRate": 1_048_576, "egressBurst": 1_048_576},
    }
    with pytest.raises(ValueError):
        parse_bandwidth("fast")


def test_the_temporary_files_of_cache_writes_a_crash_cut_short_are_discarded(plugins: Path, tmp_path: Path) -> None:
    client = CniClient([str(plugins)], 10, tmp_path / "cache")
    client.add(network("1.0.0", "first"), ATTACHMENT, {})
    results = tmp_path / "cache" / "results"
    (results / ".c0ffee-eth0.1234.tmp").write_text("{")
    client.discard_partial_writes()
    assert os.listdir(results) == ["c0ffee-eth0"] and client.cached_attachments() == [("c0ffee", "eth0")]
