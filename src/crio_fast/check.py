"""`crio-fast check`: tell a node's owner, in plain words, what the node lacks.

Each probe looks at the live system the way the daemon will use it (the
kernel's own lists under /proc, the shipped monitor's self check, the
configured CNI plugin directories and runtimes) and yields one finding:

    OK       a part that is there
    MISSING  a required part that is not; the daemon will not work without it
    WARN     an optional part that is not, or something worth a look

The command exits 1 when anything required is missing, else 0, so it can gate
an install script.
"""

from __future__ import annotations

import enum
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, TextIO

from crio_fast import _native
from crio_fast.config.schema import Config
from crio_fast.container.apparmor import BUILTIN_DEFAULT, UNCONFINED, AppArmor
from crio_fast.errors import CrioError
from crio_fast.runtime.idmap_support import first_closed_directory, idmapped_overlay_support
from crio_fast.systemd import UNIT_NAME, UnitState, systemd_booted, unit_state

# Namespaces a pod needs (pid, net, ipc, uts, mnt) and those only some pods
# use: user namespaces for userns pods, cgroup namespaces for a private
# /sys/fs/cgroup view.
REQUIRED_NAMESPACES = ("pid", "net", "ipc", "uts", "mnt")
OPTIONAL_NAMESPACES = ("user", "cgroup")

# loopback brings up every pod's lo, so pod networking cannot work without it;
# the others are what the usual bridge network configuration uses, but a node
# with another network plugin (Calico, Cilium, ...) needs none of them.
REQUIRED_CNI_PLUGINS = ("loopback",)
OPTIONAL_CNI_PLUGINS = ("bridge", "host-local", "portmap")

# Controllers whose absence makes resource limits silently ineffective.
IMPORTANT_CGROUP_CONTROLLERS = ("cpu", "memory", "pids")

PROBE_TIMEOUT_SECONDS = 10.0

# Each pod monitor holds one inotify instance (its containers' OOM watch on
# cgroup v2), and inotify's instances are counted per user: below this many,
# a dense node runs out, and the pods past the limit see OOM kills only in the
# counter read at exit, which a cgroup systemd already removed no longer has.
RECOMMENDED_INOTIFY_INSTANCES = 1024


class Status(enum.Enum):
    OK = "OK"
    MISSING = "MISSING"
    WARN = "WARN"


@dataclass(frozen=True)
class Finding:
    status: Status
    part: str
    detail: str
    hint: str = ""

    def render(self) -> str:
        line = f"{self.status.value:<8} {self.part}: {self.detail}"
        return f"{line}\n         hint: {self.hint}" if self.hint and self.status is not Status.OK else line


def check_overlayfs(proc_dir: str = "/proc", modules_dir: str | None = None) -> Finding:
    path = os.path.join(proc_dir, "filesystems")
    try:
        with open(path, encoding="utf-8") as f:
            names = {line.split()[-1] for line in f if line.strip()}
    except OSError as exc:
        return Finding(Status.MISSING, "overlayfs", f"cannot read {path}: {exc.strerror}", "is /proc mounted?")
    if "overlay" in names:
        return Finding(Status.OK, "overlayfs", f"listed in {path}")
    module = overlay_module(modules_dir if modules_dir is not None else os.path.join("/lib/modules", os.uname().release))
    if module:
        # The kernel loads a file system's module itself on the first mount of that type (fs-overlay).
        return Finding(Status.OK, "overlayfs", f"a module ({module}), loaded by the kernel on the first overlay mount")
    return Finding(
        Status.MISSING,
        "overlayfs",
        f"not listed in {path} and no overlay module for this kernel; container root filesystems are overlay mounts",
        "load it with `modprobe overlay` (and add it to /etc/modules-load.d), or use a kernel built with CONFIG_OVERLAY_FS",
    )


def overlay_module(modules_dir: str) -> str:
    """The overlay module's path in the kernel's modules.dep ("" when it has none)."""
    try:
        with open(os.path.join(modules_dir, "modules.dep"), encoding="utf-8") as f:
            for line in f:
                module = line.split(":", 1)[0]
                if os.path.basename(module).split(".", 1)[0] == "overlay":
                    return module
    except OSError:
        pass
    return ""


def check_namespaces(proc_dir: str = "/proc") -> Iterator[Finding]:
    ns_dir = os.path.join(proc_dir, "self", "ns")
    for kind in REQUIRED_NAMESPACES + OPTIONAL_NAMESPACES:
        required = kind in REQUIRED_NAMESPACES
        part = f"{kind} namespace"
        # The entry is a magic link; its presence is what says the kernel has the namespace.
        if os.path.lexists(os.path.join(ns_dir, kind)):
            yield Finding(Status.OK, part, f"{ns_dir}/{kind} exists")
            continue
        yield Finding(
            Status.MISSING if required else Status.WARN,
            part,
            f"{ns_dir}/{kind} is absent: the kernel has no {kind} namespaces"
            + ("" if required else " (only some pods need them)"),
            f"use a kernel built with CONFIG_{kind.upper()}_NS" if kind != "mnt" else "use a kernel with mount namespaces",
        )


def check_cgroups(proc_dir: str = "/proc") -> Iterator[Finding]:
    from crio_fast.cgroups import discover_layout
    from crio_fast.errors import CrioError

    try:
        layout = discover_layout(proc_dir)
    except (CrioError, OSError) as exc:
        yield Finding(
            Status.MISSING, "cgroups", f"cannot work out the cgroup layout: {exc}", "mount cgroup2 on /sys/fs/cgroup"
        )
        return
    v1_count = sum(1 for h in layout.hierarchies if h.version == 1)
    where = [f"{v1_count} v1 hierarchies"] if v1_count else []
    if layout.unified is not None:
        where.append(f"v2 at {layout.unified.mount_point}")
    yield Finding(Status.OK, "cgroups", f"{layout.version} layout ({', '.join(where) or 'nothing mounted'})")
    absent = [c for c in IMPORTANT_CGROUP_CONTROLLERS if layout.hierarchy_of(c) is None]
    if absent:
        yield Finding(
            Status.WARN,
            "cgroup controllers",
            f"{', '.join(absent)} not available: limits on them will not be enforced",
            "enable the controllers (cgroup v2: add them to cgroup.subtree_control of the parent cgroup)",
        )


def check_inotify(proc_dir: str = "/proc") -> Finding:
    """Whether inotify's per-user instance limit leaves room for a monitor per pod."""
    part = "inotify instances"
    path = os.path.join(proc_dir, "sys", "fs", "inotify", "max_user_instances")
    try:
        with open(path, encoding="ascii") as f:
            limit = int(f.read().strip())
    except (OSError, ValueError) as exc:
        return Finding(Status.WARN, part, f"cannot read {path}: {exc}", "is /proc mounted?")
    detail = f"fs.inotify.max_user_instances is {limit}; each pod monitor holds one"
    if limit >= RECOMMENDED_INOTIFY_INSTANCES:
        return Finding(Status.OK, part, detail)
    return Finding(
        Status.WARN,
        part,
        f"{detail}: past about {limit} pods (fewer, counting systemd's and the kubelet's), "
        "OOM kills are read only when a container exits",
        f"set fs.inotify.max_user_instances = {RECOMMENDED_INOTIFY_INSTANCES * 8} in a file under /etc/sysctl.d",
    )


def check_monitor(config: Config) -> Finding:
    path = config.runtime.monitor_path or str(_native.BIN_DIR / "crio-fast-monitor")
    part = "pod monitor"
    if not os.path.isfile(path):
        return Finding(
            Status.MISSING, part, f"{path} does not exist", "reinstall crio-fast: the monitor ships inside the package"
        )
    try:
        result = subprocess.run(
            [path, "--check"], capture_output=True, text=True, timeout=PROBE_TIMEOUT_SECONDS, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Finding(Status.MISSING, part, f"{path} cannot run: {exc}", "check that it is executable for root")
    output = " ".join((result.stdout + result.stderr).split())
    if result.returncode == 0:
        return Finding(Status.OK, part, f"{path} --check: {output or 'ok'}")
    return Finding(
        Status.MISSING,
        part,
        f"{path} --check failed ({result.returncode}): {output}",
        "the kernel lacks syscalls the monitor needs; crio-fast needs Linux 5.12 or newer",
    )


# mount(2) takes a page of options: lowerdir=L1:L2:...,upperdir=U,workdir=W.
_MOUNT_DATA_MAX = 4095


def overlay_layer_limit(root: str, runroot: str) -> int:
    """About how many image layers fit in mount(2)'s one page of overlay options with these roots:
    each layer is ``<root>/images/layers/<64 hex>/diff`` plus a ':', and the page also carries the
    mount-targets layer (``<runroot>/mount-targets/<64 hex>``) and the container's upper and work
    dirs (``<root>/containers/<64 hex>/upper``, ``.../work``)."""
    per_layer = len(os.path.join(root, "images", "layers", "x" * 64, "diff")) + 1
    fixed = (len("lowerdir=") + len(os.path.join(runroot, "mount-targets", "x" * 64)) + 1
             + len(",upperdir=") + len(os.path.join(root, "containers", "x" * 64, "upper"))
             + len(",workdir=") + len(os.path.join(root, "containers", "x" * 64, "work")))
    return max(0, (_MOUNT_DATA_MAX - fixed) // per_layer)


def check_overlay_lower_dirs(config: Config) -> Finding:
    """Whether overlays can take any number of layers (fsconfig "lowerdir+", Linux 6.8), asked the way
    the pod monitor asks: a throwaway overlay context must refuse an unknown key (before 6.5 overlayfs
    takes any key and fails only at the mount) and take lowerdir+."""
    path = config.runtime.monitor_path or str(_native.BIN_DIR / "crio-fast-monitor")
    part = "overlay lower dirs"
    try:
        result = subprocess.run([path, "--probe-fs-param", "overlay", "lowerdir+", "/"], capture_output=True,
                                text=True, timeout=PROBE_TIMEOUT_SECONDS, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Finding(Status.WARN, part, f"cannot ask {path}: {exc}", "see the pod monitor's finding")
    output = " ".join((result.stdout + result.stderr).split())
    answer = output.split(":", 1)[0]
    if result.returncode == 0:
        return Finding(Status.OK, part, "fsconfig lowerdir+, one layer at a time: images with any number of layers")
    limit = overlay_layer_limit(config.crio.root, config.crio.runroot)
    consequence = (f"the layers go to mount(2) in one page of options, so an image of more than about {limit} "
                   "layers cannot run here")
    if answer in ("refused", "no-parser"):
        return Finding(Status.WARN, part,
                       f"the kernel is too old for overlay lowerdir+ (Linux 6.8): {consequence} (probe: {answer})",
                       "Linux 6.8 or newer lifts the limit; a shorter --root makes room for a few more")
    if answer == "no-fsopen":
        return Finding(Status.WARN, part, f"fsopen cannot be used ({output}): {consequence}",
                       "fsopen needs root (CAP_SYS_ADMIN), no seccomp filter refusing it, and overlayfs loaded")
    return Finding(Status.WARN, part, f"cannot tell whether overlayfs takes lowerdir+: {output}",
                   "the pod monitor probes again when it starts")


def _existing_ancestor(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.isdir(path) and path != "/":
        path = os.path.dirname(path)
    return path


def check_idmapped_overlay(config: Config) -> Finding:
    """Whether pods can have user namespaces (hostUsers: false): the monitor mounts their rootfs as an
    overlay over ID-mapped layers of the image store, which needs Linux 5.19 and a filesystem that allows
    ID-mapped mounts. Asked the way the daemon asks (the monitor tries it in a throwaway mount namespace)."""
    path = config.runtime.monitor_path or str(_native.BIN_DIR / "crio-fast-monitor")
    part = "user namespaces"
    layers = os.path.join(config.crio.root, "images", "layers")
    directory = layers if os.path.isdir(layers) else _existing_ancestor(config.crio.root)
    support = idmapped_overlay_support(path, directory)
    oci = sorted(name for name, handler in config.runtime.runtimes.items() if handler.runtime_type == "oci")
    closed = first_closed_directory(Path(config.crio.runroot) / "containers") if oci else None
    if support.supported and closed is not None:
        return Finding(Status.WARN, part, f"overlays over ID-mapped layers on {directory}, but {closed} is not "
                                          f"searchable by others: {', '.join(oci)} refuse pods with hostUsers: "
                                          "false (their containers are set up as the pod's root)",
                       f"chmod o+x {closed}")
    if support.supported:
        return Finding(Status.OK, part, f"overlays over ID-mapped layers on {directory}: pods may run with "
                                        "hostUsers: false")
    return Finding(Status.WARN, part, f"no overlay over ID-mapped layers on {directory}: {support.detail}; pods "
                                      "asking for a user namespace (hostUsers: false) are refused",
                   "Linux 5.19 or newer, and a root on a filesystem that allows ID-mapped mounts (ext4, xfs, btrfs; "
                   "tmpfs from 6.3)")


def check_apparmor(config: Config, apparmor: AppArmor | None = None) -> Finding:
    """Whether containers that ask for the runtime default AppArmor profile (or name none) can get it.

    Looks only: the daemon loads the built-in profile itself when it starts; here the node's
    apparmor_parser compiles it without loading (-Q)."""
    part = "AppArmor"
    aa = apparmor or AppArmor(config.runtime.apparmor_profile)
    if not aa.enabled:
        return Finding(Status.OK, part, "not enabled on this host: containers run without a profile "
                                        "(a Localhost profile is refused)")
    name = aa.default_profile
    if name == UNCONFINED:
        return Finding(Status.WARN, part, 'enabled, but apparmor_profile = "unconfined": containers that ask for '
                                          "the runtime default run unconfined",
                       f"leave [crio.runtime] apparmor_profile unset for the built-in {BUILTIN_DEFAULT}")
    try:
        loaded = aa.is_loaded(name)
    except CrioError as exc:
        return Finding(Status.MISSING, part, str(exc), "is securityfs mounted on /sys/kernel/security?")
    if loaded:
        return Finding(Status.OK, part, f"enabled; the default profile {name} is loaded")
    if not aa.builtin_default:
        return Finding(Status.MISSING, part, f"enabled, but the configured default profile {name!r} is not loaded",
                       f"load it with apparmor_parser, or leave apparmor_profile unset for {BUILTIN_DEFAULT}")
    parser = aa.parser()
    if parser is None:
        return Finding(Status.MISSING, part, f"enabled, but apparmor_parser is not installed: the daemon cannot "
                                             f"load its default profile {name}",
                       'install it (Debian/Ubuntu: apt-get install apparmor), or set [crio.runtime] '
                       'apparmor_profile = "unconfined" to run such containers unconfined')
    try:
        result = subprocess.run([parser, "-QK"], input=aa.profile_text(), capture_output=True, text=True,
                                timeout=PROBE_TIMEOUT_SECONDS, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Finding(Status.MISSING, part, f"{parser} cannot run: {exc}", "reinstall apparmor")
    if result.returncode != 0:
        said = " ".join((result.stderr or result.stdout).split()) or "no output"
        return Finding(Status.MISSING, part, f"{parser} cannot compile the default profile {name} "
                                             f"(exit status {result.returncode}): {said}",
                       'set [crio.runtime] apparmor_profile to a profile loaded by the node, or to "unconfined"')
    return Finding(Status.OK, part, f"enabled; {parser} compiles the default profile {name}, which the daemon "
                                    "loads when it starts")


def check_cni_plugins(plugin_dirs: Iterable[str]) -> Iterator[Finding]:
    dirs = list(plugin_dirs)
    searched = ", ".join(dirs) or "(no plugin_dirs configured)"
    for plugin in REQUIRED_CNI_PLUGINS + OPTIONAL_CNI_PLUGINS:
        found = next(
            (
                os.path.join(d, plugin)
                for d in dirs
                if os.path.isfile(os.path.join(d, plugin)) and os.access(os.path.join(d, plugin), os.X_OK)
            ),
            None,
        )
        part = f"CNI plugin {plugin}"
        if found:
            yield Finding(Status.OK, part, found)
            continue
        required = plugin in REQUIRED_CNI_PLUGINS
        yield Finding(
            Status.MISSING if required else Status.WARN,
            part,
            f"not found in {searched}" + ("" if required else " (needed by bridge networks only)"),
            "install the CNI reference plugins (Debian/Ubuntu: containernetworking-plugins) or set"
            " [crio.network] plugin_dirs",
        )


def check_runtimes(config: Config) -> Iterator[Finding]:
    external = 0
    for name in config.runtime_handler_names():
        handler = config.runtime_handler(name)
        part = f"runtime {name}"
        if handler.runtime_type == "native":
            yield Finding(Status.OK, part, "built in (runs through the pod monitor)")
            continue
        external += 1
        path = handler.runtime_path or shutil.which(name) or ""
        if not path or not os.path.isfile(path):
            yield Finding(
                Status.MISSING,
                part,
                f"runtime_path {path or '(unset, and no ' + name + ' on PATH)'} does not exist",
                f"install {name} or fix [crio.runtime.runtimes.{name}] runtime_path",
            )
            continue
        try:
            result = subprocess.run(
                [path, "--version"], capture_output=True, text=True, timeout=PROBE_TIMEOUT_SECONDS, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            yield Finding(Status.MISSING, part, f"{path} --version cannot run: {exc}", f"reinstall {name}")
            continue
        first_line = (result.stdout or result.stderr).strip().splitlines()[:1]
        if result.returncode != 0:
            yield Finding(
                Status.MISSING,
                part,
                f"{path} --version exited {result.returncode}: {' '.join(first_line)}",
                f"reinstall {name}",
            )
            continue
        yield Finding(Status.OK, part, f"{path}: {first_line[0] if first_line else 'runs'}")
    if external == 0:
        installed = {name: shutil.which(name) for name in ("runc", "crun")}
        available = ", ".join(f"{path}" for path in installed.values() if path) or "neither runc nor crun is installed"
        example = next((f"{name}:{path}" for name, path in installed.items() if path), "runc:/usr/sbin/runc")
        yield Finding(
            Status.WARN,
            "external runtimes",
            f"none configured (optional: the built-in runtime needs none); on PATH: {available}",
            f"to offer one as a RuntimeClass handler: `--runtimes {example}`",
        )


def check_socket_dir(listen: str) -> Finding:
    part = "socket directory"
    socket_dir = os.path.dirname(listen) or "/"
    # The daemon creates missing parents, so the nearest existing one decides.
    existing = socket_dir
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return Finding(
            Status.MISSING, part, f"{existing} is not a directory, so {socket_dir} cannot be created", "fix --listen"
        )
    try:
        probe = tempfile.NamedTemporaryFile(dir=existing, prefix=".crio-fast-check-")
    except OSError as exc:
        return Finding(
            Status.MISSING,
            part,
            f"cannot write in {existing}: {exc.strerror}",
            "run as root, or point --listen (crio.api.listen) to a writable directory",
        )
    probe.close()
    where = socket_dir if existing == socket_dir else f"{existing} (creates {socket_dir})"
    return Finding(Status.OK, part, f"writable: {where}")


def check_privileges() -> Finding:
    if os.geteuid() == 0:
        return Finding(Status.OK, "privileges", "running as root")
    return Finding(
        Status.WARN,
        "privileges",
        f"running as uid {os.geteuid()}: the daemon needs root, so the checks above may understate what works",
        "run `sudo crio-fast check`",
    )


def check_service(state: UnitState | None) -> Finding:
    """The unit's state, for a node where systemd is PID 1 (``state`` from systemd.unit_state)."""
    part = f"systemd unit {UNIT_NAME}"
    if state is None:
        return Finding(Status.WARN, part, "systemctl could not be asked", "is systemctl on PATH?")
    if state.load_state != "loaded":
        return Finding(Status.WARN, part, f"not installed ({state.load_state or 'unknown'})",
                       "run `crio-fast install-service --now`")
    detail = f"{state.active_state} ({state.sub_state}), {state.unit_file_state or 'unknown'}"
    if state.active_state == "failed":
        return Finding(Status.WARN, part, detail, f"see `journalctl -u {UNIT_NAME}`")
    if state.active_state != "active" or state.unit_file_state != "enabled":
        return Finding(Status.WARN, part, detail, f"run `systemctl enable --now {UNIT_NAME}`")
    return Finding(Status.OK, part, detail)


def check_cgroup_driver(config: Config) -> Finding:
    """Whether the configured cgroup driver can work here; under systemd, a D-Bus round trip to it."""
    from crio_fast.cgroups import CgroupError, make_cgroup_manager

    driver = config.runtime.cgroup_manager
    part = "cgroup driver"
    try:
        manager = make_cgroup_manager(driver, monitor_cgroup=config.runtime.monitor_cgroup)
    except CgroupError as exc:
        return Finding(Status.MISSING, part, f"{driver}: {exc}", "match cgroup_manager to the node and the kubelet")
    try:
        if driver == "systemd":
            try:
                manager.bus.unit_loaded("-.slice")
            except CgroupError as exc:
                return Finding(Status.MISSING, part, f"systemd: {exc}", "install and start dbus")
            return Finding(Status.OK, part, "systemd (pods as slices, containers as scopes, through D-Bus)")
        return Finding(Status.OK, part, "cgroupfs (the kubelet's cgroupDriver must be cgroupfs too)")
    finally:
        manager.close()


def check_signature_policy(config: Config) -> Finding:
    """The node's signature policy loads, registries.d reads, and gpgv is there if GPG signatures are needed."""
    from crio_fast.image.lookaside import RegistriesD, RegistriesDError
    from crio_fast.image.policy import Policy, PolicyError, SignedBy

    part = "signature policy"
    path = config.image.signature_policy
    if not path:
        return Finding(Status.OK, part, "none: every image is accepted")
    try:
        policy = Policy.load(path)
        RegistriesD.load(config.image.registries_d)
    except (PolicyError, RegistriesDError) as exc:
        return Finding(Status.MISSING, part, str(exc), "fix the file: the daemon does not start with it")
    requirements = [*policy.default, *(r for scope in policy.docker_scopes.values() for r in scope)]
    # Only GPG signatures (signedBy) need gpgv; sigstore ones are verified in-process.
    if any(isinstance(r, SignedBy) for r in requirements) and shutil.which("gpgv") is None:
        return Finding(Status.MISSING, part, f"{path} requires GPG signatures but gpgv is not installed",
                       "apt-get install gpgv")
    return Finding(Status.OK, part, f"{path} ({len(policy.docker_scopes)} docker scopes)")


def run_checks(config: Config) -> list[Finding]:
    """Every finding for this node under ``config``, in a stable order."""
    findings = [check_privileges(), check_overlayfs()]
    findings += check_namespaces()
    findings += check_cgroups()
    findings.append(check_cgroup_driver(config))
    findings.append(check_monitor(config))
    findings.append(check_inotify())
    findings.append(check_overlay_lower_dirs(config))
    findings.append(check_idmapped_overlay(config))
    findings.append(check_apparmor(config))
    findings += check_cni_plugins(config.network.plugin_dirs)
    findings += check_runtimes(config)
    findings.append(check_socket_dir(config.api.listen))
    findings.append(check_signature_policy(config))
    if systemd_booted():
        findings.append(check_service(unit_state()))
    return findings


def report(findings: list[Finding], out: TextIO) -> int:
    """Print the findings and a summary; the exit code (1 if anything required is missing)."""
    for finding in findings:
        print(finding.render(), file=out)
    missing = [f for f in findings if f.status is Status.MISSING]
    warnings = sum(1 for f in findings if f.status is Status.WARN)
    if missing:
        print(f"\n{len(missing)} required part(s) missing, {warnings} warning(s): crio-fast will not work here yet.",
              file=out)
        return 1
    print(f"\nAll required parts are there ({warnings} warning(s)).", file=out)
    return 0
