"""Run every benchmark in bench/ in sequence and print one JSON document.

Each benchmark is its own process that prints JSON on stdout (progress on stderr); the ones not
present in bench/ are reported as missing and skipped. The whole run is bounded by ``--budget``
seconds (default 540): a benchmark gets at most what is left, and is stopped with its whole process
group (so the servers it started go too) when its time is up.

Run from the repository root: ``.venv/bin/python bench/run_all.py`` (``--quick`` for a smoke run;
``--only sessions`` to pick some). Loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent


@dataclass(frozen=True)
class Bench:
    script: str
    args: tuple[str, ...] = ()
    timeout: float = 120.0  # seconds, before the share of the budget that is left
    extra: dict[str, tuple[str, ...]] = field(default_factory=dict)  # per-mode arguments


BENCHES = (
    # sessions.py stops starting phases after its own --budget; the rest of its timeout is margin.
    Bench("sessions.py", timeout=220.0, extra={"full": ("--budget", "170"), "quick": ("--quick", "--budget", "90")}),
    Bench("forward.py", timeout=150.0),
    Bench("leak_sample.py", timeout=60.0),
    Bench("readiness_flip.py", timeout=60.0),
    Bench("hub_fanout.py", timeout=120.0, extra={"quick": ("--clients", "200", "--messages", "20")}),
    Bench("bus.py", timeout=120.0, extra={"quick": ("--users", "60", "--seconds", "3")}),
    # Production settings (15 s interval, 120 s confirmation) take minutes alone; these short
    # settings keep the whole run within 9 minutes (round time and CPU are per round anyway).
    Bench(
        "operator_round.py",
        timeout=150.0,
        extra={
            "full": ("--interval", "2", "--confirm", "10"),
            "quick": ("--pods", "100", "--interval", "2", "--confirm", "10"),
        },
    ),
)


def say(message: str) -> None:
    print(f"[run_all {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_json(stdout: str) -> Any:
    """The benchmark's JSON document: the whole output, or else the last line that parses."""
    try:
        return json.loads(stdout)
    except json.JSONDecodeError:
        pass
    for line in reversed(stdout.strip().splitlines()):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    raise ValueError("no JSON document on stdout")


def stop_group(proc: subprocess.Popen[str]) -> None:
    """SIGTERM the benchmark's process group, SIGKILL what is left after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_one(bench: Bench, quick: bool, timeout: float) -> dict[str, Any]:
    path = BENCH / bench.script
    args = list(bench.args) + list(bench.extra.get("quick" if quick else "full", ()))
    if quick and "quick" not in bench.extra and "--quick" in path.read_text():
        args.append("--quick")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, str(path), *args]
    say(f"{bench.script} {' '.join(args)} (up to {timeout:.0f} s)")
    started = time.perf_counter()
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
        status = "ok" if proc.returncode == 0 else "failed"
    except subprocess.TimeoutExpired:
        stop_group(proc)
        stdout, stderr = proc.communicate()
        status = "timeout"
    except BaseException:
        stop_group(proc)
        raise
    out: dict[str, Any] = {
        "status": status,
        "returncode": proc.returncode,
        "seconds": round(time.perf_counter() - started, 1),
        "command": " ".join(["python", f"bench/{bench.script}", *args]),
    }
    try:
        out["result"] = parse_json(stdout)
        if status == "failed":
            # Figures were printed: a non-zero exit means targets missed, not a broken run.
            out["status"] = "ok"
    except ValueError as exc:
        out["error"] = str(exc)
    if out["status"] != "ok":
        out["stderr_tail"] = stderr[-2000:]
    say(f"{bench.script}: {out['status']} in {out['seconds']} s")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run the bench/ benchmarks and print one JSON document")
    parser.add_argument("--quick", action="store_true", help="smoke run (passed on to benchmarks that take it)")
    parser.add_argument(
        "--only", action="append", metavar="NAME", help="run only this benchmark, e.g. sessions (repeatable)"
    )
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for the whole run")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.budget
    started = time.perf_counter()
    load_before = os.getloadavg()
    results: dict[str, Any] = {}
    for bench in BENCHES:
        name = bench.script.removesuffix(".py")
        if args.only and name not in args.only:
            continue
        if not (BENCH / bench.script).exists():
            results[name] = {"status": "missing"}
            continue
        left = deadline - time.monotonic()
        if left < 15:
            results[name] = {"status": "skipped", "reason": "time budget exhausted"}
            continue
        results[name] = run_one(bench, args.quick, min(bench.timeout, left))
    document = {
        "quick": args.quick,
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "seconds": round(time.perf_counter() - started, 1),
        "benchmarks": results,
    }
    print(json.dumps(document, indent=2))
    return 0 if all(r["status"] in ("ok", "missing") for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
