"""The e2e suite's reading of ``ctr events`` timestamps, in containerd 1.6's and 1.7's forms."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.e2e.containerd_versions import (
    BEHAVIOURS,
    SUPPORTED_RELEASES,
    event_timestamp_form,
    parse_event_timestamp,
)

EXIT_TIME = datetime(2023, 11, 14, 22, 13, 20, 120_000, tzinfo=UTC)


def test_rfc3339_form_of_1_6() -> None:
    assert event_timestamp_form("2023-11-14T22:13:20.12Z") == "rfc3339"
    assert parse_event_timestamp("2023-11-14T22:13:20.12Z") == EXIT_TIME
    assert parse_event_timestamp("2023-11-14T22:13:20Z") == EXIT_TIME.replace(microsecond=0)
    assert parse_event_timestamp("2023-11-14T22:13:20.120000999Z") == EXIT_TIME


def test_object_form_of_1_7() -> None:
    value = {"seconds": 1700000000, "nanos": 120_000_000}
    assert event_timestamp_form(value) == "object"
    assert parse_event_timestamp(value) == EXIT_TIME
    # encoding/json omits zero fields.
    assert parse_event_timestamp({"seconds": 1700000000}) == EXIT_TIME.replace(microsecond=0)
    assert parse_event_timestamp({}) == datetime(1970, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "value", ["2023-11-14 22:13:20 +0000 UTC", "2023-11-14T22:13:20+01:00", 1700000000,
              {"seconds": 1, "extra": 2}, None],
)
def test_other_forms_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="not a Timestamp"):
        parse_event_timestamp(value)


def test_every_supported_release_has_a_behaviour() -> None:
    assert set(BEHAVIOURS) == set(SUPPORTED_RELEASES)
    assert {behaviour.event_timestamp_form for behaviour in BEHAVIOURS.values()} == {
        "rfc3339", "object"
    }
