"""Token buckets for the connect-rate and per-client publish-rate limits; failed-login
limits per peer address and per username."""

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


class FailureLimiter:
    """Failures per key (a peer address, a username): after ``limit`` failures within
    ``window`` seconds the key is blocked for ``backoff`` seconds. ``limit`` 0: never.

    Bounded memory: at most ``max_keys`` keys are remembered; when full, keys whose
    window and backoff are over are dropped, then the oldest (down to 90 %). Time is an argument.
    """

    __slots__ = ("_keys", "backoff", "limit", "max_keys", "window")

    def __init__(self, limit: int, window: float, backoff: float,
                 max_keys: int = 100_000) -> None:
        self.limit = limit
        self.window = window
        self.backoff = backoff
        self.max_keys = max_keys
        # key -> [failures in the window, window start, blocked until]
        self._keys: dict[str, list[float]] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def blocked(self, key: str, now: float) -> bool:
        state = self._keys.get(key)
        return state is not None and now < state[2]

    def failed(self, key: str, now: float) -> bool:
        """Count a failure; True when it starts a backoff."""
        if not self.limit:
            return False
        state = self._keys.get(key)
        if state is None:
            if len(self._keys) >= self.max_keys:
                self._make_room(now)
            state = self._keys[key] = [0.0, now, 0.0]
        elif now - state[1] >= self.window:
            state[0], state[1] = 0.0, now
        state[0] += 1
        if state[0] >= self.limit and now >= state[2]:
            state[0], state[1], state[2] = 0.0, now, now + self.backoff
            return True
        return False

    def succeeded(self, key: str) -> None:
        """Forget ``key``'s failures (a correct password for this username)."""
        self._keys.pop(key, None)

    def _make_room(self, now: float) -> None:
        window = self.window
        stale = [k for k, (_, start, until) in self._keys.items()
                 if now - start >= window and now >= until]
        for key in stale:
            del self._keys[key]
        # Then the oldest, down to 90 % full: one scan per max_keys/10 new keys.
        keep = self.max_keys * 9 // 10
        while len(self._keys) > keep:
            del self._keys[next(iter(self._keys))]
