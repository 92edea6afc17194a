"""Pod sandboxes: the pod monitor, pod namespaces and cgroup, DNS/hostname/hosts files."""
