"""__transaction_state records (kstore.txnlog): the worked example of the module's docstring,
round trips, and damaged values refused with CorruptRecordError."""

from __future__ import annotations

import pytest

from kstore.errors import CorruptRecordError
from kstore.txnlog import (
    TxnMetadata,
    TxnStatus,
    decode_key,
    decode_value,
    encode_key,
    encode_value,
    txn_partition,
)

EXAMPLE = TxnMetadata("t1", 1000, 2, 60000, TxnStatus.ONGOING, {("orders", 0), ("orders", 3)},
                      1_700_000_000_000, 1_700_000_000_000)


def test_worked_example():
    assert encode_key("t1").hex() == "000000027431"
    assert encode_value(EXAMPLE).hex() == (
        "0000" "00000000000003e8" "0002" "0000ea60" "01" "00000001" "0006" "6f7264657273"
        "00000002" "00000000" "00000003" "0000018bcfe56800" "0000018bcfe56800")


@pytest.mark.parametrize("status", list(TxnStatus))
def test_round_trip(status):
    m = TxnMetadata("tx-é", 2**40, 32766, 900000, status, set(), 5, -1)
    assert decode_key(encode_key(m.transactional_id)) == m.transactional_id
    assert decode_value(m.transactional_id, encode_value(m)) == m
    assert decode_value("t1", encode_value(EXAMPLE)) == EXAMPLE


def test_partition_is_kafkas_hash():
    # Utils.abs("t1".hashCode()) % 50: "t1".hashCode() == 3645
    assert txn_partition("t1") == 3645 % 50


@pytest.mark.parametrize("cut", range(1, len(encode_value(EXAMPLE))))
def test_every_truncation_is_refused(cut):
    with pytest.raises(CorruptRecordError):
        decode_value("t1", encode_value(EXAMPLE)[:cut])


def test_unknown_versions_and_status_are_refused():
    v = bytearray(encode_value(EXAMPLE))
    with pytest.raises(CorruptRecordError):
        decode_value("t1", b"\x00\x01" + bytes(v[2:]))
    v[16] = 9  # the status byte
    with pytest.raises(CorruptRecordError):
        decode_value("t1", bytes(v))
    with pytest.raises(CorruptRecordError):
        decode_key(b"\x00\x01\x00\x00")
