"""A log-linear latency histogram in the manner of HdrHistogram (2 significant digits).

Values are integers (microseconds here). Values below 128 have a bucket each; above,
every power of two is split into 64 buckets, so a bucket's width is at most 1/64 of
its value (a relative error under 1.6 %). Percentiles report the highest value of the
bucket that holds them (HdrHistogram's "highest equivalent value"), capped at the
exact maximum. Histograms merge by adding their counts, across workers too.
"""

from __future__ import annotations

import math

_LINEAR = 128
_SUB = 64


def bucket_of(value: int) -> int:
    """The bucket index of a value >= 0."""
    if value < _LINEAR:
        return max(0, value)
    shift = value.bit_length() - 7
    return _LINEAR + (shift - 1) * _SUB + ((value >> shift) - _SUB)


def bucket_bounds(index: int) -> tuple[int, int]:
    """The lowest and highest value of a bucket."""
    if index < _LINEAR:
        return index, index
    k = index - _LINEAR
    shift = k // _SUB + 1
    mantissa = k % _SUB + _SUB
    return mantissa << shift, ((mantissa + 1) << shift) - 1


class Histogram:
    """Counts of values per log-linear bucket, plus the exact count, sum, min and max."""

    __slots__ = ("count", "counts", "max", "min", "total")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.count = 0
        self.total = 0
        self.min = 0
        self.max = 0

    def record(self, value: int) -> None:
        """Add one value (negative values count as 0)."""
        value = max(value, 0)
        if value < _LINEAR:
            index = value
        else:
            shift = value.bit_length() - 7
            index = _LINEAR + (shift - 1) * _SUB + ((value >> shift) - _SUB)
        counts = self.counts
        counts[index] = counts.get(index, 0) + 1
        if self.count == 0 or value < self.min:
            self.min = value
        self.max = max(self.max, value)
        self.count += 1
        self.total += value

    def merge(self, other: Histogram) -> None:
        """Add ``other``'s values to this histogram."""
        if other.count == 0:
            return
        counts = self.counts
        for index, n in other.counts.items():
            counts[index] = counts.get(index, 0) + n
        self.min = other.min if self.count == 0 else min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.count += other.count
        self.total += other.total

    def percentile(self, p: float) -> int:
        """The value at percentile ``p`` (0-100); 0 when empty."""
        if self.count == 0:
            return 0
        target = max(1, math.ceil(self.count * p / 100.0))
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= target:
                return min(bucket_bounds(index)[1], self.max)
        return self.max

    @property
    def mean(self) -> float:
        """The exact mean; 0 when empty."""
        return self.total / self.count if self.count else 0.0

    def summary_ms(self, scale: float = 1000.0) -> dict[str, float | int]:
        """count, min, mean, p50, p90, p99, p99.9, max in milliseconds (values are in µs)."""
        def ms(v: float) -> float:
            return round(v / scale, 3)

        return {
            "count": self.count,
            "min": ms(self.min),
            "mean": ms(self.mean),
            "p50": ms(self.percentile(50)),
            "p90": ms(self.percentile(90)),
            "p99": ms(self.percentile(99)),
            "p999": ms(self.percentile(99.9)),
            "max": ms(self.max),
        }

    def to_dict(self) -> dict[str, object]:
        """A picklable/JSON-able form (used between worker processes)."""
        return {"counts": dict(self.counts), "count": self.count, "total": self.total,
                "min": self.min, "max": self.max}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Histogram:
        """The inverse of :meth:`to_dict`."""
        h = cls()
        counts = data["counts"]
        assert isinstance(counts, dict)
        h.counts = {int(k): int(v) for k, v in counts.items()}
        h.count = int(data["count"])  # type: ignore[call-overload]
        h.total = int(data["total"])  # type: ignore[call-overload]
        h.min = int(data["min"])  # type: ignore[call-overload]
        h.max = int(data["max"])  # type: ignore[call-overload]
        return h
