"""AppArmor: which profile a container runs under, and the runtime default profile.

The decision is made once per container, here (``profile_for``), and rendered
for both kinds of handler: the launch plan's APPARMOR_PROFILE for the native
one (the monitor's child writes ``exec <name>`` to
``/proc/thread-self/attr/apparmor/exec`` after pivot_root, _native/monitor/
apparmor.c), ``process.apparmorProfile`` in config.json for runc and crun.
ExecSync and Exec run under the container's profile too.

The rules follow CRI-O's (internal/config/apparmor), with its structured
field first and the deprecated string as the fallback:

- privileged containers get no profile of ours, whatever they ask: they keep
  the label they start with (``unconfined``; with runc or crun the runtime's
  own, ``runc (unconfined)`` where the distribution ships a profile for it);
- RuntimeDefault, or nothing asked at all (neither ``apparmor`` nor the
  deprecated ``apparmor_profile``; the kubelet sends nothing for a pod that
  names no profile) -> the configured default (``[crio.runtime]
  apparmor_profile``, built in: ``crio-fast-default``, which the daemon
  generates and loads when it starts; ``unconfined`` turns the default off);
- Unconfined -> ``unconfined``, written as a profile (CRI-O does too): the
  container drops whatever label its runtime or the daemon has;
- Localhost ``foo`` (``localhost_ref``, or ``apparmor_profile =
  "localhost/foo"``, or a bare name there as CRI-O takes it) -> ``foo``, which
  must be loaded already: refused with FAILED_PRECONDITION naming it if not.

On a host without AppArmor nothing is applied; a Localhost profile is refused
there instead of running unconfined.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

from crio_fast.api import api_pb2 as pb
from crio_fast.errors import FailedPrecondition, InvalidArgument

log = logging.getLogger("crio_fast.container.apparmor")

BUILTIN_DEFAULT = "crio-fast-default"
UNCONFINED = "unconfined"
SECURITYFS_DIR = "/sys/kernel/security/apparmor"
PROFILES_FILE = SECURITYFS_DIR + "/profiles"
ENABLED_FILE = "/sys/module/apparmor/parameters/enabled"
POLICY_DIR = "/etc/apparmor.d"
# apparmor_parser is in /sbin on Debian and Ubuntu, which a daemon's PATH does not always have.
PARSER_DIRS = ("/sbin", "/usr/sbin")
PARSER_TIMEOUT_SECONDS = 60.0
# After apparmor_parser failed, how long the same error stands before it runs again (RuntimeReady is
# asked every few seconds; a profile it cannot compile now it will not compile a second later).
RETRY_SECONDS = 30.0
# The C side writes "exec <name>" in one 4096-byte buffer.
_NAME_MAX = 4000

NOT_ENABLED = "AppArmor is not enabled on this host"


def host_enabled(securityfs_dir: str = SECURITYFS_DIR, enabled_file: str = ENABLED_FILE) -> bool:
    """Whether the kernel enforces AppArmor: the module says so and its securityfs is there (runc's test)."""
    try:
        enabled = Path(enabled_file).read_text().strip() == "Y"
    except OSError:
        return False
    return enabled and os.path.isdir(securityfs_dir)


def requested_profile(sc: pb.LinuxContainerSecurityContext) -> pb.SecurityProfile | None:
    """The profile a container's security context asks for; None when it names none.

    The structured ``apparmor`` message wins when present (RuntimeDefault is enum value 0, so an
    empty message means RuntimeDefault); the deprecated ``apparmor_profile`` string is the fallback:
    ``runtime/default``, ``unconfined``, ``localhost/<name>``, or a bare name (CRI-O takes it as one).
    """
    if sc.HasField("apparmor"):
        return sc.apparmor
    legacy = sc.apparmor_profile
    if not legacy:
        return None
    if legacy == "runtime/default":
        return pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault)
    if legacy.lower() == UNCONFINED:
        return pb.SecurityProfile(profile_type=pb.SecurityProfile.Unconfined)
    return pb.SecurityProfile(profile_type=pb.SecurityProfile.Localhost, localhost_ref=legacy)


def check_name(name: str) -> str:
    """A profile name the plan and config.json can carry: raises InvalidArgument otherwise."""
    if not name:
        raise InvalidArgument("apparmor: a Localhost profile needs localhost_ref, the name of a loaded profile")
    if len(name) > _NAME_MAX or any(c.isspace() or not c.isprintable() for c in name):
        raise InvalidArgument(f"apparmor profile {name[:80]!r}: not a profile name (white space, control "
                              f"characters or over {_NAME_MAX} characters)")
    return name


def profile_for(requested: pb.SecurityProfile | None, privileged: bool, *, enabled: bool, default_profile: str,
                is_loaded: Callable[[str], bool]) -> str | None:
    """The AppArmor profile a container runs under (``unconfined`` included), or None: none of ours.

    ``requested`` is ``requested_profile(sc)``; ``default_profile`` the configured runtime default
    (``unconfined`` for none); ``is_loaded(name)`` tells whether the kernel has a profile of that name
    (the daemon's answer for its own default may load it first). Raises InvalidArgument for a request
    that names no usable profile, FailedPrecondition for one this node cannot honour."""
    if privileged:
        return None  # as CRI-O: a privileged container never gets a profile
    kind = pb.SecurityProfile.RuntimeDefault if requested is None else requested.profile_type
    if kind == pb.SecurityProfile.Unconfined:
        return UNCONFINED if enabled else None  # without AppArmor there is nothing to write it to
    if kind == pb.SecurityProfile.Localhost:
        name = check_name(requested.localhost_ref.removeprefix("localhost/"))
        if not enabled:
            raise FailedPrecondition(f"apparmor profile {name!r} requested but {NOT_ENABLED}")
        if not is_loaded(name):
            raise FailedPrecondition(
                f"apparmor profile {name!r} is not loaded on this node (not in {PROFILES_FILE}): "
                "load it with apparmor_parser before creating the container")
        return name
    if kind != pb.SecurityProfile.RuntimeDefault:
        raise InvalidArgument(f"apparmor: unknown profile type {kind}")
    if not enabled:
        return None
    if default_profile == UNCONFINED:
        return UNCONFINED
    if not is_loaded(default_profile):
        raise FailedPrecondition(f"the runtime default AppArmor profile {default_profile!r} is not loaded on "
                                 "this node")
    return default_profile


def loaded_profiles(profiles_file: str = PROFILES_FILE) -> set[str]:
    """Names of the profiles the kernel has: ``<name> (<mode>)`` a line."""
    try:
        text = Path(profiles_file).read_text(errors="surrogateescape")
    except FileNotFoundError:
        return set()
    return {line.rpartition(" (")[0] or line for line in text.splitlines() if line}


def find_parser(dirs: tuple[str, ...] = PARSER_DIRS, search_path: str | None = None) -> str | None:
    """apparmor_parser in ``dirs``, else on ``search_path`` (None: $PATH)."""
    for directory in dirs:
        path = os.path.join(directory, "apparmor_parser")
        if os.access(path, os.X_OK):
            return path
    return shutil.which("apparmor_parser", path=search_path)


def current_label(proc_dir: str = "/proc") -> str:
    """This process's own AppArmor label ("unconfined" when none): the daemon's, inherited by its monitors."""
    for path in (f"{proc_dir}/thread-self/attr/apparmor/current", f"{proc_dir}/thread-self/attr/current"):
        try:
            text = Path(path).read_text().strip("\0\n ")
        except OSError:
            continue
        # "name (enforce)"; a name has no spaces.
        return text.partition(" ")[0] or UNCONFINED
    return UNCONFINED


def default_profile_text(name: str, daemon_label: str = UNCONFINED, policy_dir: str = POLICY_DIR) -> str:
    """The runtime default profile: everything a container does anyway (files, network, capabilities its
    bounding set allows) stays allowed; what only helps an escape or tampers with the node is denied.

    Written in the line of the default profiles of Docker, containerd and CRI-O (same protections, so a
    workload that runs under theirs runs under this one), for the parser of the node: its ABI 3.0 when the
    node has that file (so a newer parser does not mediate more than the rules below expect), its
    tunables and base abstraction when present."""
    def exists(relative: str) -> bool:
        return os.path.exists(os.path.join(policy_dir, relative))

    head = []
    if exists("abi/3.0"):
        head.append("abi <abi/3.0>,")
    head.append("#include <tunables/global>" if exists("tunables/global") else "@{PROC}=/proc/")
    base = "  #include <abstractions/base>\n" if exists("abstractions/base") else ""
    # Who may signal the container's processes: the pod monitor and the exec helper (the daemon's label,
    # "unconfined" unless the daemon itself is confined), the OCI runtimes (their own profiles on some
    # distributions) and the container's own processes.
    senders = [UNCONFINED] + ([daemon_label] if daemon_label != UNCONFINED else []) + ["runc", "crun"]
    signal_rules = "".join(f"  signal (receive) peer={peer},\n" for peer in senders)
    return f"""# The runtime default AppArmor profile of crio-fast, generated by the daemon
# (crio_fast/container/apparmor.py) and loaded with apparmor_parser -Kr.
{chr(10).join(head)}

profile {name} flags=(attach_disconnected,mediate_deleted) {{
{base}
  # What containers need: the file system the runtime built for them, the network of their pod,
  # the capabilities of their bounding set.
  file,
  network,
  capability,
  umount,

{signal_rules}  signal (send,receive) peer={name},
  # Processes of a container may trace and inspect each other (ps, gdb) as far as the other
  # checks allow; nothing outside it.
  ptrace (trace,read,tracedby,readby) peer={name},

  # No mounts: a container's mounts are made before its process starts.
  deny mount,

  # /proc: writes only to a process's own entries (/proc/<pid>/...) and to /proc/sys/kernel/shm*;
  # never to the files at the top (sysrq-trigger, the node-wide knobs), to other /proc/sys
  # branches, or to the kernel's memory.
  deny @{{PROC}}/* w,
  deny @{{PROC}}/{{[^1-9/],[^1-9/][^0-9/],[^1-9s/][^0-9y/][^0-9s/],[^1-9/][^0-9/][^0-9/][^0-9/]*}}/** w,
  deny @{{PROC}}/sys/[^k]** w,
  deny @{{PROC}}/sys/kernel/{{?,??,[^s][^h][^m]**}} w,
  deny @{{PROC}}/sysrq-trigger rwklx,
  deny @{{PROC}}/kcore rwklx,

  # /sys: nothing written anywhere but the container's own cgroup files (/sys/fs/cgroup); the
  # firmware, power capping and security file systems not even read.
  deny /sys/[^f]*/** wklx,
  deny /sys/f[^s]*/** wklx,
  deny /sys/fs/[^c]*/** wklx,
  deny /sys/fs/c[^g]*/** wklx,
  deny /sys/fs/cg[^r]*/** wklx,
  deny /sys/firmware/** rwklx,
  deny /sys/devices/virtual/powercap/** rwklx,
  deny /sys/kernel/security/** rwklx,
}}
"""


class AppArmor:
    """The node's AppArmor as the daemon uses it: whether it is on, the runtime default profile (loaded
    at start when it is the built-in one), and the per-container decision against the loaded profiles.

    ``problem()`` says why containers that ask for the runtime default cannot get it (RuntimeReady and
    ``crio-fast check`` report it); None when nothing stands in the way."""

    def __init__(self, default_profile: str = BUILTIN_DEFAULT, *, enabled: bool | None = None,
                 profiles_file: str = PROFILES_FILE, parser: str | None = None, policy_dir: str = POLICY_DIR,
                 parser_dirs: tuple[str, ...] = PARSER_DIRS, search_path: str | None = None) -> None:
        self.default_profile = default_profile
        self.enabled = host_enabled() if enabled is None else enabled
        self.profiles_file = profiles_file
        self.policy_dir = policy_dir
        self._parser = parser
        self._parser_dirs = parser_dirs
        self._search_path = search_path
        self._lock = threading.Lock()
        self._load_error: str | None = None
        self._parser_failed_at: float | None = None

    def set_default_profile(self, name: str) -> threading.Thread | None:
        """A new runtime default profile (a SIGHUP reload): containers created from now on get it; it is
        loaded in the background when it is the built-in one (``start_loading``)."""
        with self._lock:
            self.default_profile = name
            self._load_error = None
            self._parser_failed_at = None
        return self.start_loading()

    @property
    def builtin_default(self) -> bool:
        return self.default_profile == BUILTIN_DEFAULT

    def parser(self) -> str | None:
        return self._parser or find_parser(self._parser_dirs, self._search_path)

    def is_loaded(self, name: str) -> bool:
        try:
            return name in loaded_profiles(self.profiles_file)
        except OSError as exc:
            raise FailedPrecondition(f"apparmor: reading {self.profiles_file}: {exc.strerror}") from exc

    def profile_text(self) -> str:
        return default_profile_text(self.default_profile, current_label(), self.policy_dir)

    def start_loading(self) -> threading.Thread | None:
        """``load_default`` in a thread of its own, so that the daemon serves meanwhile (apparmor_parser
        takes a good part of a second, far more on a slow machine). Whatever needs the default profile
        (a container's decision, RuntimeReady) waits for that load to end, not for a second one."""
        if not self.enabled or self.default_profile == UNCONFINED:
            return None

        def load() -> None:
            try:
                if problem := self.load_default():
                    log.error("%s", problem)
            except Exception:  # noqa: BLE001 - a thread's failure must reach the log
                log.exception("AppArmor: loading the default profile %s", self.default_profile)

        thread = threading.Thread(target=load, name="apparmor-default-profile", daemon=True)
        thread.start()
        return thread

    def load_default(self) -> str | None:
        """Load the built-in default profile unless the kernel has it already; the problem, or None.

        Only the built-in one is generated: a configured name of the node's own must be loaded by the
        node (as with CRI-O)."""
        if not self.enabled or self.default_profile == UNCONFINED:
            return None
        with self._lock:
            if self.is_loaded(self.default_profile):
                self._load_error = None
                return None
            if not self.builtin_default:
                self._load_error = (f"the configured default AppArmor profile {self.default_profile!r} "
                                    f"([crio.runtime] apparmor_profile) is not loaded (not in {self.profiles_file}): "
                                    "load it with apparmor_parser")
                return self._load_error
            if self._parser_failed_at is not None and time.monotonic() - self._parser_failed_at < RETRY_SECONDS:
                return self._load_error
            parser = self.parser()
            if parser is None:
                self._load_error = (f"AppArmor is enabled but apparmor_parser is not installed (looked in "
                                    f"{', '.join(self._parser_dirs)} and PATH): the default profile "
                                    f"{self.default_profile} cannot be loaded (install it, Debian/Ubuntu: the "
                                    "apparmor package; or set [crio.runtime] apparmor_profile = \"unconfined\")")
                return self._load_error
            started = time.monotonic()
            try:
                done = subprocess.run([parser, "-Kr"], input=self.profile_text(), capture_output=True, text=True,
                                      timeout=PARSER_TIMEOUT_SECONDS, check=False)
            except (OSError, subprocess.TimeoutExpired) as exc:
                self._load_error = f"{parser} -Kr (loading {self.default_profile}): {exc}"
                self._parser_failed_at = time.monotonic()
                return self._load_error
            if done.returncode != 0:
                said = " ".join((done.stderr or done.stdout).split()) or "no output"
                self._load_error = (f"{parser} -Kr could not load the default profile {self.default_profile} "
                                    f"(exit status {done.returncode}): {said}")
                self._parser_failed_at = time.monotonic()
                return self._load_error
            log.info("AppArmor: loaded the default profile %s with %s in %.2f s", self.default_profile, parser,
                     time.monotonic() - started)
            self._load_error = None
            self._parser_failed_at = None
            return None

    def problem(self) -> str | None:
        """Why the runtime default profile is not there (loading it again when it is ours), or None."""
        if not self.enabled or self.default_profile == UNCONFINED:
            return None
        try:
            return self.load_default()
        except FailedPrecondition as exc:
            return str(exc)

    def _is_loaded_or_load(self, name: str) -> bool:
        if self.is_loaded(name):
            return True
        if name != self.default_profile:
            return False
        # Ours, and gone since the start (apparmor_parser -R, a policy reload): load it again, as CRI-O does.
        problem = self.load_default()
        if problem is not None:
            raise FailedPrecondition(f"the runtime default AppArmor profile {name!r} is not loaded: {problem}")
        return True

    def profile_for(self, sc: pb.LinuxContainerSecurityContext) -> str | None:
        """The profile of a container with this security context (``profile_for`` above), or None."""
        return profile_for(requested_profile(sc), sc.privileged, enabled=self.enabled,
                           default_profile=self.default_profile, is_loaded=self._is_loaded_or_load)

    def describe(self) -> dict[str, object]:
        """For the verbose Status: what the node's AppArmor is, as the daemon sees it."""
        return {"enabled": self.enabled, "defaultProfile": self.default_profile if self.enabled else None,
                "problem": self.problem()}
