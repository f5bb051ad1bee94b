"""Where a tenant session's request goes (``celery_tenant_gate.model.apiurl``)."""

from __future__ import annotations

import pytest

from celery_tenant_gate.model.apiurl import api_url, host_of, rebase

API = "https://online3.superoffice.com/Cust12345/api"
MOVED = "https://online7.superoffice.com/Cust12345/api"


@pytest.mark.parametrize(
    ("api", "url", "expected"),
    [
        (API, "v1/Contact/5", f"{API}/v1/Contact/5"),
        (API, "/v1/Contact/5", f"{API}/v1/Contact/5"),
        (API + "/", "v1/Contact?$top=5", f"{API}/v1/Contact?$top=5"),
        (API, "", f"{API}/"),
        (API, "https://elsewhere.example/x", "https://elsewhere.example/x"),
        (API, "HTTPS://online3.superoffice.com/Cust12345/api/v1", "HTTPS://online3.superoffice.com/Cust12345/api/v1"),
    ],
)  # fmt: skip
def test_paths_go_under_the_api_and_absolute_urls_as_they_are(
    api: str, url: str, expected: str
) -> None:
    assert api_url(api, url) == expected


def test_bad_input_is_named() -> None:
    with pytest.raises(TypeError, match="URL is a str, not int"):
        api_url(API, 5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Api is not an http"):
        api_url("online3.superoffice.com/Cust1/api", "v1/Contact")


def test_a_url_on_the_old_api_moves_to_the_new_one() -> None:
    assert rebase(f"{API}/v1/Contact?$skip=50#x", API, MOVED) == f"{MOVED}/v1/Contact?$skip=50#x"
    assert rebase(API, API, MOVED) == MOVED
    assert rebase(API.upper().replace("CUST12345/API", "Cust12345/api"), API, MOVED) == MOVED


@pytest.mark.parametrize(
    "url",
    [
        "https://online3.superoffice.com/Cust12345/apix/v1",  # a look-alike prefix
        "https://online3.superoffice.com/Cust99/api/v1",  # another tenant
        "http://online3.superoffice.com/Cust12345/api/v1",  # another scheme
        "https://online4.superoffice.com/Cust12345/api/v1",  # another server
    ],
)
def test_a_url_not_under_the_api_is_not_moved(url: str) -> None:
    assert rebase(url, API, MOVED) is None


def test_hosts_are_named_without_credentials() -> None:
    assert host_of("https://user:secret@online3.superoffice.com/Cust1/api") == (
        "online3.superoffice.com"
    )
    assert host_of("http://127.0.0.1:8080/Cust1/api") == "127.0.0.1:8080"
