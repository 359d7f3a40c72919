"""Stride scheduling: service in proportion to priority, no hoarded credit, priority changes take effect."""
from __future__ import annotations

from services.task_executor.fairshare import StrideScheduler


def serve(s: StrideScheduler, rounds: int, eligible: list[int], work: int = 10) -> dict[int, int]:
    done = {t: 0 for t in eligible}
    for _ in range(rounds):
        t = s.pick(eligible)
        assert t is not None
        s.charge(t, work)
        done[t] += work
    return done


def test_proportional_to_priority() -> None:
    s = StrideScheduler()
    s.sync({1: 3, 2: 1})
    done = serve(s, 400, [1, 2])
    assert done[1] == 3 * done[2]


def test_three_tasks() -> None:
    s = StrideScheduler()
    s.sync({1: 5, 2: 3, 3: 2})
    done = serve(s, 1000, [1, 2, 3])
    assert (done[1], done[2], done[3]) == (5000, 3000, 2000)


def test_priority_change_applies_to_the_next_choices() -> None:
    s = StrideScheduler()
    s.sync({1: 1, 2: 1})
    serve(s, 100, [1, 2])
    s.sync({1: 1, 2: 4})
    done = serve(s, 500, [1, 2])
    assert abs(done[2] / done[1] - 4) < 0.05


def test_task_that_sat_out_gets_no_hoard_of_credit() -> None:
    s = StrideScheduler()
    s.sync({1: 1, 2: 1})
    serve(s, 100, [1])  # task 2 had no work for a while
    done = serve(s, 100, [1, 2])
    assert done[1] == done[2]


def test_new_task_joins_at_the_current_pass_and_removed_tasks_vanish() -> None:
    s = StrideScheduler()
    s.sync({1: 1})
    serve(s, 50, [1])
    s.sync({1: 1, 2: 1})
    assert s.passes()[2] == s.passes()[1]
    s.sync({2: 1})
    assert set(s.passes()) == {2}
    assert s.pick([1]) is None
