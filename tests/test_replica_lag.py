"""Replica lag as app.storage.replicas measures it: against the primary's WAL positions over time."""

from __future__ import annotations

from app.storage.replicas import PrimaryWal, parse_lsn


def test_parse_lsn() -> None:
    assert parse_lsn("0/0") == 0
    assert parse_lsn("16/B374D848") == (0x16 << 32) + 0xB374D848
    assert parse_lsn(None) is None


def test_an_idle_primary_does_not_make_a_caught_up_replica_stale() -> None:
    wal = PrimaryWal(keep_s=60)
    for t in range(0, 100, 1):  # the primary sits at one position for 100 s
        wal.note(float(t), 1000)
    # the replica replayed up to that position; its last replayed commit is 100 s old
    assert wal.lag_s(100.0, replayed=1000, replay_age_s=100.0) == 0.0


def test_lag_is_the_age_of_the_oldest_wal_not_replayed() -> None:
    wal = PrimaryWal(keep_s=60)
    wal.note(0.0, 1000)
    wal.note(10.0, 2000)  # a write at t=10
    wal.note(12.0, 3000)  # another at t=12
    assert wal.lag_s(20.0, replayed=3000, replay_age_s=None) == 0.0
    assert wal.lag_s(20.0, replayed=2500, replay_age_s=None) == 8.0  # missing what appeared at t=12
    assert wal.lag_s(20.0, replayed=1500, replay_age_s=None) == 10.0  # missing what appeared at t=10
    assert wal.latest == 3000


def test_behind_the_oldest_known_position_the_replay_timestamp_bounds_the_lag() -> None:
    wal = PrimaryWal(keep_s=60)
    wal.note(0.0, 5000)  # the first check: the replica is already behind it
    assert wal.lag_s(0.5, replayed=4000, replay_age_s=300.0) == 300.0
    assert wal.lag_s(0.5, replayed=4000, replay_age_s=None) == 0.5


def test_old_positions_are_forgotten_but_the_floor_stays() -> None:
    wal = PrimaryWal(keep_s=5)
    for t in range(20):
        wal.note(float(t), 1000 * (t + 1))
    assert len(wal.samples) <= 7
    # a replica stuck before every retained position is at least as old as the oldest one kept
    assert wal.lag_s(20.0, replayed=0, replay_age_s=None) >= 5.0
