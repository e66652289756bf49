"""Kafka's murmur2 partitioner as a pure function: the Java client's own test vectors."""

from __future__ import annotations

import pytest

from polymarket_kafka.kafka.partition import murmur2, partition_for

# org.apache.kafka.common.utils.UtilsTest.testMurmur2 (signed, as Java returns them).
JAVA_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("data", "expected"), JAVA_VECTORS.items(), ids=repr)
def test_murmur2_matches_the_java_client(data: bytes, expected: int) -> None:
    assert murmur2(data) == expected


def test_partition_is_the_positive_hash_modulo_the_partition_count() -> None:
    # Java: Utils.toPositive(Utils.murmur2(key)) % numPartitions.
    assert partition_for(b"21", 7) == (-973932308 & 0x7FFFFFFF) % 7
    assert partition_for(b"abc", 4) == 479470107 % 4
    assert {partition_for(bytes([i]), 1) for i in range(256)} == {0}


def test_every_tail_length_is_hashed() -> None:
    # 0..3 trailing bytes after the 4-byte blocks take different branches.
    hashes = {murmur2(b"x" * n) for n in range(9)}
    assert len(hashes) == 9
    assert all(-(2**31) <= h < 2**31 for h in hashes)


def test_partitions_must_be_positive() -> None:
    with pytest.raises(ValueError, match="partitions must be >= 1"):
        partition_for(b"k", 0)
