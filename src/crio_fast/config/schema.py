"""The configuration tree: one frozen dataclass per TOML table, with defaults,
the comment each key gets in `crio-fast config`, and per-key validation.

Every key is declared with :func:`~crio_fast.config.settings.setting`, which
records in the field's metadata the TOML value kind (taken from the default's
type), the checks a value must pass, and the documentation. The loader and the
renderer walk these declarations; nothing else needs to know the list of keys.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from crio_fast.config.settings import (
    absolute_path,
    apparmor_profile_name,
    at_least,
    capability_name,
    cpuset,
    duration,
    each,
    each_value,
    env_var,
    host,
    in_range,
    monitor_cgroup_name,
    namespaced_sysctl,
    not_empty,
    one_of,
    optional_absolute_path,
    optional_duration,
    port_string,
    setting,
    sysctl,
    ulimit,
    unique,
    unlimited_or_positive,
)

DEFAULT_CONFIG_PATH = "/etc/crio-fast/crio.conf"
DEFAULT_CONFIG_DIR = "/etc/crio-fast/crio.conf.d"

DEFAULT_ROOT = "/var/lib/crio-fast"
DEFAULT_RUNROOT = "/run/crio-fast"
NATIVE_RUNTIME = "native"

LOG_LEVELS = ("fatal", "panic", "error", "warn", "warning", "info", "debug", "trace")


# --------------------------------------------------------------------------
# The tables
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class CrioSection:
    """[crio]"""

    root: str = setting(
        DEFAULT_ROOT,
        "Directory holding persistent state: image layers, blobs, pod and container records.",
        absolute_path,
    )
    runroot: str = setting(
        DEFAULT_RUNROOT,
        "Directory holding state that must not survive a reboot (on tmpfs): locks, sockets, exit files.",
        absolute_path,
    )
    log_dir: str = setting(
        "/var/log/crio-fast/pods",
        "Default directory for container logs when the kubelet gives no log directory.",
        absolute_path,
    )
    version_file: str = setting(
        "/var/run/crio-fast/version",
        "File recording the running version; keep it on tmpfs so that its absence reveals a reboot."
        " Unless set, it is the file `version` in runroot (/var/run/crio-fast/version for the default runroot).",
        absolute_path,
    )
    clean_shutdown_file: str = setting(
        "/var/lib/crio-fast/clean.shutdown",
        "File written on a clean shutdown; when it is missing at start, storage is checked for damage."
        " Unless set, it is the file `clean.shutdown` in root.",
        absolute_path,
    )
    internal_wipe: bool = setting(
        True, "After a reboot, remove containers and images left over from before it (the engine does the wipe itself)."
    )


@dataclass(frozen=True)
class ApiSection:
    """[crio.api]"""

    listen: str = setting(
        "/run/crio-fast/crio.sock", "Path of the unix socket serving the CRI v1 gRPC API.", absolute_path
    )
    stream_address: str = setting(
        "127.0.0.1",
        "IP address (or host name) the streaming server for exec, attach and port-forward binds to.",
        not_empty,
        host,
    )
    stream_port: str = setting("0", 'Port of the streaming server, as a string; "0" picks a free port.', port_string)
    stream_enable_tls: bool = setting(
        False, "Serve the streaming server over TLS (stream_tls_cert and stream_tls_key are then required)."
    )
    stream_tls_cert: str = setting("", "TLS certificate (PEM) of the streaming server.", optional_absolute_path)
    stream_tls_key: str = setting("", "TLS private key (PEM) of the streaming server.", optional_absolute_path)
    stream_tls_ca: str = setting(
        "",
        "CA bundle (PEM) for verifying streaming clients' certificates; empty accepts any client.",
        optional_absolute_path,
    )
    stream_idle_timeout: str = setting(
        "",
        'Close a streaming connection idle for this long (Go duration such as "4h"); empty means never.',
        optional_duration,
    )
    grpc_max_send_msg_size: int = setting(83886080, "Largest gRPC message the server sends, in bytes.", at_least(1))
    grpc_max_recv_msg_size: int = setting(83886080, "Largest gRPC message the server accepts, in bytes.", at_least(1))


@dataclass(frozen=True)
class RuntimeHandler:
    """[crio.runtime.runtimes.NAME]: one runtime handler a RuntimeClass can name."""

    runtime_path: str = setting(
        "",
        "Absolute path of the OCI runtime binary (runc, crun); empty for the native runtime.",
        optional_absolute_path,
    )
    runtime_type: str = setting(
        "oci",
        '"native": crio-fast starts containers itself through its per-pod monitor;'
        ' "oci": the monitor drives an external OCI runtime (create/start), as conmon does.',
        one_of("native", "oci"),
    )
    runtime_root: str = setting(
        "",
        "State directory handed to the runtime with --root. Unless set, it is runtimes/NAME in runroot.",
        absolute_path,
    )
    runtime_config_path: str = setting(
        "", "Configuration file handed to the runtime, if it takes one.", optional_absolute_path
    )
    monitor_path: str = setting(
        "", "Monitor executable for this runtime; empty uses [crio.runtime] monitor_path.", optional_absolute_path
    )
    privileged_without_host_devices: bool = setting(
        False, "Do not give privileged containers of this runtime the host's devices."
    )
    allowed_annotations: list[str] = setting([], "Pod and container annotations this runtime is allowed to act on.")
    platform_runtime_paths: dict[str, str] = setting(
        {},
        'Runtime binary per platform ("os/arch" = "/path"), used instead of runtime_path on that platform.',
        each_value(absolute_path),
    )
    hide_cgroup2_mount: bool = setting(
        False,
        "Start the runtime in a private mount namespace without the cgroup2 mount;"
        " helps crun on hybrid cgroup v1/v2 hosts.",
    )

    @classmethod
    def defaults_for(cls, name: str, runroot: str = DEFAULT_RUNROOT) -> RuntimeHandler:
        """A handler named ``name`` with nothing configured yet."""
        return cls(
            runtime_type="native" if name == NATIVE_RUNTIME else "oci",
            runtime_root=os.path.join(runroot, "runtimes", name),
        )


def _default_runtimes() -> dict[str, RuntimeHandler]:
    return {NATIVE_RUNTIME: RuntimeHandler.defaults_for(NATIVE_RUNTIME)}


@dataclass(frozen=True)
class RuntimeSection:
    """[crio.runtime]"""

    default_runtime: str = setting(
        NATIVE_RUNTIME,
        "Runtime handler used when a pod names no RuntimeClass; must be a table under crio.runtime.runtimes.",
        not_empty,
    )
    cgroup_manager: str = setting(
        "cgroupfs",
        "Cgroup driver, reported to the kubelet; it must match the kubelet's cgroupDriver.",
        one_of("cgroupfs", "systemd"),
    )
    monitor_path: str = setting(
        "",
        "Per-pod monitor executable; empty uses the crio-fast-monitor shipped in the package.",
        optional_absolute_path,
    )
    monitor_cgroup: str = setting(
        "pod",
        'Cgroup of the per-pod monitor: "pod" puts it in the pod\'s cgroup;'
        ' a systemd slice (like "system.slice") needs cgroup_manager = "systemd".',
        monitor_cgroup_name,
    )
    monitor_env: list[str] = setting(
        ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        'Environment of the per-pod monitor, as "NAME=value".',
        each(env_var),
    )
    default_capabilities: list[str] = setting(
        ["CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "SETGID", "SETUID", "SETPCAP", "NET_BIND_SERVICE", "KILL"],
        "Capabilities a container gets when its spec adds or drops none; names with or without the CAP_ prefix.",
        each(capability_name),
        unique,
    )
    default_sysctls: list[str] = setting(
        [], 'Sysctls set in every pod, as "key=value" (namespaced ones only; a pod\'s own sysctls win).',
        each(sysctl), each(namespaced_sysctl))
    default_ulimits: list[str] = setting(
        [], 'Resource limits of every container, as "name=soft:hard" (-1 for unlimited).', each(ulimit)
    )
    pids_limit: int = setting(
        -1, "Maximum number of processes in a container: -1 for unlimited, 0 for the runtime's default.", at_least(-1)
    )
    log_size_max: int = setting(
        -1,
        "Maximum size of a container log file in bytes before it is rotated; -1 for unlimited.",
        unlimited_or_positive,
    )
    log_to_journald: bool = setting(False, "Also send container output to the systemd journal.")
    container_exits_dir: str = setting(
        "/run/crio-fast/exits",
        "Directory where the monitor records container exit codes. Unless set, it is exits in runroot.",
        absolute_path,
    )
    container_attach_socket_dir: str = setting(
        "/run/crio-fast/attach",
        "Directory of the monitor's attach sockets. Unless set, it is attach in runroot.",
        absolute_path,
    )
    no_pivot: bool = setting(
        False, "Enter the container root with MS_MOVE + chroot instead of pivot_root (needed on ramfs roots)."
    )
    selinux: bool = setting(False, "Label containers and their files with SELinux.")
    seccomp_profile: str = setting(
        "",
        "Seccomp profile (JSON) for containers that ask for the runtime default; empty uses the built-in profile.",
        optional_absolute_path,
    )
    seccomp_use_default_when_empty: bool = setting(
        True,
        "Containers whose request names no seccomp profile (neither the container nor the pod) get the runtime "
        "default; false leaves them unconfined, as the CRI API itself defines an empty profile.",
    )
    apparmor_profile: str = setting(
        "crio-fast-default",
        "AppArmor profile of containers that ask for the runtime default or name none, where AppArmor is on: "
        "crio-fast-default is generated and loaded by the daemon at start, another name must be loaded on the "
        'node already, "unconfined" runs them without a profile. Privileged containers never get one.',
        apparmor_profile_name,
    )
    default_mounts_file: str = setting(
        "", 'File listing "src:dst" bind mounts added to every container.', optional_absolute_path
    )
    hooks_dir: list[str] = setting(
        [], "Directories of OCI hook definitions (JSON), read in order.", each(absolute_path)
    )
    ctr_stop_timeout: int = setting(
        30,
        "Seconds to wait for a container to stop after SIGTERM before it is killed, when the request gives no timeout.",
        at_least(0),
    )
    exec_sync_output_max: int = setting(
        16 << 20,
        "Bytes of stdout, and of stderr, an ExecSync reply carries; what a command writes beyond is read and"
        " dropped, and the reply's stderr says how much.",
        at_least(0),
    )
    drop_infra_ctr: bool = setting(
        True, "Informational: crio-fast never runs an infra (pause) container, whatever this says."
    )
    infra_ctr_cpuset: str = setting(
        "", 'CPUs the per-pod monitor may run on, as a CPU list like "0-1"; empty means any.', cpuset
    )
    namespaces_dir: str = setting(
        "/run/crio-fast/ns",
        "Directory where pod namespaces are bind-mounted. Unless set, it is ns in runroot.",
        absolute_path,
    )
    restrict_oom_score_adj: bool = setting(
        False,
        "Never give a container a lower oom_score_adj than the engine's own"
        " (the engine clamps anyway when the kernel refuses).",
    )
    read_only: bool = setting(False, "Mount every container's root filesystem read-only.")
    log_level: str = setting(
        "info", "Verbosity of the daemon's log: " + ", ".join(LOG_LEVELS) + ".", one_of(*LOG_LEVELS)
    )
    runtimes: dict[str, RuntimeHandler] = field(default_factory=_default_runtimes)

    @property
    def default_handler(self) -> RuntimeHandler:
        """The handler for pods that name no RuntimeClass (the loader ensures it exists)."""
        return self.runtimes[self.default_runtime]


@dataclass(frozen=True)
class ImageSection:
    """[crio.image]"""

    default_transport: str = setting("docker://", "Transport assumed for image names that carry none.", not_empty)
    global_auth_file: str = setting(
        "",
        "Registry credentials (a containers-auth.json / Docker config.json) used when a pull request brings none.",
        optional_absolute_path,
    )
    pause_image: str = setting(
        "",
        "Unused: crio-fast is pause-free by design. No pause (infra) container is started;"
        " the per-pod monitor holds the pod's namespaces.",
    )
    signature_policy: str = setting(
        "",
        "Signature policy file (containers-policy.json) checked at every pull; empty accepts every image.",
        optional_absolute_path,
    )
    signature_policy_dir: str = setting(
        "",
        "Directory of per-namespace policies: <namespace>.json replaces signature_policy for pulls of that"
        " Kubernetes namespace's pods; empty (or no such file) uses signature_policy.",
        optional_absolute_path,
    )
    registries_d: str = setting(
        "/etc/containers/registries.d",
        "containers-registries.d directory: where images' GPG signatures are (lookaside URLs); read only for"
        " signedBy requirements. Missing or empty, no image has signatures.",
        optional_absolute_path,
    )
    registries_conf: str = setting(
        "",
        "registries.conf (v2) with mirrors, blocked registries and short-name aliases; empty uses none.",
        optional_absolute_path,
    )
    insecure_registries: list[str] = setting(
        [], "Registries (host[:port]) that may be reached over plain HTTP or unverified TLS.", each(not_empty)
    )
    image_volumes: str = setting(
        "mkdir",
        'What to do with VOLUMEs declared by an image: "mkdir" creates them in the container,'
        ' "bind" binds a fresh directory, "ignore" skips them.',
        one_of("mkdir", "bind", "ignore"),
    )
    big_files_temporary_dir: str = setting(
        "", "Directory for large temporary files during pulls; empty uses the store's own.", optional_absolute_path
    )
    pull_progress_timeout: str = setting(
        "0s", 'Cancel a pull that makes no progress for this long (Go duration); "0s" means never.', duration
    )
    max_parallel_layer_pulls: int = setting(3, "Layers of one image downloaded at the same time.", at_least(1))


@dataclass(frozen=True)
class NetworkSection:
    """[crio.network]"""

    cni_default_network: str = setting(
        "", "CNI network pods join; empty takes the first valid configuration in network_dir (lexical order)."
    )
    network_dir: str = setting(
        "/etc/cni/net.d/", "Directory of CNI network configurations (.conflist, .conf, .json).", absolute_path
    )
    plugin_dirs: list[str] = setting(
        ["/opt/cni/bin/", "/usr/lib/cni/"],
        "Directories searched for CNI plugin binaries, in order.",
        each(absolute_path),
    )
    plugin_timeout: int = setting(60, "Seconds a CNI plugin call may take before it is killed.", at_least(1))
    netns_pool_size: int = setting(
        4,
        "Network namespaces (lo up) made ahead, in the background, for pods on a CNI network; a pod takes one"
        " instead of waiting for a new one. 0 makes each pod's namespace in its RunPodSandbox.",
        at_least(0),
    )


@dataclass(frozen=True)
class MetricsSection:
    """[crio.metrics]"""

    enable_metrics: bool = setting(False, "Serve Prometheus metrics.")
    metrics_host: str = setting("127.0.0.1", "IP address (or host name) the metrics server binds to.", not_empty, host)
    metrics_port: int = setting(9090, "Port of the metrics server.", in_range(1, 65535, "a port number"))
    metrics_socket: str = setting(
        "", "Unix socket to serve metrics on instead of host and port; empty uses TCP.", optional_absolute_path
    )
    metrics_collectors: list[str] = setting([], "Metric collectors to enable; empty enables all.", each(not_empty))


@dataclass(frozen=True)
class StatsSection:
    """[crio.stats]"""

    stats_collection_period: int = setting(
        0, "Seconds between background collections of pod and container stats; 0 collects on demand.", at_least(0)
    )


@dataclass(frozen=True)
class SectionInfo:
    attribute: str  # attribute of Config
    table: tuple[str, ...]  # TOML table path
    cls: type

    @property
    def dotted(self) -> str:
        return ".".join(self.table)


SECTIONS = (
    SectionInfo("crio", ("crio",), CrioSection),
    SectionInfo("api", ("crio", "api"), ApiSection),
    SectionInfo("runtime", ("crio", "runtime"), RuntimeSection),
    SectionInfo("image", ("crio", "image"), ImageSection),
    SectionInfo("network", ("crio", "network"), NetworkSection),
    SectionInfo("metrics", ("crio", "metrics"), MetricsSection),
    SectionInfo("stats", ("crio", "stats"), StatsSection),
)
SECTION_BY_ATTRIBUTE = {s.attribute: s for s in SECTIONS}
RUNTIMES_TABLE = ("crio", "runtime", "runtimes")


@dataclass(frozen=True)
class Config:
    """The effective configuration: defaults, then files, then flags."""

    crio: CrioSection = field(default_factory=CrioSection)
    api: ApiSection = field(default_factory=ApiSection)
    runtime: RuntimeSection = field(default_factory=RuntimeSection)
    image: ImageSection = field(default_factory=ImageSection)
    network: NetworkSection = field(default_factory=NetworkSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    stats: StatsSection = field(default_factory=StatsSection)
    # The files read, in order; where a configuration came from is not part of what it is.
    sources: list[str] = field(default_factory=list, compare=False)

    def runtime_handler_names(self) -> list[str]:
        """Configured runtime handlers, the default one first, the rest in configuration order."""
        default = self.runtime.default_runtime
        return [default] + [name for name in self.runtime.runtimes if name != default]

    def runtime_handler(self, name: str) -> RuntimeHandler:
        """The handler called ``name``; KeyError if none is configured."""
        return self.runtime.runtimes[name]


def derived_defaults(root: str, runroot: str) -> dict[tuple[str, str], str]:
    """Defaults that follow root/runroot unless set, so a private runroot keeps
    all run-time state inside it. With the default roots these equal the
    declared defaults."""
    version_file = "/var/run/crio-fast/version" if runroot == DEFAULT_RUNROOT else os.path.join(runroot, "version")
    return {
        ("crio", "version_file"): version_file,
        ("crio", "clean_shutdown_file"): os.path.join(root, "clean.shutdown"),
        ("runtime", "container_exits_dir"): os.path.join(runroot, "exits"),
        ("runtime", "container_attach_socket_dir"): os.path.join(runroot, "attach"),
        ("runtime", "namespaces_dir"): os.path.join(runroot, "ns"),
    }


def defaults_like(config: Config) -> Config:
    """The built-in defaults, except that keys derived from root and runroot
    follow ``config``'s root and runroot: what each key would be if unset."""
    runroot = config.crio.runroot
    derived = derived_defaults(config.crio.root, runroot)
    sections: dict[str, Any] = {}
    for section in SECTIONS:
        values = {name: value for (attr, name), value in derived.items() if attr == section.attribute}
        if section.attribute == "runtime":
            values["runtimes"] = {NATIVE_RUNTIME: RuntimeHandler.defaults_for(NATIVE_RUNTIME, runroot)}
        sections[section.attribute] = section.cls(**values)
    return Config(**sections)
