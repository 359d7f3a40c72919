"""The WMS's pure rules, property-tested."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from common.policies import (
    FINAL_CATEGORIES,
    LOSS_CATEGORIES,
    MEMORY_CATEGORY,
    RESOURCE_TYPES,
    TASK_STATES_WHOSE_JOBS_PROCEED,
    RetryPolicy,
    job_state_for_task,
    memory_for_attempt,
    pilot_types_serving,
    resource_types_served,
)
from common.states import JOB_MACHINE, TASK_MACHINE, JobState, TaskState

policies = st.builds(RetryPolicy, st.floats(0, 100), st.floats(0, 1000), st.integers(1, 20))


def test_gpu_pilots_fall_back_to_cpu_work_cpu_pilots_never_take_gpu_work() -> None:
    assert resource_types_served("gpu") == ("gpu", "cpu")
    assert resource_types_served("cpu") == ("cpu",)
    for job_type in RESOURCE_TYPES:
        for pilot_type in RESOURCE_TYPES:
            assert (pilot_type in pilot_types_serving(job_type)) == (job_type in resource_types_served(pilot_type))


def test_jobs_follow_their_task() -> None:
    for state in TaskState:
        target = job_state_for_task(state)
        assert target in JOB_MACHINE.initial  # a chunk's jobs can be created in it
        assert (target == JobState.READY) == (state in TASK_STATES_WHOSE_JOBS_PROCEED)
        assert (target == JobState.CANCELLED) == (state in TASK_MACHINE.terminal or state == TaskState.CANCELLED)


@given(policies, st.integers(1, 50), st.integers(1, 50))
def test_payload_failures_are_bounded_by_max_attempts_not_counting_losses(policy, max_attempts, lost) -> None:
    # after `lost` losses, a job may still fail max_attempts - 1 times and be retried
    for payload_attempts in range(1, max_attempts + 2):
        decision = policy.decide(payload_attempts + lost, lost, max_attempts, "payload")
        assert decision.retry == (payload_attempts < max_attempts)
        assert decision.lost_attempts == lost


@given(policies, st.integers(0, 60), st.integers(1, 50), st.sampled_from(sorted(LOSS_CATEGORIES)))
def test_losses_have_their_own_budget(policy, lost_before, max_attempts, category) -> None:
    decision = policy.decide(lost_before + 1, lost_before, max_attempts, category)
    assert decision.lost_attempts == lost_before + 1
    assert decision.retry == (lost_before + 1 < policy.max_lost)  # whatever max_attempts says


@given(policies, st.integers(1, 100))
def test_backoff_doubles_and_is_capped(policy, count) -> None:
    assert 0 <= policy.backoff(count) <= max(policy.backoff_max_s, 0)
    assert policy.backoff(count) <= policy.backoff(count + 1) or policy.backoff(count) == policy.backoff_max_s
    assert policy.backoff(count) == min(policy.backoff_s * 2 ** (count - 1), policy.backoff_max_s)


@given(policies, st.integers(1, 50), st.integers(0, 10), st.sampled_from(sorted(FINAL_CATEGORIES)))
def test_errors_a_retry_cannot_mend_are_not_retried(policy, attempt, lost, category) -> None:
    assert not policy.decide(attempt + lost, lost, 100, category).retry


def test_every_error_category_has_a_rule() -> None:
    from typing import get_args

    from common.pilot_protocol import ErrorCategory

    categories = set(get_args(ErrorCategory))
    assert LOSS_CATEGORIES <= categories and FINAL_CATEGORIES <= categories
    assert not LOSS_CATEGORIES & FINAL_CATEGORIES


@given(policies, st.integers(1, 20), st.integers(0, 5), st.sampled_from([None, "payload", "timeout", "lost"]))
def test_a_memory_failure_is_retried_once_then_final(policy, attempt, lost, previous) -> None:
    """PanDA's rule: a job that went over its memory gets one more attempt (with more memory); a second memory
    failure in a row is final, whatever max_attempts allows."""
    first = policy.decide(attempt + lost, lost, 100, MEMORY_CATEGORY, previous)
    assert first.retry
    assert not policy.decide(attempt + lost + 1, lost, 100, MEMORY_CATEGORY, MEMORY_CATEGORY).retry


@given(st.integers(1, 2**20), st.floats(1, 16), st.sampled_from([None, "payload", "timeout", "memory"]))
def test_the_attempt_after_a_memory_failure_gets_more_memory(task_memory, factor, last_error) -> None:
    memory = memory_for_attempt(task_memory, last_error, factor)
    assert memory == (int(task_memory * factor) if last_error == "memory" else task_memory)
    assert memory >= task_memory
