"""AppArmor: the per-container decision, the default profile's loading, and how the decision travels
(launch plan tag, config.json, crio-fast check). Pure: the kernel's profile list and apparmor_parser are
files and scripts under tmp_path, except the compile test, which needs the node's apparmor_parser."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from crio_fast.api import api_pb2 as pb
from crio_fast.check import Status, check_apparmor
from crio_fast.config.schema import Config
from crio_fast.container import apparmor, oci
from crio_fast.container.apparmor import AppArmor, profile_for, requested_profile
from crio_fast.errors import FailedPrecondition, InvalidArgument
from crio_fast.runtime import wire
from crio_fast.runtime.plan import ExecPlan, LaunchPlan
from crio_fast.runtime.wire import parse_tlv

CHECKOUT = Path(__file__).resolve().parents[2]
MONITOR_H = CHECKOUT / "src" / "crio_fast" / "_native" / "monitor" / "monitor.h"

RD, UNCONFINED, LOCALHOST = (pb.SecurityProfile.RuntimeDefault, pb.SecurityProfile.Unconfined,
                             pb.SecurityProfile.Localhost)


def sc(profile_type=None, ref="", legacy="", privileged=False) -> pb.LinuxContainerSecurityContext:
    context = pb.LinuxContainerSecurityContext(privileged=privileged, apparmor_profile=legacy)
    if profile_type is not None:
        context.apparmor.profile_type = profile_type
        context.apparmor.localhost_ref = ref
        context.apparmor.SetInParent()
    return context


def decide(context, enabled=True, default="crio-fast-default", loaded=("crio-fast-default", "deny-write")):
    return profile_for(requested_profile(context), context.privileged, enabled=enabled, default_profile=default,
                       is_loaded=lambda name: name in loaded)


# -- the request -------------------------------------------------------------------------


def test_requested_profile_structured_field_first_then_the_deprecated_string():
    assert requested_profile(sc()) is None
    assert requested_profile(sc(RD)).profile_type == RD  # an empty message is RuntimeDefault (enum 0)
    assert requested_profile(sc(LOCALHOST, "p", legacy="unconfined")).localhost_ref == "p"  # the new field wins
    assert requested_profile(sc(legacy="runtime/default")).profile_type == RD
    assert requested_profile(sc(legacy="Unconfined")).profile_type == UNCONFINED
    legacy = requested_profile(sc(legacy="localhost/p"))
    assert (legacy.profile_type, legacy.localhost_ref) == (LOCALHOST, "localhost/p")
    bare = requested_profile(sc(legacy="p"))  # CRI-O takes a bare name as a profile's
    assert (bare.profile_type, bare.localhost_ref) == (LOCALHOST, "p")


# -- the decision ------------------------------------------------------------------------


def test_runtime_default_and_no_request_get_the_configured_default():
    assert decide(sc()) == "crio-fast-default"
    assert decide(sc(RD)) == "crio-fast-default"
    assert decide(sc(legacy="runtime/default")) == "crio-fast-default"
    assert decide(sc(RD), default="node-default", loaded=("node-default",)) == "node-default"
    assert decide(sc(RD), default="unconfined") == "unconfined"  # the default turned off in the configuration
    # CRI-O's reading: a localhost_ref with the RuntimeDefault type is still RuntimeDefault.
    assert decide(sc(RD, "deny-write")) == "crio-fast-default"


def test_unconfined_is_written_as_a_profile():
    """As CRI-O: "unconfined" goes to the runtime, so the container drops the runtime's own label."""
    assert decide(sc(UNCONFINED)) == "unconfined"
    assert decide(sc(legacy="unconfined")) == "unconfined"
    assert decide(sc(UNCONFINED), loaded=()) == "unconfined"  # a label, not a profile to find


def test_localhost_profile_must_be_loaded():
    assert decide(sc(LOCALHOST, "deny-write")) == "deny-write"
    assert decide(sc(LOCALHOST, "localhost/deny-write")) == "deny-write"  # the prefix trimmed, as CRI-O does
    assert decide(sc(legacy="localhost/deny-write")) == "deny-write"
    with pytest.raises(FailedPrecondition, match="'nope' is not loaded on this node"):
        decide(sc(LOCALHOST, "nope"))
    with pytest.raises(FailedPrecondition, match="'nope' is not loaded"):
        decide(sc(legacy="localhost/nope"))


def test_malformed_localhost_names_are_invalid():
    for ref in ("", "localhost/", "two words", "line\nbreak", "x" * 5000):
        with pytest.raises(InvalidArgument):
            decide(sc(LOCALHOST, ref))


def test_default_profile_not_loaded_is_refused_not_skipped():
    with pytest.raises(FailedPrecondition, match="runtime default AppArmor profile 'crio-fast-default'"):
        decide(sc(RD), loaded=())


def test_privileged_containers_get_no_profile_whatever_they_ask():
    for context in (sc(privileged=True), sc(RD, privileged=True), sc(LOCALHOST, "deny-write", privileged=True),
                    sc(LOCALHOST, "not-loaded", privileged=True)):
        assert decide(context) is None


def test_without_apparmor_only_a_localhost_profile_is_refused():
    assert decide(sc(), enabled=False) is None
    assert decide(sc(RD), enabled=False) is None
    assert decide(sc(UNCONFINED), enabled=False) is None
    with pytest.raises(FailedPrecondition, match="AppArmor is not enabled on this host"):
        decide(sc(LOCALHOST, "deny-write"), enabled=False)
    with pytest.raises(FailedPrecondition, match="'p' requested but AppArmor is not enabled"):
        decide(sc(legacy="localhost/p"), enabled=False)


# -- the node: profiles list, apparmor_parser --------------------------------------------


@pytest.fixture
def node(tmp_path):
    """A fake node: its profiles list and an apparmor_parser that records its arguments and input and then
    "loads" the profile by adding its name to the list."""
    profiles = tmp_path / "profiles"
    profiles.write_text("lsb_release (enforce)\nnvidia_modprobe//kmod (enforce)\n")
    bin_dir = tmp_path / "sbin"
    bin_dir.mkdir()
    parser = bin_dir / "apparmor_parser"
    parser.write_text(f"""#!/bin/sh
echo "$@" >> {tmp_path}/parser-args
cat > {tmp_path}/parser-input
[ -e {tmp_path}/parser-fails ] && {{ echo "syntax error, unexpected TOK_ID" >&2; exit 1; }}
sed -n 's/^profile \\([^ ]*\\) .*/\\1 (enforce)/p' {tmp_path}/parser-input >> {profiles}
""")
    parser.chmod(0o755)
    policy = tmp_path / "apparmor.d"
    (policy / "abi").mkdir(parents=True)
    (policy / "abi" / "3.0").write_text("")
    return tmp_path


def host(node: Path, default="crio-fast-default", parser_dirs=None) -> AppArmor:
    return AppArmor(default, enabled=True, profiles_file=str(node / "profiles"), policy_dir=str(node / "apparmor.d"),
                    parser_dirs=parser_dirs or (str(node / "sbin"),), search_path=str(node / "empty"))


def test_loaded_profiles_are_the_names_before_the_mode(tmp_path):
    listing = tmp_path / "profiles"
    listing.write_text("lsb_release (enforce)\nnvidia_modprobe//kmod (complain)\n:ns:other (kill)\n")
    assert apparmor.loaded_profiles(str(listing)) == {"lsb_release", "nvidia_modprobe//kmod", ":ns:other"}
    assert apparmor.loaded_profiles(str(tmp_path / "absent")) == set()  # no securityfs: nothing loaded


def test_default_profile_is_loaded_once_with_apparmor_parser_kr(node):
    aa = host(node)
    assert aa.load_default() is None
    assert (node / "parser-args").read_text() == "-Kr\n"
    assert "profile crio-fast-default flags=(attach_disconnected,mediate_deleted)" in (node / "parser-input").read_text()
    assert aa.is_loaded("crio-fast-default")
    assert aa.load_default() is None and aa.problem() is None
    assert (node / "parser-args").read_text() == "-Kr\n"  # already loaded: not again
    assert aa.profile_for(sc()) == "crio-fast-default"


def test_default_profile_gone_is_loaded_again_at_create(node):
    aa = host(node)
    aa.load_default()
    (node / "profiles").write_text("")  # apparmor_parser -R, or a policy reload
    assert aa.profile_for(sc(RD)) == "crio-fast-default"
    assert (node / "parser-args").read_text() == "-Kr\n-Kr\n"


def test_missing_apparmor_parser_is_a_clear_problem(node, tmp_path):
    aa = host(node, parser_dirs=(str(tmp_path / "empty"),))
    problem = aa.load_default()
    assert "apparmor_parser is not installed" in problem and "crio-fast-default" in problem
    assert aa.problem() == problem
    with pytest.raises(FailedPrecondition, match="apparmor_parser is not installed"):
        aa.profile_for(sc())
    assert aa.profile_for(sc(UNCONFINED)) == "unconfined"  # what needs no loading still works
    finding = check_apparmor(Config(), aa)
    assert finding.status is Status.MISSING and "apparmor_parser is not installed" in finding.detail
    assert "apt-get install apparmor" in finding.hint


def test_parser_failure_is_reported_and_not_retried_at_once(node, monkeypatch):
    (node / "parser-fails").write_text("")
    aa = host(node)
    problem = aa.load_default()
    assert "exit status 1" in problem and "syntax error" in problem
    assert aa.problem() == problem
    assert (node / "parser-args").read_text().count("-Kr") == 1  # the cached failure stands for a while
    monkeypatch.setattr(apparmor, "RETRY_SECONDS", 0.0)
    (node / "parser-fails").unlink()
    assert aa.problem() is None
    assert aa.is_loaded("crio-fast-default")


def test_a_configured_default_of_the_node_is_never_generated(node):
    aa = host(node, default="node-default")
    assert "'node-default'" in aa.load_default()
    assert not (node / "parser-args").exists()
    (node / "profiles").write_text("node-default (enforce)\n")
    assert aa.load_default() is None
    assert aa.profile_for(sc()) == "node-default"


def test_a_new_default_profile_applies_to_the_next_container(node):
    """What a SIGHUP reload of apparmor_profile does: the next decision uses the new default; going back to
    the built-in one loads it when the kernel has lost it meanwhile."""
    aa = host(node, default="node-default")
    (node / "profiles").write_text("node-default (enforce)\n")
    assert aa.profile_for(sc()) == "node-default"
    thread = aa.set_default_profile("unconfined")
    assert thread is None and aa.profile_for(sc()) == "unconfined"
    thread = aa.set_default_profile("crio-fast-default")
    thread.join(10)
    assert (node / "parser-args").read_text() == "-Kr\n" and aa.is_loaded("crio-fast-default")
    assert aa.profile_for(sc(RD)) == "crio-fast-default"


def test_unconfined_default_and_disabled_apparmor_load_nothing(node):
    assert host(node, default="unconfined").load_default() is None
    off = AppArmor(enabled=False, profiles_file=str(node / "profiles"), parser_dirs=(str(node / "sbin"),))
    assert off.load_default() is None and off.problem() is None
    assert not (node / "parser-args").exists()
    assert off.profile_for(sc()) is None
    assert check_apparmor(Config(), off).status is Status.OK


def test_check_finds_a_loaded_default(node):
    aa = host(node)
    aa.load_default()
    finding = check_apparmor(Config(), aa)
    assert finding.status is Status.OK and "crio-fast-default is loaded" in finding.detail


# -- the profile's text ------------------------------------------------------------------


def test_default_profile_text(tmp_path):
    text = apparmor.default_profile_text("crio-fast-default", policy_dir=str(tmp_path))
    assert "abi <abi/3.0>" not in text and "@{PROC}=/proc/" in text and "#include" not in text
    assert "profile crio-fast-default flags=(attach_disconnected,mediate_deleted) {" in text
    for rule in ("file,", "network,", "capability,", "deny mount,", "signal (receive) peer=unconfined,",
                 "signal (send,receive) peer=crio-fast-default,", "deny @{PROC}/sysrq-trigger rwklx,",
                 "deny /sys/kernel/security/** rwklx,"):
        assert f"  {rule}\n" in text
    (tmp_path / "abi").mkdir()
    (tmp_path / "abi" / "3.0").write_text("")
    (tmp_path / "tunables").mkdir()
    (tmp_path / "tunables" / "global").write_text("")
    (tmp_path / "abstractions").mkdir()
    (tmp_path / "abstractions" / "base").write_text("")
    confined = apparmor.default_profile_text("x", daemon_label="crio-fast-daemon", policy_dir=str(tmp_path))
    assert confined.index("abi <abi/3.0>,") < confined.index("#include <tunables/global>") < confined.index("profile x")
    assert "  #include <abstractions/base>\n" in confined
    assert "  signal (receive) peer=crio-fast-daemon,\n" in confined


def test_default_profile_compiles_with_the_nodes_apparmor_parser():
    parser = apparmor.find_parser()
    if parser is None:
        pytest.skip("apparmor_parser is not installed on this host (the AppArmor test guests have it)")
    text = apparmor.default_profile_text("crio-fast-default")
    done = subprocess.run([parser, "-QK"], input=text, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


# -- how the decision travels --------------------------------------------------------------


def test_plan_tags_agree_with_the_monitor():
    """monitor.h's enum plan_field and wire.py's tags are one table: every C tag has its Python twin."""
    header = MONITOR_H.read_text()
    body = re.search(r"enum plan_field \{(.*?)\};", header, re.S).group(1)
    c_tags = {name: int(number) for name, number in re.findall(r"PLAN_(\w+) = (\d+)", body)}
    py_tags = {name: getattr(wire, f"PLAN_{name}") for name in c_tags if hasattr(wire, f"PLAN_{name}")}
    assert c_tags and py_tags == c_tags
    assert c_tags["APPARMOR_PROFILE"] == 36
    features = dict(re.findall(r"#define MONITOR_FEATURE_(\w+) (\d+)u", header))
    assert int(features["APPARMOR"]) == wire.MONITOR_FEATURE_APPARMOR
    assert int(features["PLAN_FOLLOWS"]) == wire.MONITOR_FEATURE_PLAN_FOLLOWS


def test_plans_carry_the_profile_only_when_there_is_one():
    tag = wire.PLAN_APPARMOR_PROFILE
    launch = LaunchPlan(argv=["/bin/true"], apparmor_profile="deny-write")
    assert (tag, b"deny-write\0") in parse_tlv(launch.encode())
    assert (tag, b"deny-write\0") in parse_tlv(launch.encode_rest())  # sent in parts: with the process
    assert all(t != tag for t, _ in parse_tlv(LaunchPlan(argv=["/bin/true"]).encode()))
    execs = ExecPlan(target_pid=os.getpid(), argv=["/bin/true"], namespaces=[], apparmor_profile="deny-write")
    assert (tag, b"deny-write\0") in parse_tlv(execs.encode())
    with pytest.raises(ValueError):
        LaunchPlan(argv=["/bin/true"], apparmor_profile="").encode()


def test_config_json_carries_the_profile():
    spec = oci.build_spec(LaunchPlan(argv=["/bin/true"], apparmor_profile="deny-write"), rootfs="/r",
                          cgroups_path="/c", pod_namespaces={})
    assert spec["process"]["apparmorProfile"] == "deny-write"
    unconfined = oci.build_spec(LaunchPlan(argv=["/bin/true"]), rootfs="/r", cgroups_path="/c", pod_namespaces={})
    assert "apparmorProfile" not in unconfined["process"]



def test_the_daemon_loads_its_default_beside_its_start(node):
    aa = host(node)
    thread = aa.start_loading()
    thread.join(timeout=30)
    assert not thread.is_alive() and aa.is_loaded("crio-fast-default")
    assert host(node, default="unconfined").start_loading() is None
