"""The registry both programs start from: one per app instance (never the global one), so that
tests can run several side by side, with the process's own figures in it."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, ProcessCollector, disable_created_metrics

# The *_created series double the output and no rule or dashboard reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]


def new_registry() -> CollectorRegistry:
    """A registry with process_* (open fds, RSS, CPU): a leak of sockets or memory shows there first."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    return registry
