"""Count the process's asyncio tasks by owner state, and its threads.

This is the Python counterpart of Go's ``runtime.NumGoroutine()``, split so that the leak
decision can leave out what load explains.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from dataclasses import dataclass

from media_service.leak.ownership import OwnerState, TaskOwnership

#: Threads that aiortc starts per received track (``RTCRtpReceiver`` names them after the kind)
#: and joins when the receiver stops; the service's forwarding echo starts none, its transcoding
#: echo (``MEDIA_ECHO_MODE=transcode``) one per track. They grow with the sessions, like the sessions' tasks, so the
#: decision leaves them out; a peer connection that leaks them also leaks its tasks, which count.
SESSION_THREAD_NAMES = frozenset({"audio-decoder", "video-decoder"})

#: Workers of asyncio's default executor (``run_in_executor(None, ...)``, where aiortc encodes):
#: started on demand up to ``min(32, cpus + 4)``, so they follow load up to a fixed cap and cannot
#: pile up. Counting them would flag a busy pod on a large node.
POOL_THREAD = re.compile(r"asyncio_\d+")


@dataclass(frozen=True, slots=True)
class Census:
    live: int  # tasks of open owners
    closing: int  # tasks of owners closed within the grace period
    orphaned: int  # tasks of owners closed longer ago than the grace period
    unowned: int  # tasks that belong to no owner
    threads: int  # Python threads, the main thread included
    session_threads: int  # of which per-session media workers (SESSION_THREAD_NAMES)
    pool_threads: int = 0  # of which default-executor workers (POOL_THREAD)

    @property
    def tasks(self) -> int:
        return self.live + self.closing + self.orphaned + self.unowned

    @property
    def total(self) -> int:
        """Tasks + threads: the raw count (``media_goroutine_count``)."""
        return self.tasks + self.threads

    @property
    def unexplained(self) -> int:
        """What load cannot explain, the count the leak rule judges (``media_goroutine_unexplained``):
        unowned tasks, orphans, and threads that are neither per-session nor pool workers. Closing
        tasks are left out while they wind down."""
        return self.unowned + self.orphaned + self.threads - self.session_threads - self.pool_threads


def take_census(
    ownership: TaskOwnership,
    *,
    grace: float,
    now: float | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
) -> Census:
    """Count the pending tasks of ``loop`` (the running loop by default) and all threads."""
    now = time.monotonic() if now is None else now
    counts = dict.fromkeys(OwnerState, 0)
    pending = asyncio.all_tasks(loop)
    # One pass over the owned tasks; whatever is pending and not among them is unowned.
    for task, owner in ownership.owned():
        if task in pending:
            counts[owner.state(now, grace)] += 1
    counts[OwnerState.UNOWNED] = len(pending) - sum(counts.values())
    threads = threading.enumerate()
    return Census(
        live=counts[OwnerState.LIVE],
        closing=counts[OwnerState.CLOSING],
        orphaned=counts[OwnerState.ORPHANED],
        unowned=counts[OwnerState.UNOWNED],
        threads=len(threads),
        session_threads=sum(1 for t in threads if t.name in SESSION_THREAD_NAMES),
        pool_threads=sum(1 for t in threads if POOL_THREAD.fullmatch(t.name)),
    )
