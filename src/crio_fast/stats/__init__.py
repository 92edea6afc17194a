"""Container and pod stats (CRI stats RPCs) and cAdvisor-named metrics (ListPodSandboxMetrics).

``collector`` samples cgroups, pod networks and writable layers; ``service``
chooses what to sample for each call and makes the metrics; ``cgroup`` knows
the v1 and v2 control files. server/stats_messages.py renders the answers as
CRI messages.
"""

from crio_fast.stats.collector import StatsCollector
from crio_fast.stats.service import StatsService

__all__ = ["StatsCollector", "StatsService"]
