"""cmwq vs ThreadPoolExecutor vs asyncio.to_thread, side by side in one process.

Scenarios (each peer runs every round, peers interleaved and their order rotated per round;
the tables show medians over rounds):

* latency: submit-to-start of one tiny callable on an idle executor (p50/p99 of
  `start - submit`, one item at a time);
* throughput: N tiny callables submitted back to back, then all awaited (items/s);
* mixed: items that burn CPU in pure Python (holding the GIL) for BURN seconds, then sleep
  SLEEP seconds (releasing it). The ideal makespan is sum(burns) + SLEEP: the GIL serializes the
  burns and the last item still sleeps after its burn. Reported: makespan, makespan / ideal,
  peak worker threads.

cmwq items mark their sleep with `cmwq.blocking` (its explicit hook); the row "cmwq (plain
sleep)" relies on automatic sleep detection instead. Run:

    python benches/python/bench_executors.py            # full run (a few minutes)
    python benches/python/bench_executors.py --quick    # smoke run
    python benches/python/bench_executors.py --scenarios throughput --peers cmwq,ThreadPoolExecutor()
"""

import argparse
import asyncio
import concurrent.futures as cf
import os
import platform
import statistics
import sys
import time

import cmwq


def noop():
    return None


def burn(seconds):
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


# ---------------------------------------------------------------- peers


class Peer:
    """One executor under test: builds a fresh executor per measurement."""

    def __init__(self, name, make, sleeper=time.sleep, workers=None):
        self.name = name
        self.make = make
        self.sleeper = sleeper
        self.workers = workers  # callable(executor) -> current worker-thread count

    def __repr__(self):
        return self.name


def tpe_threads(ex):
    return len(ex._threads)


def cmwq_workers(ex):
    return sum(p["workers"] for p in ex.runtime.stats())


def make_cmwq():
    # A fresh runtime per measurement: its pools start empty, so peak workers is this run's.
    return cmwq.Workqueue("bench", runtime=cmwq.Runtime())


def peers():
    return [
        Peer("cmwq", make_cmwq, lambda s: cmwq.blocking(time.sleep, s), cmwq_workers),
        Peer("cmwq (plain sleep)", make_cmwq, time.sleep, cmwq_workers),
        Peer(f"ThreadPoolExecutor() ({min(32, (os.cpu_count() or 1) + 4)} workers)",
             cf.ThreadPoolExecutor, time.sleep, tpe_threads),
        Peer("ThreadPoolExecutor(max_workers=2)", lambda: cf.ThreadPoolExecutor(2), time.sleep,
             tpe_threads),
        Peer("asyncio.to_thread", None, time.sleep, None),
    ]


# ---------------------------------------------------------------- scenarios


def latency(peer, samples):
    out = []
    if peer.make is None:
        async def main():
            for _ in range(samples):
                t0 = time.perf_counter()
                start = await asyncio.to_thread(time.perf_counter)
                out.append(start - t0)
                await asyncio.sleep(0.0005)
        asyncio.run(main())
    else:
        ex = peer.make()
        ex.submit(noop).result()  # warm: the first worker exists
        for _ in range(samples):
            t0 = time.perf_counter()
            start = ex.submit(time.perf_counter).result()
            out.append(start - t0)
            time.sleep(0.0005)  # let the worker go idle again
        ex.shutdown()
    out.sort()
    return {"p50_us": out[len(out) // 2] * 1e6, "p99_us": out[int(len(out) * 0.99)] * 1e6}


def throughput(peer, n):
    if peer.make is None:
        async def main():
            await asyncio.gather(*(asyncio.to_thread(noop) for _ in range(n)))
        t0 = time.perf_counter()
        asyncio.run(main())
        return {"items_per_s": n / (time.perf_counter() - t0)}
    ex = peer.make()
    ex.submit(noop).result()
    t0 = time.perf_counter()
    futs = [ex.submit(noop) for _ in range(n)]
    t1 = time.perf_counter()
    cf.wait(futs)
    t2 = time.perf_counter()
    ex.shutdown()
    return {"items_per_s": n / (t2 - t0), "submit_us": (t1 - t0) / n * 1e6}


def mixed(peer, n, burn_s, sleep_s):
    sleeper = peer.sleeper

    def item():
        burn(burn_s)
        sleeper(sleep_s)

    ideal = n * burn_s + sleep_s
    if peer.make is None:
        peak = [0]

        async def main():
            loop = asyncio.get_running_loop()
            tasks = [asyncio.ensure_future(asyncio.to_thread(item)) for _ in range(n)]
            while not all(t.done() for t in tasks):
                await asyncio.sleep(0.005)
                ex = loop._default_executor
                if ex is not None:
                    peak[0] = max(peak[0], len(ex._threads))
            await asyncio.gather(*tasks)

        t0 = time.perf_counter()
        asyncio.run(main())
        makespan = time.perf_counter() - t0
        return {"makespan_s": makespan, "x_ideal": makespan / ideal, "peak_threads": peak[0]}
    ex = peer.make()
    peak = 0
    t0 = time.perf_counter()
    futs = [ex.submit(item) for _ in range(n)]
    pending = set(futs)
    while pending:
        _, pending = cf.wait(pending, timeout=0.005)
        peak = max(peak, peer.workers(ex))
    makespan = time.perf_counter() - t0
    for f in futs:
        f.result()
    ex.shutdown()
    return {"makespan_s": makespan, "x_ideal": makespan / ideal, "peak_threads": peak}


# ---------------------------------------------------------------- driver


def run(rounds, scenario, fn, only=None):
    ps = [p for p in peers() if only is None or p.name.split(" (")[0] in only or p.name in only]
    results = {p.name: [] for p in ps}
    for r in range(rounds):
        order = ps[r % len(ps):] + ps[: r % len(ps)]
        for p in order:
            results[p.name].append(fn(p))
        print(f"  {scenario}: round {r + 1}/{rounds} done", file=sys.stderr)
    return {name: {k: statistics.median(row[k] for row in rows) for k in rows[0]}
            for name, rows in results.items()}


def table(title, rows, columns, baseline=None, key=None, higher_is_better=True):
    print(f"\n### {title}\n")
    head = "| peer | " + " | ".join(c for c, _ in columns)
    if baseline:
        head += f" | vs {baseline}"
    print(head + " |")
    print("|" + "---|" * (len(columns) + 1 + (1 if baseline else 0)))
    for name, vals in rows.items():
        cells = [fmt.format(vals[c]) if c in vals else "—" for c, fmt in columns]
        line = f"| {name} | " + " | ".join(cells)
        if baseline:
            b = rows[baseline][key]
            ratio = vals[key] / b if higher_is_better else b / vals[key]
            line += f" | {ratio:.2f}x"
        print(line + " |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few rounds and small sizes (smoke run)")
    ap.add_argument("--scenarios", default="latency,throughput,mixed",
                    help="comma-separated subset of latency,throughput,mixed (default: all)")
    ap.add_argument("--peers", default=None,
                    help="comma-separated peer names to run (a name before ' (' selects it), "
                         "e.g. 'cmwq,ThreadPoolExecutor()'; the ThreadPoolExecutor() baseline is "
                         "always kept")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per scenario")
    ap.add_argument("--tiny", type=int, default=None, help="items in the throughput scenario")
    args = ap.parse_args()
    scenarios = set(args.scenarios.split(","))
    unknown = scenarios - {"latency", "throughput", "mixed"}
    if unknown:
        ap.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    rounds = args.rounds or (2 if args.quick else 5)
    n_tiny = args.tiny or (10_000 if args.quick else 100_000)
    n_lat = 200 if args.quick else 2000
    n_mixed, burn_s, sleep_s = (100, 0.001, 0.02) if args.quick else (400, 0.001, 0.02)

    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"{platform.machine()}, cmwq detector line: "
          + next((ln.strip() for ln in cmwq.dump().splitlines() if "detector" in ln.lower()), "?"))
    base = next(p.name for p in peers() if p.name.startswith("ThreadPoolExecutor()"))

    only = None
    if args.peers:
        only = set(args.peers.split(",")) | {base}
        names = {p.name for p in peers()} | {p.name.split(" (")[0] for p in peers()}
        if only - names:
            ap.error(f"unknown peers: {', '.join(sorted(only - names))}")

    if "latency" in scenarios:
        lat = run(rounds, "latency", lambda p: latency(p, n_lat), only)
        table(f"submit-to-start latency ({n_lat} sequential items, median of {rounds} rounds)", lat,
              [("p50_us", "{:.1f} µs"), ("p99_us", "{:.1f} µs")], base, "p50_us", False)

    if "throughput" in scenarios:
        thr = run(rounds, "throughput",
                  lambda p: throughput(p, n_tiny if p.make is not None else max(n_tiny // 5, 1000)), only)
        table(f"throughput of {n_tiny} tiny callables (asyncio.to_thread: {max(n_tiny // 5, 1000)}), "
              f"median of {rounds} rounds", thr,
              [("items_per_s", "{:,.0f}/s"), ("submit_us", "{:.2f} µs")], base, "items_per_s", True)

    if "mixed" in scenarios:
        mix_rounds = args.rounds or max(rounds - 2, 2)
        mix = run(mix_rounds, "mixed", lambda p: mixed(p, n_mixed, burn_s, sleep_s), only)
        table(f"mixed: {n_mixed} items of {burn_s * 1e3:g} ms pure-Python burn + {sleep_s * 1e3:g} ms "
              f"sleep (ideal {n_mixed * burn_s + sleep_s:.3f} s), median of {mix_rounds} rounds", mix,
              [("makespan_s", "{:.3f} s"), ("x_ideal", "{:.2f}x"), ("peak_threads", "{:.0f}")])

if __name__ == "__main__":
    main()
