"""Token buckets for the connect-rate and per-client publish-rate limits."""

from __future__ import annotations


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst`` (default: one second's worth)."""

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, now: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self._tokens = self.burst
        self._stamp = now

    def take(self, now: float, amount: float = 1.0) -> float:
        """Take ``amount`` tokens; returns 0 when allowed, else seconds until it would be
        (the tokens are taken anyway: the caller waits that long)."""
        tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        tokens -= amount
        self._tokens = tokens
        return 0.0 if tokens >= 0 else -tokens / self.rate

    def try_take(self, now: float, amount: float = 1.0) -> bool:
        """Take ``amount`` tokens only if they are there."""
        tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if tokens < amount:
            self._tokens = tokens
            return False
        self._tokens = tokens - amount
        return True
