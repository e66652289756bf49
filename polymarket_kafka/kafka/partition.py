"""Which partition a key lands on: Kafka's murmur2 partitioner, as a pure function.

The Java client's default partitioner, kafka-python's and librdkafka's `murmur2_random` (the
producer setting of this service, `settings.PARTITIONER`) all place a keyed message on
`(murmur2(key) & 0x7fffffff) % partitions`. librdkafka's own default (`consistent_random`,
CRC32) does not, which is why the producer sets `murmur2_random`: a market's events land on
the same partition whichever client computes it. This module lets tests (and, later, shard
ownership) compute the same placement without a broker.
"""

from __future__ import annotations

__all__ = ["MarketPartitions", "murmur2", "partition_for"]

_MASK = 0xFFFFFFFF
_SEED = 0x9747B28C
_M = 0x5BD1E995
_R = 24


def murmur2(data: bytes) -> int:
    """Kafka's 32-bit murmur2 of `data` as the Java client returns it (a signed int)."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> _R
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = data[whole:]
    if len(tail) == 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h ^= tail[0]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(key: bytes, partitions: int) -> int:
    """The partition of a keyed message among `partitions` (the murmur2 partitioner)."""
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class MarketPartitions:
    """The partition of each market id (its UTF-8 bytes as the key), memoised: murmur2 in
    Python costs about 20 us a key, and a market is looked up on every snapshot and event.
    At most `max_memo` ids are remembered (then the memo starts over)."""

    def __init__(self, partitions: int, max_memo: int = 200_000) -> None:
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        self.partitions = partitions
        self._max_memo = max_memo
        self._memo: dict[str, int] = {}

    def __call__(self, market_id: str) -> int:
        partition = self._memo.get(market_id)
        if partition is None:
            if len(self._memo) >= self._max_memo:
                self._memo.clear()
            partition = self._memo[market_id] = partition_for(market_id.encode(), self.partitions)
        return partition

    def __len__(self) -> int:
        return len(self._memo)
