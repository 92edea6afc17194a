"""UpdatePodSandboxResources' sizing of the pod cgroup (container/translate.py pod_resources)."""

from crio_fast.api import api_pb2 as api
from crio_fast.container.translate import pod_resources


def test_containers_sum_plus_overhead():
    limits = pod_resources(
        api.LinuxContainerResources(memory_limit_in_bytes=100, cpu_period=100000, cpu_quota=200000, cpu_shares=2048,
                                    cpuset_cpus="0-1", hugepage_limits=[api.HugepageLimit(page_size="2MB", limit=4)]),
        api.LinuxContainerResources(memory_limit_in_bytes=10, cpu_period=50000, cpu_quota=5000, cpu_shares=100,
                                    hugepage_limits=[api.HugepageLimit(page_size="2MB", limit=2),
                                                     api.HugepageLimit(page_size="1GB", limit=8)]))
    assert (limits.memory_limit_in_bytes, limits.cpu_period, limits.cpu_quota, limits.cpu_shares) == (110, 100000, 210000,
                                                                                                      2148)
    assert limits.cpuset_cpus == "0-1"
    # The containers ask no 1GB pages: the overhead alone does not make a limit.
    assert limits.hugepage_limits == [("2MB", 6)]


def test_no_limit_where_the_containers_set_none():
    limits = pod_resources(api.LinuxContainerResources(),
                           api.LinuxContainerResources(memory_limit_in_bytes=10, cpu_quota=5000, cpu_shares=100))
    assert (limits.memory_limit_in_bytes, limits.cpu_quota, limits.cpu_period, limits.cpu_shares) == (0, 0, 0, 0)
    assert limits.oom_score_adj == 0 and limits.pids_limit == 0


def test_the_default_period_when_none_is_given():
    limits = pod_resources(api.LinuxContainerResources(cpu_quota=50000), api.LinuxContainerResources(cpu_quota=1000))
    assert (limits.cpu_period, limits.cpu_quota) == (100000, 51000)
