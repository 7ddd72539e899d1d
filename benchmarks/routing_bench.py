"""Routing benchmark: subscription-trie match rate and fan-out.

Builds a trie of realistic IoT subscriptions (each device subscribes to its own
command tree and config topic; dashboards and services use ``+``/``#`` and shared
subscriptions), then measures ``match()`` per second on topics devices publish to:

* uncached: ``match_uncached`` (a full trie walk every time), over many distinct topics;
* cached: ``match`` on a warm working set of topics (the steady state of a fleet
  that publishes to the same topics again and again);
* fan-out: one topic matched by 100 subscribers (100 clients on one filter and
  100 clients spread over overlapping filters).

Usage::

    .venv/bin/python benchmarks/routing_bench.py            # 10k and 100k subscriptions
    .venv/bin/python benchmarks/routing_bench.py --full     # also 1M (several GB, minutes)
    .venv/bin/python benchmarks/routing_bench.py --sizes 50000
"""

from __future__ import annotations

import argparse
import gc
import random
import resource
import time
from collections.abc import Callable

from iotbroker.core.subscriptions import SubscriptionEntry, SubscriptionTrie

DEVICES_PER_SITE = 100


def build(n_subs: int, rng: random.Random) -> tuple[SubscriptionTrie, int, int]:
    """A trie with about ``n_subs`` subscriptions; returns (trie, sites, devices/site)."""
    # Per device: "site/{s}/device/{d}/cmd/#" and "site/{s}/device/{d}/config" (2 subs).
    # Per site: 3 dashboard subs ("site/{s}/device/+/temp", "site/{s}/#",
    # "site/{s}/device/+/alarm/+"). Global: a few services.
    sites = max(1, n_subs // (2 * DEVICES_PER_SITE + 3))
    trie = SubscriptionTrie()
    add = trie.add
    for s in range(sites):
        for d in range(DEVICES_PER_SITE):
            cid = f"dev-{s}-{d}"
            add(SubscriptionEntry(cid, f"site/{s}/device/{d}/cmd/#", 1))
            add(SubscriptionEntry(cid, f"site/{s}/device/{d}/config", 1))
        dash = f"dashboard-{s}"
        add(SubscriptionEntry(dash, f"site/{s}/device/+/temp", 0))
        add(SubscriptionEntry(dash, f"site/{s}/#", 0, subscription_identifier=s + 1))
        add(SubscriptionEntry(dash, f"site/{s}/device/+/alarm/+", 1))
    for i in range(4):
        add(SubscriptionEntry(f"historian-{i}", "site/+/device/+/temp", 1))
        add(
            SubscriptionEntry(
                f"ingest-{i}",
                "$share/ingest/site/+/device/+/telemetry",
                1,
                share_group="ingest",
            )
        )
    add(SubscriptionEntry("monitor", "$SYS/#", 0))
    return trie, sites, DEVICES_PER_SITE


def device_topics(sites: int, devices: int, n: int, rng: random.Random) -> list[str]:
    kinds = ["temp", "telemetry", "status", "alarm/high", "cmd/reboot"]
    return [
        f"site/{rng.randrange(sites)}/device/{rng.randrange(devices)}/{rng.choice(kinds)}"
        for _ in range(n)
    ]


def rate(fn: Callable[[str], object], topics: list[str], min_seconds: float = 0.5) -> float:
    """Calls per second of ``fn`` over ``topics`` (repeated until ``min_seconds``)."""
    calls = 0
    gc.disable()
    try:
        start = time.perf_counter()
        elapsed = 0.0
        while elapsed < min_seconds:
            for t in topics:
                fn(t)
            calls += len(topics)
            elapsed = time.perf_counter() - start
    finally:
        gc.enable()
    return calls / elapsed


def bench_size(n_subs: int, seconds: float) -> None:
    rng = random.Random(n_subs)
    t0 = time.perf_counter()
    trie, sites, devices = build(n_subs, rng)
    build_s = time.perf_counter() - t0
    print(
        f"\n== {len(trie):,} subscriptions ({sites:,} sites x {devices} devices); "
        f"built in {build_s:.2f} s ({len(trie) / build_s:,.0f} adds/s)"
    )
    uncached_topics = device_topics(sites, devices, 20_000, rng)
    avg = (
        sum(
            sum(len(v) for v in trie.match_uncached(t).direct.values())
            + sum(len(mem) for _, _, mem in trie.match_uncached(t).shared)
            for t in uncached_topics[:1000]
        )
        / 1000
    )
    print(f"   avg matching subscriptions per topic: {avg:.1f}")
    r = rate(trie.match_uncached, uncached_topics, seconds)
    print(f"   uncached match:            {r:>12,.0f} matches/s  ({1e6 / r:.2f} us)")
    # A working set of 10k hot topics, warmed into the cache.
    hot = device_topics(sites, devices, 10_000, rng)
    for t in hot:
        trie.match(t)
    r = rate(trie.match, hot, seconds)
    print(f"   cached match (10k hot):    {r:>12,.0f} matches/s  ({1e6 / r:.3f} us)")
    # 250k distinct topics once each through match(): walk + cache insert +
    # generation turnover (the cache holds 100k per generation).
    cold = [
        f"site/{rng.randrange(sites)}/device/{rng.randrange(devices)}/sensor/{k}"
        for k in range(250_000)
    ]
    gc.disable()
    t0 = time.perf_counter()
    for t in cold:
        trie.match(t)
    r = len(cold) / (time.perf_counter() - t0)
    gc.enable()
    print(f"   match() on 250k new topics:{r:>12,.0f} matches/s  (miss + cache insert)")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"   peak RSS so far: {rss:,.0f} MiB")


def bench_fanout(seconds: float) -> None:
    print("\n== fan-out: 1 topic -> 100 subscribers")
    trie = SubscriptionTrie()
    for i in range(100):
        trie.add(SubscriptionEntry(f"c{i}", "fleet/alerts/critical", 1))
    topic = ["fleet/alerts/critical"]
    assert len(trie.match_uncached(topic[0]).direct) == 100
    r = rate(trie.match_uncached, topic, seconds)
    print(f"   one filter, uncached:      {r:>12,.0f} matches/s  ({1e6 / r:.2f} us)")
    r = rate(trie.match, topic, seconds)
    print(f"   one filter, cached:        {r:>12,.0f} matches/s")

    trie = SubscriptionTrie()
    spread = ["fleet/alerts/critical", "fleet/alerts/+", "fleet/#", "+/alerts/#", "#"]
    for i in range(100):
        trie.add(SubscriptionEntry(f"c{i}", spread[i % len(spread)], 1))
        trie.add(SubscriptionEntry(f"c{i}", "fleet/+/critical", 0))  # overlap per client
    m = trie.match_uncached(topic[0])
    assert len(m.direct) == 100
    assert sum(len(v) for v in m.direct.values()) == 200
    r = rate(trie.match_uncached, topic, seconds)
    print(f"   6 filters, 200 subs, uncached: {r:>8,.0f} matches/s  ({1e6 / r:.2f} us)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="also run 1,000,000 subscriptions")
    parser.add_argument(
        "--sizes", type=int, nargs="+", help="subscription counts (default 10000 100000)"
    )
    parser.add_argument("--seconds", type=float, default=0.5, help="time per measurement")
    args = parser.parse_args()
    sizes = args.sizes or [10_000, 100_000]
    if args.full and 1_000_000 not in sizes:
        sizes.append(1_000_000)
    start = time.perf_counter()
    for n in sizes:
        bench_size(n, args.seconds)
        gc.collect()
    bench_fanout(args.seconds)
    print(f"\ntotal {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
