"""Measure tether.aio against asyncio's subprocess support and a bare pidfd reader.

A measurement, not a test: it prints medians and ratios and asserts nothing.

(a) exit-notification latency: the child (``cat``) blocks reading a pipe; the parent stamps
    the time just before it closes the write end, and the waiting task stamps the time when
    ``await wait()`` returns. Variants, interleaved round by round: tether.aio (group and
    contain=None), asyncio.create_subprocess_exec, and a bare ``loop.add_reader(pidfd)`` on a
    ``tether.spawn_lifelined`` child (reaped with waitid once readable); and, to split the
    cost between the guard's hop and the asyncio layer, the same two without a loop.
    Targets: tether.aio <= 0.6x asyncio, <= 1.2x the bare pidfd reader.
(b) spawn+wait throughput: ``await tether.aio.run(["true"])`` against
    ``await (await asyncio.create_subprocess_exec("true")).wait()``, with 8 runs in flight on
    one loop (throughput: what one loop sustains) and one at a time (sequential: latency).
    Target: tether >= asyncio.
(c) supervising N (3,000) concurrent guarded children on one loop: all block on one pipe,
    the parent closes it, and the parent's CPU time (getrusage user+sys) over the exit phase
    is divided by N. Compared with raw epoll over the pidfds of spawn_lifelined children.
    Target: <= 60 us per exit. And the spawn time per child of that batch against that of a
    batch of 50 started first on the same loop (every live tree's fds are copied by each
    later clone). Target: <= 1.5x.

main(quick) returns the key numbers (aio_exit_latency_ratio, aio_run_seq_ratio,
aio_run_inflight_ratio, aio3000_cpu_per_exit_us, aio_spawn_scaling_ratio, ...) for
benchmarks/run.py.

    PYTHONPATH=src python benchmarks/bench_aio.py [--quick] [--only a,b,c]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import select
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable

import tether
import tether._tree.guarded
import tether.aio
from tether._tree.modes import resolve_mode

CAT = shutil.which("cat") or "/bin/cat"
# What tether.aio.spawn/run use when no contain= is given (what the targets measure).
DEFAULT_MODE = resolve_mode("auto", None)
TRUE = shutil.which("true") or "/bin/true"

# -- (a) latency ------------------------------------------------------------------------------


async def _latency_tether(contain: str | None) -> int:
    r, w = os.pipe2(os.O_CLOEXEC)
    child = await tether.aio.spawn([CAT], stdin=r, stdout=subprocess.DEVNULL, contain=contain)
    os.close(r)
    return await _measure(lambda: child.wait(), w)


async def _latency_asyncio() -> int:
    r, w = os.pipe2(os.O_CLOEXEC)
    proc = await asyncio.create_subprocess_exec(  # noqa: TET106  the reference we compare with
        CAT, stdin=r, stdout=subprocess.DEVNULL)
    os.close(r)
    return await _measure(lambda: proc.wait(), w)


async def _latency_bare_pidfd() -> int:
    r, w = os.pipe2(os.O_CLOEXEC)
    spawned = tether.spawn_lifelined([CAT], stdin=r, stdout=subprocess.DEVNULL)
    os.close(r)
    loop = asyncio.get_running_loop()

    async def wait() -> tether.Exit | None:
        fut: asyncio.Future[None] = loop.create_future()
        fd = spawned.pidfd.fileno()
        loop.add_reader(fd, fut.set_result, None)
        try:
            await fut
        finally:
            loop.remove_reader(fd)
        return spawned.pidfd.poll()

    try:
        return await _measure(wait, w)
    finally:
        spawned.pidfd.close()
        spawned.lifeline.close()


async def _latency_sync_child() -> int:
    # Reference rows without a loop, to split the cost: the guard's hop vs the asyncio layer.
    r, w = os.pipe2(os.O_CLOEXEC)
    with tether.spawn([CAT], stdin=r, stdout=subprocess.DEVNULL) as child:
        os.close(r)
        time.sleep(0.02)
        start = time.perf_counter_ns()
        os.close(w)
        child.wait()
        return time.perf_counter_ns() - start


async def _latency_sync_pidfd() -> int:
    r, w = os.pipe2(os.O_CLOEXEC)
    spawned = tether.spawn_lifelined([CAT], stdin=r, stdout=subprocess.DEVNULL)
    os.close(r)
    time.sleep(0.02)
    start = time.perf_counter_ns()
    os.close(w)
    spawned.pidfd.wait()
    end = time.perf_counter_ns()
    spawned.pidfd.close()
    spawned.lifeline.close()
    return end - start


async def _latency_guard_hop(which: str) -> int:
    # Where a guarded exit's time goes, without a loop: the parent watches one fd only, the
    # program's pidfd (readable when the program exits), the guard's control socket (when
    # the report arrives) or the guard's pidfd (when the guard has exited after it).
    r, w = os.pipe2(os.O_CLOEXEC)
    with tether.spawn([CAT], stdin=r, stdout=subprocess.DEVNULL) as child:
        os.close(r)
        guard = child._tree
        assert isinstance(guard, tether._tree.guarded.Guard)
        fd = {"program pidfd": guard.program.fileno(), "report": guard.sock.fileno(),
              "guard exit": guard.spawned.pidfd.fileno()}[which]
        ep = select.epoll()
        ep.register(fd, select.EPOLLIN)
        time.sleep(0.02)
        start = time.perf_counter_ns()
        os.close(w)
        ep.poll()
        end = time.perf_counter_ns()
        ep.close()
        child.wait()
        return end - start


async def _measure(wait: Callable[[], Awaitable[object]], w: int) -> int:
    async def waiter() -> int:
        await wait()
        return time.perf_counter_ns()

    task = asyncio.create_task(waiter())
    # Let cat finish starting up and block in read(), and the waiter register.
    await asyncio.sleep(0.02)
    start = time.perf_counter_ns()
    os.close(w)
    end = await task
    return end - start


async def bench_latency(rounds: int) -> dict[str, float]:
    variants: dict[str, Callable[[], Awaitable[int]]] = {
        "tether.aio (group)": lambda: _latency_tether("group"),
        "tether.aio (contain=None)": lambda: _latency_tether(None),
        "asyncio subprocess": _latency_asyncio,
        "bare add_reader(pidfd)": _latency_bare_pidfd,
        "(sync tether Child.wait)": _latency_sync_child,
        "(sync Pidfd.wait)": _latency_sync_pidfd,
        "(sync: program pidfd readable)": lambda: _latency_guard_hop("program pidfd"),
        "(sync: guard's report readable)": lambda: _latency_guard_hop("report"),
        "(sync: guard's pidfd readable)": lambda: _latency_guard_hop("guard exit"),
    }
    samples: dict[str, list[int]] = {name: [] for name in variants}
    for fn in variants.values():  # warm-up (imports, the asyncio child watcher thread)
        await fn()
    for _ in range(rounds):
        for name, fn in variants.items():
            samples[name].append(await fn())
    med = {name: statistics.median(v) / 1000 for name, v in samples.items()}
    p90 = {name: statistics.quantiles(v, n=10)[-1] / 1000 for name, v in samples.items()}
    print(f"\n(a) exit-notification latency, {rounds} rounds (child exits -> wait() returns)")
    print(f"    {'variant':32} {'median us':>10} {'p90 us':>10}")
    for name in variants:
        print(f"    {name:32} {med[name]:10.1f} {p90[name]:10.1f}")
    t = med["tether.aio (group)"]
    print(f"    tether.aio / asyncio      = {t / med['asyncio subprocess']:.2f}  (target <= 0.6)")
    print(f"    tether.aio / bare pidfd   = {t / med['bare add_reader(pidfd)']:.2f}  "
          "(target <= 1.2)")
    return {"aio_exit_latency_us": t, "asyncio_exit_latency_us": med["asyncio subprocess"],
            "aio_exit_latency_ratio": t / med["asyncio subprocess"]}


# -- (b) throughput ---------------------------------------------------------------------------


async def bench_throughput(n: int, in_flight: int) -> dict[str, float]:
    async def tether_run() -> None:
        await tether.aio.run([TRUE])

    async def tether_run_bare() -> None:
        await tether.aio.run([TRUE], contain=None)

    async def asyncio_run() -> None:
        proc = await asyncio.create_subprocess_exec(TRUE)  # noqa: TET106  the reference
        await proc.wait()

    variants: dict[str, Callable[[], Awaitable[None]]] = {
        f"tether.aio.run ({DEFAULT_MODE})": tether_run,
        "tether.aio.run (contain=None)": tether_run_bare,
        "asyncio exec+wait": asyncio_run,
    }

    async def batch_of(fn: Callable[[], Awaitable[None]], count: int, lanes: int) -> float:
        async def lane(k: int) -> None:
            for _ in range(k):
                await fn()

        start = time.perf_counter()
        await asyncio.gather(*(lane(count // lanes) for _ in range(lanes)))
        return (time.perf_counter() - start) / (count // lanes * lanes) * 1e6

    for fn in variants.values():
        await fn()
    batch = max(in_flight, n // 10)
    print(f"\n(b) spawn+wait of `true`, {batch * 10} runs per variant and layout "
          f"(median of 10 interleaved batches)")
    print(f"    {'variant':30} {'layout':>14} {'us/op':>8} {'ops/s':>8}")
    ratios: dict[int, float] = {}
    result: dict[str, float] = {}
    for lanes in (1, in_flight):
        per_op: dict[str, list[float]] = {name: [] for name in variants}
        # Batches interleaved, so drift in the machine's load hits every variant alike.
        for _ in range(10):
            for name, fn in variants.items():
                per_op[name].append(await batch_of(fn, batch, lanes))
        med = {name: statistics.median(v) for name, v in per_op.items()}
        layout = "sequential" if lanes == 1 else f"{lanes} in flight"
        for name in variants:
            print(f"    {name:30} {layout:>14} {med[name]:8.0f} {1e6 / med[name]:8.0f}")
        ratios[lanes] = med["asyncio exec+wait"] / med[f"tether.aio.run ({DEFAULT_MODE})"]
        if lanes == 1:
            result.update(aio_run_seq_us=med[f"tether.aio.run ({DEFAULT_MODE})"],
                          asyncio_run_seq_us=med["asyncio exec+wait"],
                          aio_run_seq_ratio=1 / ratios[1])
        else:
            result["aio_run_inflight_ratio"] = 1 / ratios[lanes]
    print(f"    tether throughput / asyncio, {in_flight} in flight = {ratios[in_flight]:.2f}  "
          "(target >= 1.0)")
    print(f"    tether throughput / asyncio, sequential  = {ratios[1]:.2f}  (one at a time: "
          "this is latency, where the guard's extra process shows)")
    print(f"    tether.aio.run / asyncio, sequential  = {1 / ratios[1]:.2f}x time  "
          "(target <= 1.2)")
    return result


# -- (c) many children ------------------------------------------------------------------------


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _raise_fd_limit(need: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        soft = hard if hard == resource.RLIM_INFINITY else min(hard, max(need, soft))
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


SCALING_BASE = 50  # the spawn time per child at N is compared with that at this N


async def _many_tether(n: int) -> tuple[float, float, float, float]:
    """(spawn s, CPU us per exit, exit phase s, spawn s of the last SCALING_BASE children)."""
    r, w = os.pipe2(os.O_CLOEXEC)
    t0 = t_last = time.perf_counter()
    children = []
    for i in range(n):
        if i == n - SCALING_BASE:
            t_last = time.perf_counter()
        children.append(await tether.aio.spawn([CAT], stdin=r, stdout=subprocess.DEVNULL))
    t1 = time.perf_counter()
    spawn_s = t1 - t0
    last_s = t1 - t_last
    os.close(r)
    tasks = [asyncio.create_task(c.wait()) for c in children]
    await asyncio.sleep(0.5)  # every waiter registered, every cat blocked in read()
    threads = threading.active_count()
    cpu0, t0 = _cpu(), time.perf_counter()
    os.close(w)
    codes = await asyncio.gather(*tasks)
    cpu1, t1 = _cpu(), time.perf_counter()
    assert threading.active_count() == threads
    bad = [c for c in codes if c != 0]
    if bad:
        print(f"    !! {len(bad)} children exited non-zero: {bad[:5]}")
    return spawn_s, (cpu1 - cpu0) / n * 1e6, t1 - t0, last_s


async def _many_tether_scaling(n: int) -> tuple[tuple[float, float, float, float], float]:
    """A batch of SCALING_BASE children, ended and reaped, then one of ``n``, on one loop:
    (the big batch's numbers, the small batch's spawn s)."""
    small = await _many_tether(SCALING_BASE)
    return await _many_tether(n), small[0]


def _many_raw_epoll(n: int) -> tuple[float, float, float]:
    r, w = os.pipe2(os.O_CLOEXEC)
    t0 = time.perf_counter()
    spawned = [
        tether.spawn_lifelined([CAT], stdin=r, stdout=subprocess.DEVNULL) for _ in range(n)
    ]
    spawn_s = time.perf_counter() - t0
    os.close(r)
    ep = select.epoll()
    by_fd = {s.pidfd.fileno(): s for s in spawned}
    for fd in by_fd:
        ep.register(fd, select.EPOLLIN)
    time.sleep(0.5)
    cpu0, t0 = _cpu(), time.perf_counter()
    os.close(w)
    left = n
    while left:
        for fd, _ in ep.poll():
            s = by_fd.pop(fd)
            ep.unregister(fd)
            s.pidfd.poll()
            s.pidfd.close()
            s.lifeline.close()
            left -= 1
    cpu1, t1 = _cpu(), time.perf_counter()
    ep.close()
    return spawn_s, (cpu1 - cpu0) / n * 1e6, t1 - t0


def bench_many(n: int) -> dict[str, float]:
    limit = _raise_fd_limit(6 * n + 256)
    if limit < 6 * n + 256:
        n = max(10, (limit - 256) // 6)
        print(f"\n    (RLIMIT_NOFILE hard limit {limit}: supervising {n} children instead)")
    print(f"\n(c) {n} concurrent children on one loop, all released at once "
          f"(ulimit -u {resource.getrlimit(resource.RLIMIT_NPROC)[0]}, "
          f"nofile {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}, {os.cpu_count()} cpus)")
    tether_res, small_s = asyncio.run(_many_tether_scaling(n))
    raw_res = _many_raw_epoll(n)
    print(f"    {'variant':34} {'spawn s':>8} {'exit phase s':>13} {'CPU us/exit':>12}")
    for name, (spawn_s, cpu_us, wall) in (
        (f"tether.aio guarded ({DEFAULT_MODE})", tether_res[:3]),
        ("raw epoll, spawn_lifelined pidfds", raw_res),
    ):
        print(f"    {name:34} {spawn_s:8.2f} {wall:13.3f} {cpu_us:12.1f}")
    print(f"    tether.aio CPU per exit = {tether_res[1]:.1f} us  (target <= 60); "
          f"{tether_res[1] / raw_res[1]:.1f}x raw epoll")
    base_us = small_s / SCALING_BASE * 1e6
    per_child_us = tether_res[0] / n * 1e6
    last_us = tether_res[3] / min(n, SCALING_BASE) * 1e6
    print(f"    spawn per child: {base_us:.0f} us at N={SCALING_BASE}, {per_child_us:.0f} us at "
          f"N={n} ({per_child_us / base_us:.2f}x, target <= 1.5), the last {SCALING_BASE}: "
          f"{last_us:.0f} us ({last_us / base_us:.2f}x)")
    return {"aio_many_children": n, "aio3000_cpu_per_exit_us": tether_res[1],
            "aio3000_cpu_per_exit_vs_raw_epoll": tether_res[1] / raw_res[1],
            "aio_spawn_us_at_50": base_us, "aio_spawn_us_at_n": per_child_us,
            "aio_spawn_scaling_ratio": per_child_us / base_us,
            "aio_spawn_last50_ratio": last_us / base_us}


def main(quick: bool | None = None) -> dict[str, float]:
    """Run the sections asked for on the command line (``quick`` overrides ``--quick``);
    print them, and return their key numbers (the targets' ratios) for benchmarks/run.py."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="CI smoke sizes")
    parser.add_argument("--only", default="a,b,c", help="sections to run, e.g. a,c")
    parser.add_argument("--rounds", type=int, help="latency rounds (default 300; quick 20)")
    parser.add_argument("--runs", type=int, help="throughput runs (default 1000; quick 50)")
    parser.add_argument("--children", type=int, help="concurrent children (3000; quick 100)")
    parser.add_argument("--in-flight", type=int, default=8,
                        help="throughput: runs in flight on the loop (default 8)")
    args = parser.parse_args()
    only = set(args.only.split(","))
    if quick is not None:
        args.quick = quick
    rounds = args.rounds or (20 if args.quick else 300)
    runs = args.runs or (50 if args.quick else 1000)
    children = args.children or (100 if args.quick else 3000)
    print(f"python {sys.version.split()[0]}, {os.uname().release}, {os.cpu_count()} cpus, "
          f"load {os.getloadavg()[0]:.2f}; tether.aio's default contain here: {DEFAULT_MODE}")
    result: dict[str, float] = {}
    if "a" in only:
        result.update(asyncio.run(bench_latency(rounds)))
    if "b" in only:
        result.update(asyncio.run(bench_throughput(runs, args.in_flight)))
    if "c" in only:
        result.update(bench_many(children))
    return result


if __name__ == "__main__":
    main()
