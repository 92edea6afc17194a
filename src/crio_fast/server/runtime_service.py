"""RuntimeService: the runtime's identity and status, pods, containers, streams, stats, events.

Handlers are plain functions that run in the gRPC server's worker threads
(see server/base.py); only the event stream lives on the daemon's loop.
"""

from __future__ import annotations

import dataclasses
import json

import grpc

from crio_fast.api import api_pb2 as pb
from crio_fast.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from crio_fast.server import render
from crio_fast.server.base import ServicerBase
from crio_fast.server.engine import Engine
from crio_fast.server.events import SubscriberOverflow
from crio_fast.server.stats_messages import (
    container_stats_message,
    metric_descriptor_message,
    pod_metrics_message,
    pod_stats_message,
)

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

    def Version(self, request: pb.VersionRequest, context: grpc.ServicerContext) -> pb.VersionResponse:
        return pb.VersionResponse(
            version=KUBELET_API_VERSION,
            runtime_name=RUNTIME_NAME,
            runtime_version=self.engine.version,
            runtime_api_version=RUNTIME_API_VERSION,
        )

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusResponse:
        conditions = [
            pb.RuntimeCondition(type="RuntimeReady", status=ok, reason=reason, message=message)
            for ok, reason, message in [self.engine.runtime_condition()]
        ] + [
            pb.RuntimeCondition(type="NetworkReady", status=ok, reason=reason, message=message)
            for ok, reason, message in [self.engine.network_condition()]
        ]
        response = pb.StatusResponse(status=pb.RuntimeStatus(conditions=conditions),
                                     features=pb.RuntimeFeatures(**self.engine.runtime_features()))
        default = self.engine.config.runtime.default_runtime
        # The default handler once more under the empty name, which is how CRI names it in requests.
        for listed, name in [("", default), *((n, n) for n in self.engine.config.runtime_handler_names())]:
            response.runtime_handlers.add(name=listed,
                                          features=pb.RuntimeHandlerFeatures(**self.engine.handler_features(name)))
        if request.verbose:
            response.info["config"] = json.dumps(self.engine.config_info(), sort_keys=True, default=_jsonable)
            response.info["version"] = json.dumps({"runtime_version": self.engine.version})
            response.info["apparmor"] = json.dumps(self.engine.apparmor.describe())
        return response

    def RuntimeConfig(self, request: pb.RuntimeConfigRequest, context: grpc.ServicerContext) -> pb.RuntimeConfigResponse:
        driver = pb.CgroupDriver.SYSTEMD if self.engine.config.runtime.cgroup_manager == "systemd" else pb.CgroupDriver.CGROUPFS
        return pb.RuntimeConfigResponse(linux=pb.LinuxRuntimeConfiguration(cgroup_driver=driver))

    def UpdateRuntimeConfig(
        self, request: pb.UpdateRuntimeConfigRequest, context: grpc.ServicerContext
    ) -> pb.UpdateRuntimeConfigResponse:
        self.engine.set_pod_cidr(request.runtime_config.network_config.pod_cidr)
        return pb.UpdateRuntimeConfigResponse()

    # -- pods ------------------------------------------------------------------

    def RunPodSandbox(self, request: pb.RunPodSandboxRequest, context: grpc.ServicerContext) -> pb.RunPodSandboxResponse:
        pod_id = self.engine.sandboxes.run(request.config, request.runtime_handler)
        return pb.RunPodSandboxResponse(pod_sandbox_id=pod_id)

    def StopPodSandbox(self, request: pb.StopPodSandboxRequest, context: grpc.ServicerContext) -> pb.StopPodSandboxResponse:
        _require(request.pod_sandbox_id, "pod_sandbox_id")
        self.engine.stop_pod(request.pod_sandbox_id)
        return pb.StopPodSandboxResponse()

    def RemovePodSandbox(self, request: pb.RemovePodSandboxRequest, context: grpc.ServicerContext) -> pb.RemovePodSandboxResponse:
        _require(request.pod_sandbox_id, "pod_sandbox_id")
        self.engine.remove_pod(request.pod_sandbox_id)
        return pb.RemovePodSandboxResponse()

    def PodSandboxStatus(self, request: pb.PodSandboxStatusRequest, context: grpc.ServicerContext) -> pb.PodSandboxStatusResponse:
        _require(request.pod_sandbox_id, "pod_sandbox_id")
        sandboxes = self.engine.sandboxes
        record = sandboxes.get(request.pod_sandbox_id)
        response = pb.PodSandboxStatusResponse(status=render.pod_status(record))
        if request.verbose:
            response.info["info"] = json.dumps(
                {"pid": record.monitor_pid, "podDir": record.pod_dir, "cgroup": record.cgroup_path,
                 "namespaces": record.ns_paths, "runtimeHandler": record.runtime_handler}
            )
        return response

    def ListPodSandbox(self, request: pb.ListPodSandboxRequest, context: grpc.ServicerContext) -> pb.ListPodSandboxResponse:
        flt = request.filter
        records = self.engine.sandboxes.list(
            flt.id, render.pod_state_filter(flt), flt.label_selector)
        return pb.ListPodSandboxResponse(items=[render.pod(r) for r in records])

    # -- containers ------------------------------------------------------------

    def CreateContainer(self, request: pb.CreateContainerRequest, context: grpc.ServicerContext) -> pb.CreateContainerResponse:
        _require(request.pod_sandbox_id, "pod_sandbox_id")
        container_id = self.engine.containers.create(request.pod_sandbox_id, request.config, request.sandbox_config)
        return pb.CreateContainerResponse(container_id=container_id)

    def StartContainer(self, request: pb.StartContainerRequest, context: grpc.ServicerContext) -> pb.StartContainerResponse:
        _require(request.container_id, "container_id")
        self.engine.containers.start(request.container_id)
        return pb.StartContainerResponse()

    def StopContainer(self, request: pb.StopContainerRequest, context: grpc.ServicerContext) -> pb.StopContainerResponse:
        _require(request.container_id, "container_id")
        self.engine.containers.stop(request.container_id, request.timeout)
        return pb.StopContainerResponse()

    def RemoveContainer(self, request: pb.RemoveContainerRequest, context: grpc.ServicerContext) -> pb.RemoveContainerResponse:
        _require(request.container_id, "container_id")
        self.engine.containers.remove(request.container_id)
        return pb.RemoveContainerResponse()

    def ContainerStatus(self, request: pb.ContainerStatusRequest, context: grpc.ServicerContext) -> pb.ContainerStatusResponse:
        _require(request.container_id, "container_id")
        containers = self.engine.containers
        record = containers.get(request.container_id)
        response = pb.ContainerStatusResponse(status=render.container_status(record))
        if request.verbose:
            response.info["info"] = json.dumps(
                {"pid": record.pid, "sandboxID": record.pod_id, "bundle": record.bundle, "cgroup": record.cgroup_path,
                 # The profile the container's processes (and its execs) run under; "unconfined": none.
                 "apparmorProfile": record.process.get("apparmor_profile") or "unconfined"}
            )
        return response

    def ListContainers(self, request: pb.ListContainersRequest, context: grpc.ServicerContext) -> pb.ListContainersResponse:
        flt = request.filter
        records = self.engine.containers.list(
            flt.id, flt.pod_sandbox_id, render.container_state_filter(flt), flt.label_selector)
        return pb.ListContainersResponse(containers=[render.container(r) for r in records])

    def ExecSync(self, request: pb.ExecSyncRequest, context: grpc.ServicerContext) -> pb.ExecSyncResponse:
        _require(request.container_id, "container_id")
        exit_code, stdout, stderr = self.engine.containers.exec_sync(
            request.container_id, list(request.cmd), request.timeout)
        return pb.ExecSyncResponse(stdout=stdout, stderr=stderr, exit_code=exit_code)

    # -- streaming: the URL of the streaming server; the session runs there -----

    def _stream_server(self):
        server = self.engine.stream_server
        if server is None:
            raise FailedPrecondition("the streaming server is not running")
        return server

    def Exec(self, request: pb.ExecRequest, context: grpc.ServicerContext) -> pb.ExecResponse:
        server = self._stream_server()
        self.engine.streams.check_exec(request)
        return pb.ExecResponse(url=server.get_exec_url(request))

    def Attach(self, request: pb.AttachRequest, context: grpc.ServicerContext) -> pb.AttachResponse:
        server = self._stream_server()
        self.engine.streams.check_attach(request)
        return pb.AttachResponse(url=server.get_attach_url(request))

    def PortForward(self, request: pb.PortForwardRequest, context: grpc.ServicerContext) -> pb.PortForwardResponse:
        server = self._stream_server()
        self.engine.streams.check_port_forward(request)
        return pb.PortForwardResponse(url=server.get_port_forward_url(request))

    def UpdateContainerResources(
        self, request: pb.UpdateContainerResourcesRequest, context: grpc.ServicerContext
    ) -> pb.UpdateContainerResourcesResponse:
        _require(request.container_id, "container_id")
        self.engine.containers.update_resources(request.container_id, request.linux)
        return pb.UpdateContainerResourcesResponse()

    def ReopenContainerLog(
        self, request: pb.ReopenContainerLogRequest, context: grpc.ServicerContext
    ) -> pb.ReopenContainerLogResponse:
        _require(request.container_id, "container_id")
        self.engine.containers.reopen_log(request.container_id)
        return pb.ReopenContainerLogResponse()

    # -- stats, metrics and events (crio_fast.stats, server/events.py) ------------

    def ContainerStats(self, request: pb.ContainerStatsRequest, context: grpc.ServicerContext) -> pb.ContainerStatsResponse:
        _require(request.container_id, "container_id")
        sample = self.engine.stats.container_stats(request.container_id)
        return pb.ContainerStatsResponse(stats=container_stats_message(sample, self.engine.stats.storage_dir))

    def ListContainerStats(
        self, request: pb.ListContainerStatsRequest, context: grpc.ServicerContext
    ) -> pb.ListContainerStatsResponse:
        flt = request.filter if request.HasField("filter") else None
        storage_dir = self.engine.stats.storage_dir
        return pb.ListContainerStatsResponse(
            stats=[container_stats_message(s, storage_dir) for s in self.engine.stats.list_container_stats(flt)])

    def PodSandboxStats(self, request: pb.PodSandboxStatsRequest, context: grpc.ServicerContext) -> pb.PodSandboxStatsResponse:
        _require(request.pod_sandbox_id, "pod_sandbox_id")
        sample = self.engine.stats.pod_stats(request.pod_sandbox_id)
        return pb.PodSandboxStatsResponse(stats=pod_stats_message(sample, self.engine.stats.storage_dir))

    def ListPodSandboxStats(
        self, request: pb.ListPodSandboxStatsRequest, context: grpc.ServicerContext
    ) -> pb.ListPodSandboxStatsResponse:
        flt = request.filter if request.HasField("filter") else None
        storage_dir = self.engine.stats.storage_dir
        return pb.ListPodSandboxStatsResponse(
            stats=[pod_stats_message(s, storage_dir) for s in self.engine.stats.list_pod_stats(flt)])

    def ListMetricDescriptors(
        self, request: pb.ListMetricDescriptorsRequest, context: grpc.ServicerContext
    ) -> pb.ListMetricDescriptorsResponse:
        return pb.ListMetricDescriptorsResponse(
            descriptors=[metric_descriptor_message(spec) for spec in self.engine.stats.metric_descriptors()])

    def ListPodSandboxMetrics(
        self, request: pb.ListPodSandboxMetricsRequest, context: grpc.ServicerContext
    ) -> pb.ListPodSandboxMetricsResponse:
        return pb.ListPodSandboxMetricsResponse(
            pod_metrics=[pod_metrics_message(m) for m in self.engine.stats.pod_metrics()])

    async def GetContainerEvents(self, request: pb.GetEventsRequest, context: grpc.ServicerContext):
        subscription = self.engine.events.subscribe()
        try:
            async for event in subscription.events():
                yield event
        except SubscriberOverflow as exc:
            raise ResourceExhausted(f"GetContainerEvents: {exc}; subscribe again") from exc


def _require(value: str, field: str) -> None:
    if not value:
        raise InvalidArgument(f"{field} is empty")
