"""parse_notification: a good body becomes a Notification; a bad one names its field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from celery_tenant_gate.model.errors import TenantGateError
from celery_tenant_gate.model.ids import compile_pattern
from celery_tenant_gate.model.notification import (
    BadNotification,
    ChangeType,
    Notification,
    parse_notification,
)


def body(**fields: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "ChangeType": 5,
        "ContextIdentifier": "Cust12345",
        "VersionName": "Release 10.3.8",
        "FileVersion": "10.3.8.2024",
        "Token": "eyJ.a.b",
        "PublicEndpoint": "online3.superoffice.com",
    }
    document.update(fields)
    return {name: value for name, value in document.items() if value is not ...}


def parse(document: Any) -> Notification:
    return parse_notification(json.dumps(document).encode())


def rejected(raw: bytes, **kwargs: Any) -> BadNotification:
    with pytest.raises(BadNotification) as caught:
        parse_notification(raw, **kwargs)
    assert caught.value.status == 400
    return caught.value


def test_a_full_notification_is_parsed() -> None:
    assert parse(body()) == Notification(
        change_type=ChangeType.Move,
        context_id="Cust12345",
        version_name="Release 10.3.8",
        file_version="10.3.8.2024",
        token="eyJ.a.b",
        public_endpoint="online3.superoffice.com",
    )


def test_optional_fields_may_be_missing_or_null() -> None:
    parsed = parse(body(VersionName=..., FileVersion=None, PublicEndpoint=...))
    assert (parsed.version_name, parsed.file_version, parsed.public_endpoint) == ("", "", "")
    assert parse(body(PublicEndpoint="")).public_endpoint == ""


def test_unknown_fields_are_ignored() -> None:
    assert parse(body(Extra={"new": [1, 2]})).context_id == "Cust12345"


@pytest.mark.parametrize("number", [0, 1, 2, 3, 4, 5])
def test_every_change_type_is_known(number: int) -> None:
    assert parse(body(ChangeType=number)).change_type == number


def test_change_type_names_match_superoffice() -> None:
    assert [member.name for member in ChangeType] == [
        "Upgrade",
        "BackupRestored",
        "Suspend",
        "Resume",
        "Delete",
        "Move",
    ]


def test_the_error_is_a_tenant_gate_error() -> None:
    assert issubclass(BadNotification, TenantGateError)


@pytest.mark.parametrize(
    "raw",
    [b"", b"not json", b"{", b"\xff\xfe{}", b'{"ChangeType": NaN}', b"[]", b"null", b'"x"', b"3"],
)
def test_a_body_that_is_not_a_json_object_is_refused(raw: bytes) -> None:
    assert rejected(raw).field is None


def test_nesting_deeper_than_eight_levels_is_refused() -> None:
    deep: Any = 1
    for _ in range(9):
        deep = {"a": deep}
    assert "deeper than 8" in str(rejected(json.dumps(deep).encode()))
    assert "deeper than 8" in str(rejected(b"[" * 50_000 + b"]" * 50_000))
    # Eight levels, the body object included, are fine.
    ok: Any = 1
    for _ in range(7):
        ok = {"a": ok}
    assert parse(body(Extra=ok)).context_id == "Cust12345"
    assert "deeper than 8" in str(rejected(json.dumps(body(Extra={"b": ok})).encode()))


@pytest.mark.parametrize("value", [6, -1, 99, True, False, 2.0, "2", "Suspend", None, [2], {}])
def test_an_unknown_change_type_is_refused(value: Any) -> None:
    document = body(ChangeType=value)
    assert rejected(json.dumps(document).encode()).field == "ChangeType"


def test_a_missing_change_type_is_refused() -> None:
    assert rejected(json.dumps(body(ChangeType=...)).encode()).field == "ChangeType"


@pytest.mark.parametrize(
    "value", [..., None, "", 12345, "Cust", "cust12345", "Cust1 ", "Cust1/../x", "C" * 100]
)
def test_a_missing_or_malformed_context_identifier_is_refused(value: Any) -> None:
    error = rejected(json.dumps(body(ContextIdentifier=value)).encode())
    assert error.field == "ContextIdentifier"
    assert "ContextIdentifier" in str(error)


def test_a_configured_tenant_id_pattern_is_used() -> None:
    raw = json.dumps(body(ContextIdentifier="Acme7")).encode()
    assert parse_notification(raw, pattern=compile_pattern(r"Acme[0-9]+")).context_id == "Acme7"
    assert rejected(raw).field == "ContextIdentifier"


@pytest.mark.parametrize("value", [42, ["eyJ"], {}])
def test_a_token_of_the_wrong_type_is_refused(value: Any) -> None:
    assert rejected(json.dumps(body(Token=value)).encode()).field == "Token"


@pytest.mark.parametrize("value", [..., None, ""])
def test_a_missing_token_reads_as_empty_for_the_receiver_to_refuse(value: Any) -> None:
    assert parse_notification(json.dumps(body(Token=value)).encode()).token == ""


@pytest.mark.parametrize("field", ["VersionName", "FileVersion", "PublicEndpoint"])
@pytest.mark.parametrize("value", [1, True, [], {}])
def test_text_fields_of_the_wrong_type_are_refused(field: str, value: Any) -> None:
    assert rejected(json.dumps(body(**{field: value})).encode()).field == field


@pytest.mark.parametrize(
    "value",
    [
        "https://online3.superoffice.com",
        "online3.superoffice.com:443",
        "online3.superoffice.com/Cust1",
        "user@online3.superoffice.com",
        "superoffice.com",
        "evilsuperoffice.com",
        "online3.superoffice.com.evil.example",
        "online3.superoffice.com.",
        "online 3.superoffice.com",
        "-x.superoffice.com",
        "example.com",
        "127.0.0.1",
    ],
)
def test_a_public_endpoint_that_is_not_a_superoffice_host_is_refused(value: str) -> None:
    assert rejected(json.dumps(body(PublicEndpoint=value)).encode()).field == "PublicEndpoint"


def test_a_public_endpoint_is_normalised_to_lower_case() -> None:
    assert parse(body(PublicEndpoint="Online3.SuperOffice.com")).public_endpoint == (
        "online3.superoffice.com"
    )


def test_a_repeated_field_is_refused() -> None:
    raw = b'{"ChangeType": 0, "ContextIdentifier": "Cust1", "ContextIdentifier": "Cust2"}'
    assert rejected(raw).field == "ContextIdentifier"
