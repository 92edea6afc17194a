"""A pod's user namespace (Kubernetes' hostUsers: false), as the kubelet maps it.

validation.check_userns_options has made sure a POD-mode request carries exactly one uid and one gid
mapping, each from container id 0; this turns them into what the monitor is given (uid_map lines) and
what the rest of the engine needs to know of them: the host ids of the container's root, who must own
what the pod's root writes to (the writable layer's root, the pod's /etc files).
"""

from __future__ import annotations

from dataclasses import dataclass

from crio_fast.api import api_pb2 as pb
from crio_fast.validation import user_namespace_wanted


@dataclass(frozen=True)
class IdRange:
    """One line of uid_map(5) or gid_map: container ids from ``container_id`` are host ids from ``host_id``."""

    container_id: int
    host_id: int
    length: int

    def line(self) -> str:
        return f"{self.container_id} {self.host_id} {self.length}"

    def to_host(self, container_id: int) -> int | None:
        """The host id a container id maps to, None when it is outside the range."""
        offset = container_id - self.container_id
        return self.host_id + offset if 0 <= offset < self.length else None

    @classmethod
    def of(cls, mapping: pb.IDMapping) -> "IdRange":
        return cls(mapping.container_id, mapping.host_id, mapping.length)


@dataclass(frozen=True)
class PodUserNamespace:
    uids: IdRange
    gids: IdRange

    @property
    def root_owner(self) -> tuple[int, int]:
        """The (uid, gid) on the host of the container's root (container ids 0 are always mapped)."""
        uid, gid = self.uids.to_host(0), self.gids.to_host(0)
        assert uid is not None and gid is not None, "validation maps container id 0"
        return uid, gid


def pod_user_namespace(config: pb.PodSandboxConfig) -> PodUserNamespace | None:
    """The user namespace a (checked) pod config asks for, None for the node's."""
    options = config.linux.security_context.namespace_options
    if not user_namespace_wanted(options):
        return None
    userns = options.userns_options
    return PodUserNamespace(IdRange.of(userns.uids[0]), IdRange.of(userns.gids[0]))
