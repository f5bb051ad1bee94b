from datetime import datetime, timezone

import pytest

from celery_tenant_gate.model.states import (
    State,
    StateDocumentError,
    parse_state_document,
    parse_timestamp,
)

ALL_STATES = [
    ("Unknown", 0, State.UNKNOWN),
    ("Provisioning", 1, State.PROVISIONING),
    ("Running", 2, State.RUNNING),
    ("Deleted", 3, State.DELETED),
    ("Suspended", 4, State.SUSPENDED),
    ("OnlineMaintenance", 5, State.ONLINE_MAINTENANCE),
    ("OfflineMaintenance", 6, State.OFFLINE_MAINTENANCE),
    ("ProvisioningFailed", 8, State.PROVISIONING_FAILED),
    ("Deleting", 10, State.DELETING),
    ("DeleteFailed", 11, State.DELETE_FAILED),
    ("MigrationPending", 12, State.MIGRATION_PENDING),
]


@pytest.mark.parametrize(("name", "number", "state"), ALL_STATES)
def test_every_state_reads_by_name_and_number(name: str, number: int, state: State) -> None:
    assert State.parse(name) is state
    assert State.parse(name.upper()) is state
    assert State.parse(number) is state
    assert State.parse(str(number)) is state
    assert state.api_name == name


@pytest.mark.parametrize(("name", "number", "state"), ALL_STATES)
def test_only_running_and_online_maintenance_are_running(
    name: str, number: int, state: State
) -> None:
    assert state.is_running == (name in {"Running", "OnlineMaintenance"})


@pytest.mark.parametrize("value", ["Exploded", 7, 9, 99, -5, "", None, True, 2.0, [], {}])
def test_unknown_states_are_unrecognised_and_not_running(value: object) -> None:
    state = State.parse(value)
    assert state is State.UNRECOGNISED
    assert not state.is_running


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2020-10-05T09:52:01.9342965Z", datetime(2020, 10, 5, 9, 52, 1, 934296, timezone.utc)),
        ("2020-10-05T09:52:01Z", datetime(2020, 10, 5, 9, 52, 1, tzinfo=timezone.utc)),
        ("2020-10-05T09:52:01.5z", datetime(2020, 10, 5, 9, 52, 1, 500000, timezone.utc)),
        ("2020-10-05T11:52:01.1+02:00", datetime(2020, 10, 5, 9, 52, 1, 100000, timezone.utc)),
        ("2020-10-05T04:52:01-0500", datetime(2020, 10, 5, 9, 52, 1, tzinfo=timezone.utc)),
        ("2020-10-05T09:52:01", datetime(2020, 10, 5, 9, 52, 1, tzinfo=timezone.utc)),
        ("2020-10-05T09:52", datetime(2020, 10, 5, 9, 52, tzinfo=timezone.utc)),
    ],
)
def test_timestamps_as_dotnet_writes_them(text: str, expected: datetime) -> None:
    assert parse_timestamp(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "tomorrow",
        "2020-13-05T09:52:01Z",
        "2020-10-05",
        "2020-10-05T25:00:00Z",
        "2020-10-05T09:52:01.93Q",
        "0001-01-01T00:00:00+05:00",
    ],
)
def test_malformed_timestamps_are_value_errors_naming_the_text(text: str) -> None:
    with pytest.raises(ValueError, match="timestamp"):
        parse_timestamp(text)


DOC = {
    "ContextIdentifier": "Cust12345",
    "Endpoint": "https://online3.superoffice.com/Cust12345",
    "State": "Running",
    "IsRunning": True,
    "ValidUntil": "2020-10-05T09:52:01.9342965Z",
    "Api": "https://online3.superoffice.com/Cust12345/api",
}


def test_a_full_document() -> None:
    state = parse_state_document(DOC)
    assert state.context_id == "Cust12345"
    assert state.state is State.RUNNING
    assert state.running
    assert state.valid_until == datetime(2020, 10, 5, 9, 52, 1, 934296, timezone.utc)
    assert state.endpoint == "https://online3.superoffice.com/Cust12345"
    assert state.api == "https://online3.superoffice.com/Cust12345/api"


def test_state_as_a_number() -> None:
    assert parse_state_document({**DOC, "State": 6, "IsRunning": False}).state is (
        State.OFFLINE_MAINTENANCE
    )


@pytest.mark.parametrize(
    "doc",
    [
        {**DOC, "State": "Melting"},
        {**DOC, "State": 42},
        {k: v for k, v in DOC.items() if k != "State"},
    ],
)
def test_missing_or_unknown_state_is_not_running(doc: dict[str, object]) -> None:
    doc = {k: v for k, v in doc.items() if k != "IsRunning"}
    state = parse_state_document(doc)
    assert state.state is State.UNRECOGNISED
    assert not state.running


def test_is_running_false_wins_over_a_running_state() -> None:
    assert not parse_state_document({**DOC, "IsRunning": False}).running


def test_is_running_is_derived_when_absent() -> None:
    doc = {k: v for k, v in DOC.items() if k != "IsRunning"}
    assert parse_state_document(doc).running
    assert not parse_state_document({**doc, "State": "Suspended"}).running


def test_malformed_valid_until_reads_as_absent() -> None:
    assert parse_state_document({**DOC, "ValidUntil": "soon"}).valid_until is None


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ([], "JSON object"),
        ("Running", "JSON object"),
        ({**DOC, "ContextIdentifier": ""}, "ContextIdentifier"),
        ({k: v for k, v in DOC.items() if k != "ContextIdentifier"}, "ContextIdentifier"),
        ({**DOC, "State": ["Running"]}, "State"),
        ({**DOC, "IsRunning": "yes"}, "IsRunning"),
        ({**DOC, "Endpoint": 3}, "Endpoint"),
        ({**DOC, "ValidUntil": 1601891521}, "ValidUntil"),
    ],
)
def test_wrong_shapes_name_the_field(doc: object, field: str) -> None:
    with pytest.raises(StateDocumentError, match=field):
        parse_state_document(doc)
