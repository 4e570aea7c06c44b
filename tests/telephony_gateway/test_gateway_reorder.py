"""The reorder window (pure): in-order release, bounded holding, duplicates and late arrivals."""

from __future__ import annotations

import pytest

from telephony_gateway.reorder import Reorderer


def feed(r: Reorderer, seqs):
    out, drops = [], []
    for s in seqs:
        ready, dropped = r.push(s, s)
        out += ready
        if dropped:
            drops.append((s, dropped))
    return out, drops


def test_in_order_messages_pass_straight_through():
    r = Reorderer(4, next_seq=2)
    out, drops = feed(r, [2, 3, 4, 5])
    assert out == [2, 3, 4, 5] and drops == [] and r.held == 0
    assert r.stats.reordered == 0


def test_a_swapped_pair_is_put_back_in_order_and_counted():
    r = Reorderer(4, next_seq=2)
    out, drops = feed(r, [2, 4, 3, 5])
    assert out == [2, 3, 4, 5] and drops == []
    assert r.stats.reordered == 1 and r.stats.skipped == 0


def test_a_hole_older_than_the_window_is_given_up_and_a_late_arrival_is_dropped():
    r = Reorderer(3, next_seq=1)
    out, _ = feed(r, [1, 3, 4, 5])  # 2 missing: held 3, 4, 5 (= window) still waiting
    assert out == [1] and r.held == 3
    out, _ = feed(r, [6])  # the window overflows: 2 is given up
    assert out == [3, 4, 5, 6] and r.stats.skipped == 1
    out, drops = feed(r, [2])
    assert out == [] and drops == [(2, "late")] and r.stats.late == 1


def test_duplicates_are_dropped_whether_released_or_still_held():
    r = Reorderer(8, next_seq=1)
    out, drops = feed(r, [1, 1, 3, 3, 2])
    assert out == [1, 2, 3]
    assert drops == [(1, "duplicate"), (3, "duplicate")] and r.stats.duplicates == 2


def test_flush_releases_what_is_held_in_order_and_counts_the_holes():
    r = Reorderer(16, next_seq=1)
    out, _ = feed(r, [1, 4, 3, 7])
    assert out == [1]
    assert r.flush() == [3, 4, 7]
    assert r.stats.skipped == 3  # 2, 5, 6
    assert r.held == 0


def test_memory_is_bounded_by_the_window():
    r = Reorderer(5, next_seq=1)
    feed(r, range(2, 1000))  # 1 never comes
    assert r.held <= 5


def test_window_must_be_positive():
    with pytest.raises(ValueError):
        Reorderer(0)
