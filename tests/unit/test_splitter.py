"""Property tests of the splitting rules over random file sizes, event counts and rules."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.task_executor.splitter import InputFile, SplitError, split

file_lists = st.lists(
    st.builds(
        InputFile,
        lfn=st.uuids().map(str),
        size=st.integers(0, 5_000),
        events=st.integers(0, 500),
    ),
    max_size=200,
    unique_by=lambda f: f.lfn,
)
rules = st.sampled_from(["files", "bytes", "events"])


def measure(group: list[InputFile], by: str) -> int:
    return {"files": len(group), "bytes": sum(f.size for f in group), "events": sum(f.events or 0 for f in group)}[by]


@settings(max_examples=400, deadline=None)
@given(files=file_lists, by=rules, size=st.integers(1, 3_000), final=st.booleans())
def test_groups_partition_a_prefix_in_order(files, by, size, final) -> None:
    groups, consumed = split(files, by, size, final)
    flat = [f for g in groups for f in g]
    assert flat == files[:consumed]  # in order, none twice, none skipped
    assert all(groups)  # no empty job
    if final:
        assert consumed == len(files)  # a closed dataset leaves no file out


@settings(max_examples=400, deadline=None)
@given(files=file_lists, by=rules, size=st.integers(1, 3_000), final=st.booleans())
def test_groups_respect_the_rule(files, by, size, final) -> None:
    groups, consumed = split(files, by, size, final)
    complete = groups if not final or consumed == 0 else groups[:-1]
    for g in complete:
        if by == "files":
            assert len(g) == size
        elif by == "bytes":
            # fits, unless a single file is larger than the limit; and the next file would not have fitted
            assert measure(g, by) <= size or len(g) == 1
        else:
            assert measure(g, by) >= size and measure(g, by) - (g[-1].events or 0) < size
    if by == "bytes":
        assert all(measure(g, by) <= size or len(g) == 1 for g in groups)
        for g, nxt in zip(groups, groups[1:], strict=False):
            assert measure(g, by) + nxt[0].size > size  # each group is as full as the order allows
    if not final:
        # what is left over would not yet make a complete group
        rest = files[consumed:]
        if by == "files":
            assert len(rest) < size
        elif by == "events":
            assert measure(rest, by) < size
        else:
            assert measure(rest, by) < size or not rest


@settings(max_examples=200, deadline=None)
@given(files=file_lists, by=rules, size=st.integers(1, 3_000), cut=st.integers(0, 200))
def test_splitting_in_chunks_equals_splitting_at_once(files, by, size, cut) -> None:
    """A growing dataset read in two chunks gives the same jobs as the whole dataset read at once."""
    whole, _ = split(files, by, size, final=True)
    first, consumed = split(files[:cut], by, size, final=False)
    second, _ = split(files[consumed:], by, size, final=True)
    assert first + second == whole


def test_events_rule_needs_event_counts() -> None:
    with pytest.raises(SplitError, match="no_events.root"):
        split([InputFile("no_events.root", 10, None)], "events", 5, final=True)
    with pytest.raises(SplitError):
        split([], "files", 0, final=True)
