"""Timestamps parse on every supported Python: ``datetime.fromisoformat``
refuses corral's ``...Z`` (and fractions other than 3 or 6 digits) before 3.11."""

from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone

import pytest
from helpers import Corral

from corral_client import SpawnRequest, parse_timestamp

UTC = timezone.utc


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2026-12-07T00:35:15.405Z", datetime(2026, 12, 7, 0, 35, 15, 405000, UTC)),
        ("2026-12-07T00:35:15Z", datetime(2026, 12, 7, 0, 35, 15, 0, UTC)),
        ("2026-12-07t00:35:15z", datetime(2026, 12, 7, 0, 35, 15, 0, UTC)),
        ("2026-12-07T00:35:15.4Z", datetime(2026, 12, 7, 0, 35, 15, 400000, UTC)),
        ("2026-12-07T00:35:15.123456789Z", datetime(2026, 12, 7, 0, 35, 15, 123456, UTC)),
        ("2026-12-07T00:35:15,5Z", datetime(2026, 12, 7, 0, 35, 15, 500000, UTC)),
        ("2026-12-07 00:35:15.405+00:00", datetime(2026, 12, 7, 0, 35, 15, 405000, UTC)),
        ("2026-12-07T02:35:15+02:00", datetime(2026, 12, 7, 0, 35, 15, 0, UTC)),
        ("2026-12-06T19:05:15-0530", datetime(2026, 12, 7, 0, 35, 15, 0, UTC)),
        ("2026-12-07T00:35:15.405", datetime(2026, 12, 7, 0, 35, 15, 405000, UTC)),  # no offset: UTC
        ("2026-12-07T00:35Z", datetime(2026, 12, 7, 0, 35, 0, 0, UTC)),
    ],
)
def test_rfc3339_forms_parse_to_aware_datetimes(text: str, expected: datetime) -> None:
    parsed = parse_timestamp(text)
    assert parsed == expected
    assert parsed.tzinfo is not None


def test_the_offset_is_kept() -> None:
    parsed = parse_timestamp("2026-12-07T02:35:15+02:00")
    assert parsed.utcoffset() == timedelta(hours=2)


@pytest.mark.parametrize("text", ["", "yesterday", "2026-13-01T00:00:00Z", "2026-12-07T25:00:00Z", "2026-12-07"])
def test_what_is_not_a_timestamp_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not an RFC 3339 timestamp"):
        parse_timestamp(text)


@pytest.mark.skipif(sys.version_info >= (3, 11), reason="fromisoformat takes a trailing Z from Python 3.11 on")
def test_fromisoformat_would_refuse_them_here() -> None:
    # Why parse_timestamp exists: on this Python the standard parser fails on corral's timestamps.
    with pytest.raises(ValueError):
        datetime.fromisoformat("2026-12-07T00:35:15.405Z")


def test_the_daemons_timestamps_arrive_as_datetimes(corral: Corral) -> None:
    c = corral.client()
    before = datetime.now(UTC)
    c.spawn(SpawnRequest("ts.1", ["true"]))
    final = c.wait("ts.1", timeout_s=10)
    after = datetime.now(UTC)
    assert isinstance(final.started_at, datetime) and isinstance(final.ended_at, datetime)
    # The daemon's clock is this machine's; its timestamps are milliseconds.
    slack = timedelta(milliseconds=5)
    assert before - slack <= final.started_at <= final.ended_at <= after + slack
    (run,) = c.runs("ts.1")
    assert run.started_at == final.started_at and run.ended_at == final.ended_at
    events = [e for e in c.events(follow=False) if e.agent_id == "ts.1"]
    assert events and all(before - slack <= e.at <= after + slack for e in events)
