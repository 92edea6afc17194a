"""Containers: CRI config + image config -> OCI spec and launch plan, lifecycle, logs, exec."""
