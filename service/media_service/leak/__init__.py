"""Leak detection: which tasks belong to which session, the leak rule and its sampler, the task
dump, and fault injection for fire drills. See docs/leak-detection.md."""

from media_service.leak.census import POOL_THREAD, SESSION_THREAD_NAMES, Census, take_census
from media_service.leak.detector import LeakDetector, LeakSettings
from media_service.leak.faults import FaultInjector, parse_task_count
from media_service.leak.ownership import Owner, OwnerState, TaskOwnership, current_owner, owned_by
from media_service.leak.rule import LeakRule, LeakVerdict
from media_service.leak.sampler import LeakSampler, Sample
from media_service.leak.taskdump import task_dump

__all__ = [
    "POOL_THREAD",
    "SESSION_THREAD_NAMES",
    "Census",
    "FaultInjector",
    "LeakDetector",
    "LeakRule",
    "LeakSampler",
    "LeakSettings",
    "LeakVerdict",
    "Owner",
    "OwnerState",
    "Sample",
    "TaskOwnership",
    "current_owner",
    "owned_by",
    "parse_task_count",
    "take_census",
    "task_dump",
]
