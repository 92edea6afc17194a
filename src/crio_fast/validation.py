"""Checks of CRI requests made before anything is changed on the node.

What a request carries reaches the kernel, the pod monitor and CNI plugins as C strings, 32-bit ids,
16-bit ports and fixed-size buffers. A value that cannot fit is refused here as InvalidArgument, with a
message that quotes it cut short (errors.shown), instead of failing half-way through a create as a
struct or syscall error (INTERNAL) or leaving something behind. The managers call these first; finer
checks that need the node (an image, a pod's state, a cgroup layout) stay with them.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Iterator, Sequence

from google.protobuf.message import Message

from crio_fast.api import api_pb2 as pb
from crio_fast.errors import InvalidArgument, shown

# Linux's limits (include/uapi/linux/limits.h, binfmts.h): a path with its NUL, one argv or environment
# string with its NUL, the groups of a process.
PATH_MAX = 4096
MAX_ARG_STRLEN = 32 * 4096
NGROUPS_MAX = 65536
# A hostname as sethostname(2) takes it (HOST_NAME_MAX).
HOSTNAME_LENGTH_MAX = 64
# Kubernetes names are DNS subdomains (253) and uids UUIDs; CRI clients such as crictl take any text,
# which ends up in CNI_ARGS, the pod's name and the monitor's messages.
NAME_LENGTH_MAX = 253
# Pod and container IDs are 64 hex digits; a request may name a unique prefix.
ID_LENGTH_MAX = 64
# An image name as a reference can spell it (the repository part alone is at most 255).
IMAGE_NAME_LENGTH_MAX = 4096
# Past (uid_t)-1, which the kernel reads as "unchanged".
ID_MAX = 2**32 - 2
# Seconds: what the kubelet's int32 probe timeouts can say; more than any clock arithmetic needs.
TIMEOUT_MAX = 2**31 - 1
PORT_MAX = 65535
OOM_SCORE_ADJ_RANGE = (-1000, 1000)
# Free text the engine never passes on as a C string.
_FREE_TEXT_FIELDS = frozenset({"labels", "annotations"})
# CNI_ARGS is "K=V;K=V": these would let a pod's name add arguments of its own.
_CNI_ARGS_SEPARATORS = frozenset(";=")


def check_text(value: str, field: str, limit: int, *, required: bool = False) -> None:
    """A string passed on as a C string: no NUL, at most ``limit`` bytes of UTF-8."""
    if required and not value:
        raise InvalidArgument(f"{field} is empty")
    if "\0" in value:
        raise InvalidArgument(f"{field} {shown(value)} contains a NUL byte")
    size = len(value.encode("utf-8", "replace"))
    if size > limit:
        raise InvalidArgument(f"{field} is {size} bytes long, more than {limit}: {shown(value)}")


def check_path(value: str, field: str, *, absolute: bool, required: bool = False) -> None:
    """A path for the kernel: no NUL, shorter than PATH_MAX, absolute or relative as asked."""
    check_text(value, field, PATH_MAX - 1, required=required)
    if value and absolute and not value.startswith("/"):
        raise InvalidArgument(f"{field} {shown(value)} is not an absolute path")
    if value and not absolute and value.startswith("/"):
        raise InvalidArgument(f"{field} {shown(value)} must be relative")


def check_id(value: str, field: str) -> None:
    """A pod or container ID (or a prefix of one) in a request."""
    check_text(value, field, ID_LENGTH_MAX, required=True)


def check_range(value: int, field: str, low: int, high: int) -> None:
    if not low <= value <= high:
        raise InvalidArgument(f"{field} {value} is out of range: expected {low} to {high}")


def check_command(argv: Sequence[str], field: str, *, required: bool = False) -> None:
    """An argv for execve(2): strings without NUL, each within MAX_ARG_STRLEN."""
    if required and not argv:
        raise InvalidArgument(f"{field} is empty")
    for index, arg in enumerate(argv):
        check_text(arg, f"{field}[{index}]", MAX_ARG_STRLEN - 1)


def check_exec_sync(cmd: Sequence[str], timeout: int) -> None:
    """ExecSync's command and timeout (seconds; 0: until the call's own deadline)."""
    check_command(cmd, "cmd", required=True)
    check_range(timeout, "timeout", 0, TIMEOUT_MAX)


def _strings(message: Message, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(field path, value) of every string in ``message`` and the messages in it, free text aside."""
    for descriptor, value in message.ListFields():
        if descriptor.name in _FREE_TEXT_FIELDS:
            continue
        name = f"{prefix}{descriptor.name}"
        if isinstance(value, str):
            yield name, value
        elif isinstance(value, Message):
            yield from _strings(value, name + ".")
        elif descriptor.message_type is not None and descriptor.message_type.GetOptions().map_entry:
            for key, item in value.items():
                yield f"{name} key", str(key)
                if isinstance(item, str):
                    yield f"{name}[{key!r}]", item
                elif isinstance(item, Message):
                    yield from _strings(item, f"{name}[{key!r}].")
        elif descriptor.type in (descriptor.TYPE_STRING, descriptor.TYPE_MESSAGE):  # repeated
            for index, item in enumerate(value):
                if isinstance(item, Message):
                    yield from _strings(item, f"{name}[{index}].")
                else:
                    yield f"{name}[{index}]", item


def check_no_nul(message: Message, what: str) -> None:
    """No string of ``message`` (labels and annotations aside) holds a NUL byte: every one may end up a C
    string, where the rest would silently be cut off."""
    for field, value in _strings(message):
        if "\0" in value:
            raise InvalidArgument(f"{what} {field} {shown(value)} contains a NUL byte")


def _check_ids(sc: pb.LinuxSandboxSecurityContext | pb.LinuxContainerSecurityContext, prefix: str) -> None:
    for field in ("run_as_user", "run_as_group"):
        if sc.HasField(field):
            check_range(getattr(sc, field).value, f"{prefix}.{field}", 0, ID_MAX)
    if len(sc.supplemental_groups) > NGROUPS_MAX:
        raise InvalidArgument(f"{prefix}.supplemental_groups has {len(sc.supplemental_groups)} groups, "
                              f"more than {NGROUPS_MAX}")
    for index, gid in enumerate(sc.supplemental_groups):
        check_range(gid, f"{prefix}.supplemental_groups[{index}]", 0, ID_MAX)


# uid_map and gid_map take ids below 2**32 - 1 ((uid_t)-1 is never mapped).
_ID_SPACE = 2**32 - 1


def _check_id_mapping(mapping: pb.IDMapping, field: str) -> None:
    if mapping.length == 0:
        raise InvalidArgument(f"{field}.length is 0: a mapping maps at least one id")
    for side in ("container_id", "host_id"):
        start = getattr(mapping, side)
        if start + mapping.length > _ID_SPACE:
            raise InvalidArgument(f"{field}: {side} {start} + length {mapping.length} is past {_ID_SPACE - 1}, "
                                  "the highest id a user namespace maps")


def user_namespace_wanted(options: pb.NamespaceOption) -> bool:
    """Whether ``options`` (already checked by check_userns_options) asks for a user namespace of the pod's own.

    Only an explicit ``userns_options`` with mode POD does: POD is proto3's zero value, and a request that
    says nothing about user namespaces (crictl's, an older kubelet's) means the node's."""
    return options.HasField("userns_options") and options.userns_options.mode == pb.NamespaceMode.POD


def check_userns_options(options: pb.NamespaceOption, prefix: str) -> None:
    """``userns_options`` as critest v1.36 and the kubelet (hostUsers: false) have them: NODE (none of the
    pod's own), or POD with exactly one uid and one gid mapping, each mapping container id 0; CONTAINER and
    TARGET are not CRI user namespace modes a pod can have."""
    if not options.HasField("userns_options"):
        return
    userns = options.userns_options
    field = f"{prefix}.userns_options"
    if userns.mode == pb.NamespaceMode.NODE:
        return  # the node's user namespace; any mappings alongside mean nothing (as with CRI-O, containerd)
    if userns.mode != pb.NamespaceMode.POD:
        name = pb.NamespaceMode.Name(userns.mode) if userns.mode in pb.NamespaceMode.values() else str(userns.mode)
        raise InvalidArgument(f"{field}.mode {name} is not supported: a user namespace is the pod's (POD) "
                              "or the node's (NODE)")
    # The node's pid or IPC namespace belongs to the node's user namespace: a pod in its own could see
    # (pid) or share (IPC) the node's processes and objects; Kubernetes refuses hostPID and hostIPC with
    # hostUsers: false, and so does this. The node's network is allowed: the container's root has no
    # privilege over it (it is not root in the namespace that owns it).
    for kind in ("pid", "ipc"):
        if getattr(options, kind) == pb.NamespaceMode.NODE:
            raise InvalidArgument(f"{prefix}.{kind} NODE: a pod with a user namespace of its own cannot share "
                                  f"the node's {kind} namespace")
    for kind in ("uids", "gids"):
        mappings = getattr(userns, kind)
        if len(mappings) != 1:
            raise InvalidArgument(f"{field}.{kind} has {len(mappings)} mappings: mode POD takes exactly one")
        _check_id_mapping(mappings[0], f"{field}.{kind}[0]")
        if mappings[0].container_id != 0:
            raise InvalidArgument(f"{field}.{kind}[0] maps container ids from {mappings[0].container_id}: "
                                  "container id 0 (root) must be mapped")


def _check_pod_name_part(value: str, field: str) -> None:
    check_text(value, field, NAME_LENGTH_MAX)
    if any(c in _CNI_ARGS_SEPARATORS or not c.isprintable() for c in value):
        raise InvalidArgument(f"{field} {shown(value)} may not hold ';', '=' or control characters "
                              "(it is passed to CNI plugins in CNI_ARGS)")


def check_pod_config(config: pb.PodSandboxConfig) -> None:
    """RunPodSandbox's config, as far as it can be judged without the node."""
    check_no_nul(config, "pod sandbox")
    meta = config.metadata
    for field in ("name", "namespace", "uid"):
        _check_pod_name_part(getattr(meta, field), f"metadata.{field}")
    check_text(config.hostname, "hostname", HOSTNAME_LENGTH_MAX)
    check_path(config.log_directory, "log_directory", absolute=True)
    if config.log_directory and os.path.lexists(config.log_directory) and not os.path.isdir(config.log_directory):
        raise InvalidArgument(f"log_directory {shown(config.log_directory)} exists and is not a directory")
    _check_dns(config.dns_config)
    for index, mapping in enumerate(config.port_mappings):
        _check_port_mapping(mapping, f"port_mappings[{index}]")
    _check_ids(config.linux.security_context, "linux.security_context")
    check_userns_options(config.linux.security_context.namespace_options,
                         "linux.security_context.namespace_options")


def _check_dns(dns: pb.DNSConfig) -> None:
    # Each becomes a line, or a word of one, of the pod's resolv.conf.
    for index, server in enumerate(dns.servers):
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise InvalidArgument(f"dns_config.servers[{index}] {shown(server)} is not an IP address") from None
    for field in ("searches", "options"):
        for index, value in enumerate(getattr(dns, field)):
            check_text(value, f"dns_config.{field}[{index}]", NAME_LENGTH_MAX, required=True)
            if any(c.isspace() or not c.isprintable() for c in value):
                raise InvalidArgument(f"dns_config.{field}[{index}] {shown(value)} holds white space "
                                      "or control characters")


def _check_port_mapping(mapping: pb.PortMapping, field: str) -> None:
    if mapping.protocol not in pb.Protocol.values():
        raise InvalidArgument(f"{field}.protocol {mapping.protocol} is not TCP, UDP or SCTP")
    check_range(mapping.host_port, f"{field}.host_port", 0, PORT_MAX)  # 0: none, only the pod's IP
    check_range(mapping.container_port, f"{field}.container_port", 1 if mapping.host_port else 0, PORT_MAX)
    if mapping.host_ip:
        try:
            ipaddress.ip_address(mapping.host_ip)
        except ValueError:
            raise InvalidArgument(f"{field}.host_ip {shown(mapping.host_ip)} is not an IP address") from None


def check_log_path(log_path: str) -> None:
    """A container's log_path: relative to its pod's log_directory and kept inside it lexically (symlinks
    are the monitor's to refuse: it opens the file with openat2 RESOLVE_BENEATH)."""
    check_path(log_path, "log_path", absolute=False)
    if log_path and ".." in log_path.split("/"):
        raise InvalidArgument(f"log_path {shown(log_path)} may not have '..' components: it is kept inside "
                              "the pod's log_directory")
    if log_path and log_path.endswith("/"):
        raise InvalidArgument(f"log_path {shown(log_path)} names a directory")


def check_container_config(config: pb.ContainerConfig) -> None:
    """CreateContainer's config, as far as it can be judged without the node."""
    check_no_nul(config, "container")
    check_text(config.metadata.name, "metadata.name", NAME_LENGTH_MAX)
    check_text(config.image.image, "image", IMAGE_NAME_LENGTH_MAX)
    check_command(config.command, "command")
    check_command(config.args, "args")
    check_path(config.working_dir, "working_dir", absolute=True)
    for index, kv in enumerate(config.envs):
        field = f"envs[{index}]"
        if not kv.key or "=" in kv.key:
            raise InvalidArgument(f"{field}.key {shown(kv.key)} is empty or holds '='")
        check_text(kv.key, f"{field}.key", MAX_ARG_STRLEN - 2)
        if len(kv.key.encode()) + 1 + len(kv.value) > MAX_ARG_STRLEN - 1:
            raise InvalidArgument(f"{field} {shown(kv.key)}: KEY=value is longer than {MAX_ARG_STRLEN - 1} bytes")
    for index, mount in enumerate(config.mounts):
        check_path(mount.container_path, f"mounts[{index}].container_path", absolute=True, required=True)
        check_path(mount.host_path, f"mounts[{index}].host_path", absolute=True)
        check_text(mount.image_sub_path, f"mounts[{index}].image_sub_path", PATH_MAX - 1)
    for index, device in enumerate(config.devices):
        check_path(device.container_path, f"devices[{index}].container_path", absolute=True)
        check_path(device.host_path, f"devices[{index}].host_path", absolute=True)
    check_log_path(config.log_path)
    sc = config.linux.security_context
    for field in ("masked_paths", "readonly_paths"):
        for index, path in enumerate(getattr(sc, field)):
            check_path(path, f"linux.security_context.{field}[{index}]", absolute=True)
    _check_ids(sc, "linux.security_context")
    check_userns_options(sc.namespace_options, "linux.security_context.namespace_options")
    if config.linux.HasField("resources"):
        low, high = OOM_SCORE_ADJ_RANGE
        check_range(config.linux.resources.oom_score_adj, "linux.resources.oom_score_adj", low, high)
