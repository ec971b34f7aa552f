"""Cost of leak detection on the event loop.

Measures what the service pays: the task factory on every task created (unowned and owned),
one census (the per-interval sample), and one task dump, at task counts a busy pod reaches.
Prints one JSON document on stdout (``--table`` for a readable summary instead; ``--uvloop`` to
measure on uvloop, which uvicorn picks when it is installed; ``--quick`` for a smoke run).
Run: ``python bench/leak_sample.py``. Bounded: about 10-20 s on 2 cores, a few with ``--quick``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from media_service.leak.census import take_census
from media_service.leak.ownership import Owner, TaskOwnership, owned_by
from media_service.leak.taskdump import task_dump

REPEATS = 5
QUICK_REPEATS = 2


async def _noop() -> None:
    return None


async def _create(count: int) -> float:
    """Seconds to create ``count`` tasks (the factory's share); they are then run to completion."""
    start = time.perf_counter()
    tasks = [asyncio.create_task(_noop()) for _ in range(count)]
    elapsed = time.perf_counter() - start
    await asyncio.gather(*tasks)
    return elapsed


def _best(samples: list[float]) -> float:
    return min(samples)


async def task_creation(count: int, repeats: int) -> dict[str, float]:
    """Microseconds per create_task: no factory, factory with no owner, factory inside an owner's scope."""
    loop = asyncio.get_running_loop()
    ownership = TaskOwnership()
    results: dict[str, list[float]] = {"no_factory": [], "factory_unowned": [], "factory_owned": []}
    for _ in range(repeats):  # interleaved, so drift in machine load hits all three alike
        results["no_factory"].append(await _create(count))
        ownership.install(loop)
        try:
            results["factory_unowned"].append(await _create(count))
            with owned_by(Owner("bench")):
                results["factory_owned"].append(await _create(count))
        finally:
            ownership.uninstall(loop)
    return {name: _best(values) / count * 1e6 for name, values in results.items()}


async def _with_pending_tasks(count: int, measure: Callable[[TaskOwnership], object], repeats: int) -> dict[str, float]:
    """Milliseconds for ``measure`` with ``count`` pending tasks, half of them owned by 100 owners."""
    loop = asyncio.get_running_loop()
    ownership = TaskOwnership()
    ownership.install(loop)
    release = asyncio.Event()
    tasks: list[asyncio.Task[Any]] = []
    try:
        owners = [Owner(f"session:{i}") for i in range(100)]
        for i in range(count):
            if i % 2:
                with owned_by(owners[i % 100]):
                    tasks.append(asyncio.create_task(release.wait()))
            else:
                tasks.append(asyncio.create_task(release.wait()))
        for owner in owners[:10]:
            owner.close(now=0.0)  # some orphans, so every state is exercised
        await asyncio.sleep(0)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            measure(ownership)
            times.append(time.perf_counter() - start)
        return {"best_ms": _best(times) * 1e3, "median_ms": statistics.median(times) * 1e3}
    finally:
        release.set()
        await asyncio.gather(*tasks)
        ownership.uninstall(loop)


async def run(counts: list[int], repeats: int) -> dict[str, Any]:
    report: dict[str, Any] = {"python": sys.version.split()[0], "loop": type(asyncio.get_running_loop()).__module__}
    report["task_creation_us"] = await task_creation(min(50_000, max(counts)), repeats)
    report["census_ms"] = {
        n: await _with_pending_tasks(n, lambda o: take_census(o, grace=30.0), repeats) for n in counts
    }
    report["dump_ms"] = {n: await _with_pending_tasks(n, lambda o: task_dump(o, grace=30.0), repeats) for n in counts}
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", action="store_true", help="print a readable summary instead of JSON")
    parser.add_argument("--uvloop", action="store_true", help="measure on uvloop")
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer tasks and repeats")
    parser.add_argument("--counts", default=None, help="pending task counts to measure (default 1000,10000,50000)")
    args = parser.parse_args(argv)
    default_counts = "1000,10000" if args.quick else "1000,10000,50000"
    counts = [int(c) for c in (args.counts or default_counts).split(",")]
    repeats = QUICK_REPEATS if args.quick else REPEATS
    runner: Callable[[Coroutine[Any, Any, dict[str, Any]]], dict[str, Any]] = asyncio.run
    if args.uvloop:
        import uvloop

        runner = uvloop.run
    report = runner(run(counts, repeats))
    if not args.table:
        print(json.dumps(report, indent=2))
        return 0
    print(f"python {report['python']}, loop {report['loop']}")
    creation = report["task_creation_us"]
    print("create_task, us/task: " + ", ".join(f"{k} {v:.2f}" for k, v in creation.items()))
    for name in ("census_ms", "dump_ms"):
        for n, t in report[name].items():
            print(f"{name[:-3]:6} {n:>6} pending tasks: best {t['best_ms']:.2f} ms, median {t['median_ms']:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
