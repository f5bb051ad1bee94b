import pytest

from celery_tenant_gate.model.errors import InvalidTenantId
from celery_tenant_gate.model.ids import compile_pattern, validate_tenant_id


@pytest.mark.parametrize("ctx", ["Cust1", "Cust12345", "Cust999999999999"])
def test_superoffice_ids_are_valid(ctx: str) -> None:
    assert validate_tenant_id(ctx) == ctx


@pytest.mark.parametrize(
    "ctx",
    [
        "",
        "cust123",
        "Cust",
        "Cust12a",
        "../Cust1",
        "Cust1/../admin",
        "Cust1?x=1",
        "Cust1%2F",
        "Cust1 ",
        "Cust1\n",
        "Cust1234567890123",
        "\uff23ust1",  # a fullwidth C
    ],
)
def test_malformed_ids_are_refused_with_the_id_in_the_message(ctx: str) -> None:
    with pytest.raises(InvalidTenantId, match="malformed tenant id"):
        validate_tenant_id(ctx)


@pytest.mark.parametrize("value", [None, 12345, b"Cust1"])
def test_non_strings_are_refused_naming_the_type(value: object) -> None:
    with pytest.raises(InvalidTenantId, match=type(value).__name__):
        validate_tenant_id(value)


def test_a_custom_pattern_still_never_admits_path_characters() -> None:
    loose = compile_pattern(r".+")
    assert validate_tenant_id("Tenant_7-a", loose) == "Tenant_7-a"
    for bad in ("a/b", "..", "a.b", "x" * 65):
        with pytest.raises(InvalidTenantId):
            validate_tenant_id(bad, loose)
