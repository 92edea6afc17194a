"""RuntimeService: runtime identity, status and runtime configuration.

Pod and container RPCs are added by their managers as they land; until then
the base class answers them UNIMPLEMENTED.
"""

from __future__ import annotations

import dataclasses
import json

import grpc

from crio_fast.api import api_pb2 as pb
from crio_fast.server.base import ServicerBase
from crio_fast.server.engine import Engine

RUNTIME_NAME = "crio-fast"
RUNTIME_API_VERSION = "v1"
# The CRI "version" field: the kubelet's API version string this server speaks.
KUBELET_API_VERSION = "0.1.0"


def _jsonable(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


class RuntimeServicer(ServicerBase):
    SERVICE = "RuntimeService"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def Version(self, request: pb.VersionRequest, context: grpc.aio.ServicerContext) -> pb.VersionResponse:
        return pb.VersionResponse(
            version=KUBELET_API_VERSION,
            runtime_name=RUNTIME_NAME,
            runtime_version=self.engine.version,
            runtime_api_version=RUNTIME_API_VERSION,
        )

    async def Status(self, request: pb.StatusRequest, context: grpc.aio.ServicerContext) -> pb.StatusResponse:
        conditions = [
            pb.RuntimeCondition(type="RuntimeReady", status=ok, reason=reason, message=message)
            for ok, reason, message in [self.engine.runtime_condition()]
        ] + [
            pb.RuntimeCondition(type="NetworkReady", status=ok, reason=reason, message=message)
            for ok, reason, message in [self.engine.network_condition()]
        ]
        response = pb.StatusResponse(status=pb.RuntimeStatus(conditions=conditions))
        for name in self.engine.config.runtime_handler_names():
            response.runtime_handlers.add(name=name, features=pb.RuntimeHandlerFeatures(recursive_read_only_mounts=False, user_namespaces=False))
        if request.verbose:
            response.info["config"] = json.dumps(self.engine.config_info(), sort_keys=True, default=_jsonable)
            response.info["version"] = json.dumps({"runtime_version": self.engine.version})
        return response

    async def RuntimeConfig(self, request: pb.RuntimeConfigRequest, context: grpc.aio.ServicerContext) -> pb.RuntimeConfigResponse:
        driver = pb.CgroupDriver.SYSTEMD if self.engine.config.runtime.cgroup_manager == "systemd" else pb.CgroupDriver.CGROUPFS
        return pb.RuntimeConfigResponse(linux=pb.LinuxRuntimeConfiguration(cgroup_driver=driver))

    async def UpdateRuntimeConfig(
        self, request: pb.UpdateRuntimeConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateRuntimeConfigResponse:
        self.engine.set_pod_cidr(request.runtime_config.network_config.pod_cidr)
        return pb.UpdateRuntimeConfigResponse()
