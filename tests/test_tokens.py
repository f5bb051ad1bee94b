"""TokenVerifier: RS256 tokens from SuperOffice's keys pass; every forgery is rejected."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from celery_tenant_gate.io.superoffice.tokens import (
    TokenRejected,
    TokenVerifier,
    token_fingerprint,
)
from celery_tenant_gate.model.errors import ConfigError, TenantGateError
from celery_tenant_gate.testing import FakeSuperOffice, Reply
from celery_tenant_gate.testing.superoffice import CTX_CLAIM, generate_key

CTX = "Cust12345"


class Clock:
    """A clock the test moves by hand, starting at the real time."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def verifier(superoffice: FakeSuperOffice, clock: Clock) -> Iterator[TokenVerifier]:
    yield TokenVerifier(superoffice.issuer, jwks_url=superoffice.jwks_url, clock=clock)


def rejected(verifier: TokenVerifier, token: str, ctx: str = CTX) -> str:
    with pytest.raises(TokenRejected) as caught:
        verifier.verify(token, ctx)
    return caught.value.reason


def test_a_token_signed_by_superoffice_is_accepted(
    superoffice: FakeSuperOffice, verifier: TokenVerifier
) -> None:
    claims = verifier.verify(superoffice.sign(superoffice.claims(CTX)), CTX)
    assert claims["iss"] == superoffice.issuer
    assert claims[CTX_CLAIM] == CTX


def test_a_token_without_a_ctx_claim_is_accepted(
    superoffice: FakeSuperOffice, verifier: TokenVerifier
) -> None:
    assert CTX_CLAIM not in verifier.verify(superoffice.sign(superoffice.claims(None)), CTX)


def test_a_pem_public_key_or_certificate_can_replace_the_jwks(
    superoffice: FakeSuperOffice,
) -> None:
    token = superoffice.sign(superoffice.claims(CTX), headers={"kid": None})
    for pem in (superoffice.public_key_pem, superoffice.certificate_pem):
        verifier = TokenVerifier(superoffice.issuer, public_key_pem=pem)
        assert verifier.verify(token, CTX)["iss"] == superoffice.issuer
    assert superoffice.jwks_fetches == 0


def test_the_key_source_and_pem_are_checked() -> None:
    with pytest.raises(ConfigError, match="exactly one key source"):
        TokenVerifier("https://sod.superoffice.com")
    with pytest.raises(ConfigError, match="not a PEM"):
        TokenVerifier("https://sod.superoffice.com", public_key_pem="garbage")


def test_rejections_are_tenant_gate_errors() -> None:
    assert issubclass(TokenRejected, TenantGateError)


# -- forgeries ---------------------------------------------------------------------


def test_alg_none_is_rejected(superoffice: FakeSuperOffice, verifier: TokenVerifier) -> None:
    token = superoffice.sign(superoffice.claims(CTX), alg="none")
    assert "'none' is not allowed" in rejected(verifier, token)
    assert superoffice.jwks_fetches == 0  # refused before any key was looked at


def test_hs256_keyed_with_the_public_key_is_rejected(superoffice: FakeSuperOffice) -> None:
    claims = superoffice.claims(CTX)
    for pem in (superoffice.public_key_pem, superoffice.certificate_pem):
        token = superoffice.sign(claims, alg="HS256", key=pem)
        static = TokenVerifier(superoffice.issuer, public_key_pem=pem)
        assert "'HS256' is not allowed" in rejected(static, token)


@pytest.mark.parametrize("alg", ["RS384", "RS512", "PS256", "HS512"])
def test_any_other_algorithm_is_rejected(
    superoffice: FakeSuperOffice, verifier: TokenVerifier, alg: str
) -> None:
    key: Any = b"secret" if alg.startswith("HS") else None
    token = superoffice.sign(superoffice.claims(CTX), alg=alg, key=key)
    assert f"{alg!r} is not allowed" in rejected(verifier, token)


def test_a_foreign_key_with_superoffices_kid_is_rejected(
    superoffice: FakeSuperOffice, verifier: TokenVerifier
) -> None:
    token = superoffice.sign(superoffice.claims(CTX), key=generate_key())
    assert "Signature verification failed" in rejected(verifier, token)


def test_a_tampered_payload_is_rejected(
    superoffice: FakeSuperOffice, verifier: TokenVerifier
) -> None:
    header, payload, signature = superoffice.sign(superoffice.claims(CTX)).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims[CTX_CLAIM] = "Cust666"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert "Signature verification failed" in rejected(
        verifier, f"{header}.{forged}.{signature}", "Cust666"
    )


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "eyJhbGciOiJSUzI1NiJ9"])
def test_a_malformed_token_is_rejected(verifier: TokenVerifier, token: str) -> None:
    assert rejected(verifier, token)


@pytest.mark.parametrize("junk", ["!", "=", "*"])
def test_a_header_with_characters_outside_base64url_is_rejected(
    superoffice: FakeSuperOffice, verifier: TokenVerifier, junk: str
) -> None:
    # The header is first read leniently, to pick the key; the whole token, header
    # included, must still be checked strictly before it is accepted.
    header, payload, signature = superoffice.sign(superoffice.claims(CTX)).split(".")
    token = f"{header[:8]}{junk}{header[8:]}.{payload}.{signature}"
    assert "header" in rejected(verifier, token).lower()


def signed_raw(superoffice: FakeSuperOffice, header: bytes, payload: bytes) -> str:
    """A token over these exact header and payload bytes, signed with SuperOffice's key."""
    segments = [base64.urlsafe_b64encode(part).rstrip(b"=").decode() for part in (header, payload)]
    signing_input = ".".join(segments)
    signature = superoffice.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def rs256_header(superoffice: FakeSuperOffice, **more: Any) -> bytes:
    return json.dumps({"alg": "RS256", "kid": superoffice.kid, **more}).encode()


@pytest.mark.parametrize("segment", [1, 2])
@pytest.mark.parametrize("junk", ["!", "+", "/", " ", "\u00e9"])
def test_a_payload_or_signature_outside_base64url_is_rejected(
    superoffice: FakeSuperOffice, verifier: TokenVerifier, segment: int, junk: str
) -> None:
    parts = superoffice.sign(superoffice.claims(CTX)).split(".")
    parts[segment] = parts[segment][:8] + junk + parts[segment][8:]
    name = "payload" if segment == 1 else "signature"
    assert f"the {name} is not base64url" in rejected(verifier, ".".join(parts))


def test_padding_is_tolerated_as_pyjwt_does_but_only_at_the_end(
    superoffice: FakeSuperOffice, verifier: TokenVerifier
) -> None:
    header, payload, signature = superoffice.sign(superoffice.claims(CTX)).split(".")
    padded = signature + "=" * (-len(signature) % 4)
    assert padded != signature  # a 2048-bit signature is 342 characters: 2 of padding
    assert verifier.verify(f"{header}.{payload}.{padded}", CTX)["iss"] == superoffice.issuer
    assert "not base64url" in rejected(verifier, f"{header}.{payload}.{padded}==")
    assert "not base64url" in rejected(verifier, f"{header}.{payload}.{signature}=")
    assert "not base64url" in rejected(verifier, f"{header}.{payload}.=={signature}")


def test_only_the_canonical_spelling_of_a_segment_is_accepted(
    superoffice: FakeSuperOffice, verifier: TokenVerifier
) -> None:
    # 342 characters carry 256 bytes: the last one has 4 bits to spare, which must be 0.
    header, payload, signature = superoffice.sign(superoffice.claims(CTX)).split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(signature[-1])
    for spare in range(1, 16):
        respelled = signature[:-1] + alphabet[last ^ spare]
        token = f"{header}.{payload}.{respelled}"
        assert "signature is not canonical" in rejected(verifier, token)


def test_a_segment_of_impossible_length_is_rejected(
    superoffice: FakeSuperOffice, verifier: TokenVerifier
) -> None:
    header, payload, signature = superoffice.sign(superoffice.claims(CTX)).split(".")
    longer = signature + "A" * (5 - len(signature) % 4)
    assert len(longer) % 4 == 1  # no base64 text has that length
    assert "signature is not base64url" in rejected(verifier, f"{header}.{payload}.{longer}")


@pytest.mark.parametrize(
    "extension", [{"crit": ["exp"], "exp": 1}, {"b64": False, "crit": ["b64"]}, {"b64": False}]
)
def test_a_header_asking_for_an_extension_is_rejected(
    superoffice: FakeSuperOffice, verifier: TokenVerifier, extension: dict[str, Any]
) -> None:
    # Signed with SuperOffice's own key: only the header's request is wrong.
    claims = json.dumps(superoffice.claims(CTX)).encode()
    token = signed_raw(superoffice, rs256_header(superoffice, **extension), claims)
    assert "extension" in rejected(verifier, token)


@pytest.mark.parametrize("kid", [None, 1, ["k"], {"k": 1}])
def test_a_kid_that_is_not_a_string_is_rejected(
    superoffice: FakeSuperOffice, verifier: TokenVerifier, kid: Any
) -> None:
    token = signed_raw(
        superoffice, json.dumps({"alg": "RS256", "kid": kid}).encode(), b'{"iss": "x"}'
    )
    assert "'kid' must be a string" in rejected(verifier, token)


@pytest.mark.parametrize("payload", [b"[1, 2]", b'"claims"', b"null", b"{", b"\xff"])
def test_a_signed_payload_that_is_not_a_json_object_is_rejected(
    superoffice: FakeSuperOffice, verifier: TokenVerifier, payload: bytes
) -> None:
    token = signed_raw(superoffice, rs256_header(superoffice), payload)
    assert "payload" in rejected(verifier, token)


@pytest.mark.parametrize("header", [b"[]", b'"RS256"', b"{"])
def test_a_header_that_is_not_a_json_object_is_rejected(
    superoffice: FakeSuperOffice, verifier: TokenVerifier, header: bytes
) -> None:
    token = signed_raw(superoffice, header, json.dumps(superoffice.claims(CTX)).encode())
    assert "header" in rejected(verifier, token)


@pytest.mark.parametrize("claim", ["sub", "jti"])
def test_sub_and_jti_must_be_strings_when_present(
    superoffice: FakeSuperOffice, verifier: TokenVerifier, claim: str
) -> None:
    assert verifier.verify(superoffice.sign(superoffice.claims(CTX, **{claim: "abc"})), CTX)
    token = superoffice.sign(superoffice.claims(CTX, **{claim: 42}))
    assert f"{claim!r} must be a string" in rejected(verifier, token)


def test_a_wrong_issuer_is_rejected(superoffice: FakeSuperOffice, verifier: TokenVerifier) -> None:
    token = superoffice.sign(superoffice.claims(CTX, iss="https://evil.example"))
    assert "issuer" in rejected(verifier, token).lower()
    token = superoffice.sign(superoffice.claims(CTX, iss=None))
    assert "iss" in rejected(verifier, token)


def test_the_audience_is_checked_only_when_configured(superoffice: FakeSuperOffice) -> None:
    plain = TokenVerifier(superoffice.issuer, jwks_url=superoffice.jwks_url)
    strict = TokenVerifier(superoffice.issuer, jwks_url=superoffice.jwks_url, audience="my-app")
    right = superoffice.sign(superoffice.claims(CTX, aud="my-app"))
    wrong = superoffice.sign(superoffice.claims(CTX, aud="other-app"))
    none = superoffice.sign(superoffice.claims(CTX))
    assert plain.verify(wrong, CTX) and plain.verify(none, CTX)
    assert strict.verify(right, CTX)["aud"] == "my-app"
    assert "audience" in rejected(strict, wrong).lower()
    assert "aud" in rejected(strict, none)
    listed = superoffice.sign(superoffice.claims(CTX, aud=["other-app", "my-app"]))
    assert strict.verify(listed, CTX)["aud"] == ["other-app", "my-app"]
    for bad in (["other-app"], [], "", ["my-app", 7], 7, {"my-app": 1}):
        token = superoffice.sign(superoffice.claims(CTX, aud=bad))
        assert "aud" in rejected(strict, token).lower()
    claims = superoffice.claims(CTX, iss=[superoffice.issuer])
    token = signed_raw(superoffice, rs256_header(superoffice), json.dumps(claims).encode())
    assert "issuer" in rejected(plain, token).lower()


def test_expiry_and_not_before_are_checked_with_leeway(
    superoffice: FakeSuperOffice, verifier: TokenVerifier, clock: Clock
) -> None:
    token = superoffice.sign(superoffice.claims(CTX, lifetime=300))
    clock.now += 300 + 59
    assert verifier.verify(token, CTX)
    clock.now += 2
    assert "expired" in rejected(verifier, token)
    clock.now = time.time()
    later = int(clock.now) + 120
    token = superoffice.sign(superoffice.claims(CTX, nbf=later, exp=later + 300))
    assert "not valid for another" in rejected(verifier, token)
    clock.now = later - 59
    assert verifier.verify(token, CTX)


def test_exp_is_required_and_times_must_be_numbers(
    superoffice: FakeSuperOffice, verifier: TokenVerifier
) -> None:
    assert "exp" in rejected(verifier, superoffice.sign(superoffice.claims(CTX, exp=None)))
    for bad in ("soon", True):
        token = superoffice.sign(superoffice.claims(CTX, exp=bad))
        assert "'exp' must be a number" in rejected(verifier, token)
    token = superoffice.sign(superoffice.claims(CTX, nbf="now"))
    assert "'nbf' must be a number" in rejected(verifier, token)
    for name in ("exp", "nbf", "iat"):
        # Too large for a float: refused, not a crash (a 500 instead of a 401).
        token = superoffice.sign(superoffice.claims(CTX, **{name: 10**400}))
        assert f"{name!r} must be a number" in rejected(verifier, token)


def test_a_ctx_claim_naming_another_tenant_is_rejected(
    superoffice: FakeSuperOffice, verifier: TokenVerifier
) -> None:
    token = superoffice.sign(superoffice.claims("Cust1"))
    assert "for tenant 'Cust1'" in rejected(verifier, token, "Cust2")


# -- keys from the JWKS ---------------------------------------------------------------


def test_the_jwks_is_fetched_once_and_cached(
    superoffice: FakeSuperOffice, verifier: TokenVerifier
) -> None:
    for _ in range(5):
        verifier.verify(superoffice.sign(superoffice.claims(CTX)), CTX)
    assert superoffice.jwks_fetches == 1


def test_an_unknown_kid_refetches_at_most_once_per_refresh_interval(
    superoffice: FakeSuperOffice, verifier: TokenVerifier, clock: Clock
) -> None:
    verifier.verify(superoffice.sign(superoffice.claims(CTX)), CTX)
    stranger = generate_key()
    forged = superoffice.sign(superoffice.claims(CTX), key=stranger, headers={"kid": "k2"})
    for _ in range(20):
        assert "no key 'k2'" in rejected(verifier, forged)
    assert superoffice.jwks_fetches == 1  # the first fetch was less than 30 s ago
    clock.now += 30
    assert "no key 'k2'" in rejected(verifier, forged)
    assert superoffice.jwks_fetches == 2
    for _ in range(5):
        rejected(verifier, forged)
    assert superoffice.jwks_fetches == 2


def test_a_rotated_key_is_found_by_refetching(
    superoffice: FakeSuperOffice, verifier: TokenVerifier, clock: Clock
) -> None:
    verifier.verify(superoffice.sign(superoffice.claims(CTX)), CTX)
    new_key = generate_key()
    superoffice.publish_key("k2", new_key.public_key())
    token = superoffice.sign(superoffice.claims(CTX), key=new_key, headers={"kid": "k2"})
    clock.now += 31
    assert verifier.verify(token, CTX)
    assert superoffice.jwks_fetches == 2


def test_a_jwks_fetch_failure_is_a_rejection_not_a_crash(
    superoffice: FakeSuperOffice, verifier: TokenVerifier, clock: Clock
) -> None:
    superoffice.script_jwks(Reply(status=503), Reply(body=b"not json"))
    token = superoffice.sign(superoffice.claims(CTX))
    assert "no key" in rejected(verifier, token)
    clock.now += 30
    assert "no key" in rejected(verifier, token)
    clock.now += 30
    assert verifier.verify(token, CTX)
    assert superoffice.jwks_fetches == 3


def test_an_unreachable_jwks_is_a_rejection(superoffice: FakeSuperOffice) -> None:
    verifier = TokenVerifier(superoffice.issuer, jwks_url="http://127.0.0.1:9/jwks")
    assert "no key" in rejected(verifier, superoffice.sign(superoffice.claims(CTX)))


def test_stale_keys_are_kept_when_a_refresh_fails(
    superoffice: FakeSuperOffice, clock: Clock
) -> None:
    verifier = TokenVerifier(
        superoffice.issuer, jwks_url=superoffice.jwks_url, clock=clock, max_age=100
    )
    verifier.verify(superoffice.sign(superoffice.claims(CTX)), CTX)
    superoffice.script_jwks(Reply(status=500))
    clock.now += 101
    assert verifier.verify(superoffice.sign(superoffice.claims(CTX, lifetime=3600)), CTX)
    assert superoffice.jwks_fetches == 2


def test_a_token_without_kid_needs_a_single_key_jwks(
    superoffice: FakeSuperOffice, verifier: TokenVerifier, clock: Clock
) -> None:
    token = superoffice.sign(superoffice.claims(CTX), headers={"kid": None})
    assert verifier.verify(token, CTX)
    superoffice.publish_key("k2", generate_key().public_key())
    clock.now += 3601
    assert "names no 'kid'" in rejected(verifier, token)


# -- what the webhook uses for replays ---------------------------------------------------


def test_fingerprints_are_sha256_hex_of_token_and_parts() -> None:
    assert token_fingerprint("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert token_fingerprint("abc", "Cust1") != token_fingerprint("abc", "Cust2")
    assert token_fingerprint("ab", "c") != token_fingerprint("abc")


def test_ttl_is_the_remaining_lifetime_plus_leeway(
    superoffice: FakeSuperOffice, verifier: TokenVerifier, clock: Clock
) -> None:
    claims = {"exp": clock.now + 300}
    assert verifier.ttl(claims) == pytest.approx(360)
    clock.now += 1000
    assert verifier.ttl(claims) == 1.0
    assert verifier.ttl({"exp": clock.now + 10**9}) == 86_400.0
