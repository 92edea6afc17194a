"""CRI replies made from the daemon's records: ContainerStatus, Container, PodSandboxStatus, PodSandbox,
and the reverse for the states a List filter names."""

from __future__ import annotations

from crio_fast.api import api_pb2 as pb
from crio_fast.state.records import (
    CTR_CREATED,
    CTR_EXITED,
    CTR_RUNNING,
    CTR_UNKNOWN,
    POD_NOTREADY,
    POD_READY,
    ContainerRecord,
    PodRecord,
    decode_container_config,
    decode_pod_config,
    list_entry,
)

CONTAINER_STATE = {
    CTR_CREATED: pb.ContainerState.CONTAINER_CREATED,
    CTR_RUNNING: pb.ContainerState.CONTAINER_RUNNING,
    CTR_EXITED: pb.ContainerState.CONTAINER_EXITED,
    CTR_UNKNOWN: pb.ContainerState.CONTAINER_UNKNOWN,
}
CONTAINER_STATE_OF = {proto: state for state, proto in CONTAINER_STATE.items()}
POD_STATE = {POD_READY: pb.PodSandboxState.SANDBOX_READY, POD_NOTREADY: pb.PodSandboxState.SANDBOX_NOTREADY}
POD_STATE_OF = {proto: state for state, proto in POD_STATE.items()}


def container_status(record: ContainerRecord) -> pb.ContainerStatus:
    config = decode_container_config(record.config)
    status = pb.ContainerStatus(
        id=record.id, metadata=config.metadata, state=CONTAINER_STATE[record.state],
        created_at=record.created_at, started_at=record.started_at, finished_at=record.finished_at,
        exit_code=record.exit_code, image=pb.ImageSpec(image=record.image_ref), image_ref=record.image_id,
        image_id=record.image_id, reason=record.reason, message=record.message, labels=config.labels,
        annotations=config.annotations, log_path=record.log_path,
    )
    process = record.process
    if "uid" in process:  # decided at create, with the rest of the plan
        status.user.linux.uid = process["uid"]
        status.user.linux.gid = process["gid"]
        status.user.linux.supplemental_groups.extend(process["gids"])
    for m in record.mounts:
        mount = status.mounts.add(container_path=m["container_path"], host_path=m["host_path"],
                                  readonly=m["readonly"], propagation=m["propagation"],
                                  recursive_read_only=m.get("recursive_read_only", False))
        if "image" in m:  # an image volume: the image as asked for, and the one mounted
            mount.image.image, mount.image.image_ref = m["image"], m["image_id"]
            mount.image_sub_path = m["image_sub_path"]
    return status


def container(record: ContainerRecord) -> pb.Container:
    """The record as ListContainers returns it; built once per state (callers must not change it)."""
    def build() -> pb.Container:
        config = decode_container_config(record.config)
        return pb.Container(
            id=record.id, pod_sandbox_id=record.pod_id, metadata=config.metadata,
            image=pb.ImageSpec(image=record.image_ref), image_ref=record.image_id, image_id=record.image_id,
            state=CONTAINER_STATE[record.state], created_at=record.created_at, labels=config.labels,
            annotations=config.annotations,
        )

    return list_entry(record, build)


def pod_status(record: PodRecord) -> pb.PodSandboxStatus:
    config = decode_pod_config(record.config)
    status = pb.PodSandboxStatus(
        id=record.id, metadata=config.metadata, state=POD_STATE[record.state], created_at=record.created_at,
        labels=config.labels, annotations=config.annotations, runtime_handler=record.runtime_handler,
    )
    status.network.SetInParent()
    if record.ips:
        status.network.ip = record.ips[0]
        status.network.additional_ips.extend(pb.PodIP(ip=ip) for ip in record.ips[1:])
    opts = status.linux.namespaces.options
    opts.network = pb.NamespaceMode.NODE if record.namespaces.get("net") == "host" else pb.NamespaceMode.POD
    opts.ipc = pb.NamespaceMode.NODE if record.namespaces.get("ipc") == "host" else pb.NamespaceMode.POD
    pid_mode = config.linux.security_context.namespace_options.pid
    opts.pid = pid_mode if pid_mode in (pb.NamespaceMode.NODE, pb.NamespaceMode.POD) else pb.NamespaceMode.CONTAINER
    return status


def pod(record: PodRecord) -> pb.PodSandbox:
    """The record as ListPodSandbox returns it; built once per state (callers must not change it)."""
    def build() -> pb.PodSandbox:
        config = decode_pod_config(record.config)
        return pb.PodSandbox(
            id=record.id, metadata=config.metadata, created_at=record.created_at, state=POD_STATE[record.state],
            labels=config.labels, annotations=config.annotations, runtime_handler=record.runtime_handler,
        )

    return list_entry(record, build)


def pod_state_filter(flt: pb.PodSandboxFilter) -> str | None:
    """The state a ListPodSandbox filter asks for (None: any); a value this API does not name reads as not ready."""
    if not flt.HasField("state"):
        return None
    return POD_STATE_OF.get(flt.state.state, POD_NOTREADY)


def container_state_filter(flt: pb.ContainerFilter) -> str | None:
    """The state a ListContainers filter asks for (None: any); a value this API does not name matches nothing."""
    if not flt.HasField("state"):
        return None
    return CONTAINER_STATE_OF.get(flt.state.state, f"state {flt.state.state}")
