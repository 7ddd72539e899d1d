"""FailureLimiter: failed logins per key, fake clock (time is an argument)."""

from __future__ import annotations

from iotbroker.server.ratelimit import FailureLimiter


def test_blocks_after_limit_within_window_for_backoff() -> None:
    lim = FailureLimiter(limit=3, window=60, backoff=30)
    assert not lim.failed("a", 0) and not lim.failed("a", 1)
    assert not lim.blocked("a", 2)
    assert lim.failed("a", 2)  # the third failure starts the backoff
    assert lim.blocked("a", 2) and lim.blocked("a", 31.9)
    assert not lim.blocked("a", 32)
    assert not lim.blocked("b", 2)  # per key


def test_failures_outside_the_window_do_not_add_up() -> None:
    lim = FailureLimiter(limit=3, window=10, backoff=30)
    lim.failed("a", 0)
    lim.failed("a", 5)
    assert not lim.failed("a", 11)  # a new window: 1 failure
    assert not lim.blocked("a", 11)
    lim.failed("a", 12)
    assert lim.failed("a", 13)


def test_failures_while_blocked_do_not_extend_the_backoff() -> None:
    lim = FailureLimiter(limit=2, window=100, backoff=10)
    lim.failed("a", 0)
    assert lim.failed("a", 0)
    for t in range(1, 10):
        lim.failed("a", t)
    assert not lim.blocked("a", 10)


def test_success_forgets_and_zero_limit_never_blocks() -> None:
    lim = FailureLimiter(limit=2, window=100, backoff=10)
    lim.failed("a", 0)
    lim.succeeded("a")
    assert not lim.failed("a", 1)
    off = FailureLimiter(limit=0, window=100, backoff=10)
    assert not any(off.failed("a", 0) for _ in range(100))
    assert not off.blocked("a", 0) and len(off) == 0


def test_memory_is_bounded() -> None:
    lim = FailureLimiter(limit=5, window=10, backoff=10, max_keys=100)
    for i in range(1000):
        lim.failed(f"k{i}", i * 0.001)
    assert len(lim) <= 100
    lim.failed("blocked", 1)
    for _ in range(4):
        lim.failed("blocked", 1)
    assert lim.blocked("blocked", 2)
