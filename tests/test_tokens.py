"""TokenVerifier and SigningKeys: RS256 tokens from SuperOffice's keys pass (PyJWT
checks them); every forgery is rejected; keys are fetched off the request path."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from workers import wait_until

from celery_tenant_gate.io.superoffice.jwks import KeyPending, KeysUnavailable, SigningKeys
from celery_tenant_gate.io.superoffice.tokens import (
    TokenRejected,
    TokenVerifier,
    token_fingerprint,
)
from celery_tenant_gate.model.errors import ConfigError, TenantGateError
from celery_tenant_gate.testing import FakeSuperOffice, Reply
from celery_tenant_gate.testing.superoffice import generate_key

CTX = "Cust12345"
#: SuperOffice's tenant claim (SUPEROFFICE.md), pinned here as a literal.
SUPEROFFICE_CTX_CLAIM = "http://schemes.superoffice.net/identity/ctx"


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def keys(superoffice: FakeSuperOffice, clock: Clock) -> SigningKeys:
    return SigningKeys(superoffice.jwks_url, allow_http=True, clock=clock)


@pytest.fixture
def verifier(superoffice: FakeSuperOffice, keys: SigningKeys) -> Iterator[TokenVerifier]:
    yield TokenVerifier(superoffice.issuer, keys=keys)


def rejected(verifier: TokenVerifier, token: str, ctx: str = CTX) -> str:
    with pytest.raises(TokenRejected) as caught:
        verifier.verify(token, ctx)
    return caught.value.reason


def hand_signed(
    superoffice: FakeSuperOffice, header: dict[str, Any], claims: dict[str, Any]
) -> str:
    """RS256-signed by SuperOffice's key, with what PyJWT would refuse to encode."""
    segments = [
        base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=")
        for part in (header, claims)
    ]
    signature = superoffice.key.sign(b".".join(segments), padding.PKCS1v15(), hashes.SHA256())
    segments.append(base64.urlsafe_b64encode(signature).rstrip(b"="))
    return b".".join(segments).decode("ascii")


def pem(key: Any) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def test_a_token_signed_by_superoffice_is_accepted(
    superoffice: FakeSuperOffice, verifier: TokenVerifier
) -> None:
    claims = verifier.verify(superoffice.sign(superoffice.claims(CTX)), CTX)
    assert claims["iss"] == superoffice.issuer
    assert claims[SUPEROFFICE_CTX_CLAIM] == CTX


def test_the_tenant_claim_is_superoffices_and_must_name_the_bodys_tenant(
    superoffice: FakeSuperOffice, verifier: TokenVerifier
) -> None:
    own = superoffice.sign({**superoffice.claims(None), SUPEROFFICE_CTX_CLAIM: CTX})
    assert verifier.verify(own, CTX)[SUPEROFFICE_CTX_CLAIM] == CTX
    other = superoffice.sign({**superoffice.claims(None), SUPEROFFICE_CTX_CLAIM: "Cust999"})
    assert "Cust999" in rejected(verifier, other)


def test_a_token_without_a_tenant_claim_needs_the_setting(
    superoffice: FakeSuperOffice, keys: SigningKeys
) -> None:
    anonymous = superoffice.sign(superoffice.claims(None))
    strict = TokenVerifier(superoffice.issuer, keys=keys)
    assert "tenant_gate_webhook_tokens_without_tenant" in rejected(strict, anonymous)
    lenient = TokenVerifier(superoffice.issuer, keys=keys, tenant_claim_required=False)
    assert lenient.verify(anonymous, CTX)["iss"] == superoffice.issuer
    # A claim that is there always counts.
    other = superoffice.sign(superoffice.claims("Cust999"))
    with pytest.raises(TokenRejected):
        lenient.verify(other, CTX)


def test_a_pem_public_key_or_certificate_can_replace_the_jwks(
    superoffice: FakeSuperOffice,
) -> None:
    token = superoffice.sign(superoffice.claims(CTX), headers={"kid": None})
    for key in (superoffice.public_key_pem, superoffice.certificate_pem):
        assert TokenVerifier(superoffice.issuer, public_key_pem=key).verify(token, CTX)


def test_key_sources_and_pems_are_checked() -> None:
    with pytest.raises(ConfigError, match="exactly one key source"):
        TokenVerifier("https://sod.superoffice.com")
    with pytest.raises(ConfigError, match="webhook public key"):
        TokenVerifier("https://sod.superoffice.com", public_key_pem="garbage")
    small = pem(generate_key(1024).public_key())
    with pytest.raises(ConfigError, match="1024 bits, fewer than 2048"):
        TokenVerifier("https://sod.superoffice.com", public_key_pem=small)


@pytest.mark.parametrize(
    "url", ["http://sod.superoffice.com/login/.well-known/jwks", "ftp://x/jwks", "file:///jwks"]
)
def test_the_jwks_url_must_be_https(url: str) -> None:
    with pytest.raises(ConfigError, match="must be https"):
        SigningKeys(url)
    with pytest.raises(ConfigError, match="must be https"):
        TokenVerifier("https://sod.superoffice.com", jwks_url=url)


def test_rejections_are_tenant_gate_errors() -> None:
    assert issubclass(TokenRejected, TenantGateError)
    assert issubclass(KeysUnavailable, TenantGateError)


def test_alg_none_is_rejected(superoffice: FakeSuperOffice, verifier: TokenVerifier) -> None:
    assert "alg value is not allowed" in rejected(
        verifier, superoffice.sign(superoffice.claims(CTX), alg="none")
    )


def test_hs256_keyed_with_the_public_key_is_rejected(superoffice: FakeSuperOffice) -> None:
    for key_pem in (superoffice.public_key_pem, superoffice.certificate_pem):
        forged = superoffice.sign(superoffice.claims(CTX), alg="HS256", key=key_pem)
        static = TokenVerifier(superoffice.issuer, public_key_pem=key_pem)
        assert "alg value is not allowed" in rejected(static, forged)


@pytest.mark.parametrize("alg", ["RS512", "PS256", "HS512"])
def test_any_other_algorithm_is_rejected(
    superoffice: FakeSuperOffice, verifier: TokenVerifier, alg: str
) -> None:
    key = superoffice.public_key_pem if alg.startswith("HS") else None
    assert "alg value is not allowed" in rejected(
        verifier, superoffice.sign(superoffice.claims(CTX), alg=alg, key=key)
    )


def test_a_foreign_key_with_superoffices_kid_is_rejected(
    superoffice: FakeSuperOffice, verifier: TokenVerifier
) -> None:
    forged = superoffice.sign(superoffice.claims(CTX), key=generate_key())
    assert "Signature verification failed" in rejected(verifier, forged)


def test_a_tampered_payload_is_rejected(
    superoffice: FakeSuperOffice, verifier: TokenVerifier
) -> None:
    header, _, signature = superoffice.sign(superoffice.claims(CTX)).split(".")
    _, payload, _ = superoffice.sign(superoffice.claims("Cust1")).split(".")
    assert "Signature" in rejected(verifier, f"{header}.{payload}.{signature}")


@pytest.mark.parametrize("token", ["", "abc", "a.b", "a.b.c.d", "!!.@@.##", "e30.e30.", "é.é.é"])
def test_a_malformed_token_is_rejected(verifier: TokenVerifier, token: str) -> None:
    assert rejected(verifier, token)


def test_a_kid_that_is_not_a_string_is_rejected(
    superoffice: FakeSuperOffice, verifier: TokenVerifier
) -> None:
    header = {"alg": "RS256", "kid": 7}
    assert "Key ID" in rejected(verifier, hand_signed(superoffice, header, superoffice.claims(CTX)))


@pytest.mark.parametrize(
    "issuer",
    [
        "{iss}/",  # suffix
        "{iss}.evil.example.com",
        "{iss}@evil.example.com",
        "https://evil.example.com/{iss}",  # prefix
        "{iss_short}",  # a part of the issuer (CVE-2024-53861: `in` on a string)
        "{iss_upper}",
        "",
    ],
)
def test_only_the_exact_issuer_is_accepted(
    superoffice: FakeSuperOffice, verifier: TokenVerifier, issuer: str
) -> None:
    iss = superoffice.issuer
    wrong = issuer.format(iss=iss, iss_short=iss[:-2], iss_upper=iss.upper())
    assert "issuer" in rejected(verifier, superoffice.sign(superoffice.claims(CTX, iss=wrong)))


def test_an_issuer_given_as_a_list_is_rejected(
    superoffice: FakeSuperOffice, verifier: TokenVerifier
) -> None:
    claims = superoffice.claims(CTX, iss=[superoffice.issuer])
    header = {"alg": "RS256", "kid": superoffice.kid}
    assert "Issuer" in rejected(verifier, hand_signed(superoffice, header, claims))


def test_the_audience_is_checked_whenever_configured(
    superoffice: FakeSuperOffice, keys: SigningKeys
) -> None:
    plain = TokenVerifier(superoffice.issuer, keys=keys)
    strict = TokenVerifier(superoffice.issuer, keys=keys, audience="my-app")
    for_me = superoffice.sign(superoffice.claims(CTX, aud="my-app"))
    listed = superoffice.sign(superoffice.claims(CTX, aud=["other", "my-app"]))
    for_other = superoffice.sign(superoffice.claims(CTX, aud="other-app"))
    no_aud = superoffice.sign(superoffice.claims(CTX))
    assert strict.verify(for_me, CTX) and strict.verify(listed, CTX)
    assert "audience" in rejected(strict, for_other).lower()
    assert "aud" in rejected(strict, no_aud)
    assert plain.verify(for_other, CTX) and plain.verify(no_aud, CTX)


@pytest.mark.parametrize("claim", ["exp", "iat", "iss"])
def test_exp_iat_and_iss_are_required(
    superoffice: FakeSuperOffice, verifier: TokenVerifier, claim: str
) -> None:
    token = superoffice.sign(superoffice.claims(CTX, **{claim: None}))
    assert claim in rejected(verifier, token)


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
def test_time_claims_must_be_numbers(
    superoffice: FakeSuperOffice, verifier: TokenVerifier, claim: str
) -> None:
    assert rejected(verifier, superoffice.sign(superoffice.claims(CTX, **{claim: "soon"})))


def test_times_are_checked_with_leeway(
    superoffice: FakeSuperOffice, verifier: TokenVerifier
) -> None:
    now = int(time.time())
    assert verifier.leeway == 60

    def token(**times: int) -> str:
        return superoffice.sign(superoffice.claims(CTX, **times))

    assert verifier.verify(token(iat=now - 200, nbf=now - 200, exp=now - 30), CTX)
    assert "expired" in rejected(verifier, token(iat=now - 200, nbf=now - 200, exp=now - 90))
    assert verifier.verify(token(nbf=now + 30), CTX)
    assert "nbf" in rejected(verifier, token(nbf=now + 90, exp=now + 900))
    assert verifier.verify(token(iat=now + 30), CTX)
    assert "iat" in rejected(verifier, token(iat=now + 90, nbf=now, exp=now + 900))


def test_a_key_under_2048_bits_is_not_taken_from_the_jwks(
    superoffice: FakeSuperOffice, verifier: TokenVerifier
) -> None:
    small = generate_key(1024)
    superoffice.publish_key("small", small.public_key())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyJWT warns when signing with it
        token = superoffice.sign(superoffice.claims(CTX), key=small, headers={"kid": "small"})
    assert "small" in rejected(verifier, token)
    assert verifier.verify(superoffice.sign(superoffice.claims(CTX)), CTX)


def test_the_jwks_is_fetched_in_the_background_once(
    superoffice: FakeSuperOffice, verifier: TokenVerifier
) -> None:
    for _ in range(5):
        verifier.verify(superoffice.sign(superoffice.claims(CTX)), CTX)
    assert superoffice.jwks_fetches == 1


def test_an_unknown_kid_fetches_once_and_then_not_for_refetch_every(
    superoffice: FakeSuperOffice, verifier: TokenVerifier, keys: SigningKeys, clock: Clock
) -> None:
    verifier.verify(superoffice.sign(superoffice.claims(CTX)), CTX)
    unknown = superoffice.sign(superoffice.claims(CTX), headers={"kid": "nope"})
    rejected(verifier, unknown)
    assert superoffice.jwks_fetches == 2
    for _ in range(5):
        assert "nope" in rejected(verifier, unknown)
    assert superoffice.jwks_fetches == 2  # refused at once: no fetch, no wait
    clock.now += keys.refetch_every
    rejected(verifier, unknown)
    assert superoffice.jwks_fetches == 3


def test_a_rotated_key_is_found_by_one_fetch(
    superoffice: FakeSuperOffice, verifier: TokenVerifier
) -> None:
    verifier.verify(superoffice.sign(superoffice.claims(CTX)), CTX)
    new = generate_key()
    superoffice.publish_key("next", new.public_key())
    token = superoffice.sign(superoffice.claims(CTX), key=new, headers={"kid": "next"})
    assert verifier.verify(token, CTX)[SUPEROFFICE_CTX_CLAIM] == CTX
    assert superoffice.jwks_fetches == 2


def test_known_keys_never_wait_for_a_fetch_in_flight(
    superoffice: FakeSuperOffice, verifier: TokenVerifier, keys: SigningKeys
) -> None:
    verifier.verify(superoffice.sign(superoffice.claims(CTX)), CTX)
    new = generate_key()
    superoffice.publish_key("next", new.public_key())
    held = threading.Event()
    superoffice.script_jwks(Reply(release=held))
    rotated = superoffice.sign(superoffice.claims(CTX), key=new, headers={"kid": "next"})
    with pytest.raises(KeyPending):
        verifier.verify(rotated, CTX, wait=False)  # asks for the fetch, does not wait
    answers: list[Any] = []
    waiting = threading.Thread(target=lambda: answers.append(verifier.verify(rotated, CTX)))
    waiting.start()
    # The fetch cannot end before `held` is set: these did not wait for it.
    for _ in range(20):
        assert verifier.verify(superoffice.sign(superoffice.claims(CTX)), CTX)
    assert not held.is_set() and answers == []
    held.set()
    waiting.join(10)
    assert answers and answers[0][SUPEROFFICE_CTX_CLAIM] == CTX


def test_a_jwks_that_cannot_be_fetched_at_start_is_a_clear_error_at_once(
    superoffice: FakeSuperOffice,
) -> None:
    superoffice.script_jwks(Reply(status=500, body=b"{}"))
    keys = SigningKeys(superoffice.jwks_url, allow_http=True)
    verifier = TokenVerifier(superoffice.issuer, keys=keys)
    keys.start()
    with pytest.raises(KeysUnavailable, match="could not fetch SuperOffice's signing keys"):
        verifier.verify(superoffice.sign(superoffice.claims(CTX)), CTX)
    unreachable = SigningKeys("http://127.0.0.1:9/jwks", allow_http=True)
    with pytest.raises(KeysUnavailable, match=r"127\.0\.0\.1:9"):
        unreachable.get("any")


def test_a_slow_jwks_at_start_is_waited_for_a_bounded_time(
    superoffice: FakeSuperOffice,
) -> None:
    held = threading.Event()
    superoffice.script_jwks(Reply(release=held))
    keys = SigningKeys(superoffice.jwks_url, allow_http=True, wait=0.2)
    try:
        with pytest.raises(KeysUnavailable, match=r"did not answer within 0\.2 s"):
            keys.get(superoffice.kid)
    finally:
        held.set()


def test_the_fetching_thread_survives_bad_answers_and_keeps_the_keys(
    superoffice: FakeSuperOffice, verifier: TokenVerifier, keys: SigningKeys, clock: Clock
) -> None:
    verifier.verify(superoffice.sign(superoffice.claims(CTX)), CTX)
    superoffice.script_jwks(Reply(status=503, body=b"down"), Reply(body=b"not json"))
    for _ in range(2):  # two fetches asked for by unknown kids, both failing
        clock.now += keys.refetch_every
        with pytest.raises(TokenRejected):
            verifier.verify(superoffice.sign(superoffice.claims(CTX), headers={"kid": "x"}), CTX)
    assert superoffice.jwks_fetches == 3
    assert verifier.verify(superoffice.sign(superoffice.claims(CTX)), CTX)  # kept
    new = generate_key()
    superoffice.publish_key("next", new.public_key())
    clock.now += keys.refetch_every
    token = superoffice.sign(superoffice.claims(CTX), key=new, headers={"kid": "next"})
    assert verifier.verify(token, CTX)  # the thread is still there


def test_a_token_without_kid_needs_a_single_key_jwks(
    superoffice: FakeSuperOffice, verifier: TokenVerifier
) -> None:
    token = superoffice.sign(superoffice.claims(CTX), headers={"kid": None})
    assert verifier.verify(token, CTX)
    superoffice.publish_key("second", generate_key().public_key())
    fresh = SigningKeys(superoffice.jwks_url, allow_http=True)
    assert "no 'kid'" in rejected(TokenVerifier(superoffice.issuer, keys=fresh), token)


def test_the_fingerprint_is_the_sha256_of_the_token_without_padding() -> None:
    assert token_fingerprint("a.b.c") == hashlib.sha256(b"a.b.c").hexdigest()
    assert token_fingerprint("a.b.c==") == token_fingerprint("a.b.c")
    assert token_fingerprint("a.b.c") != token_fingerprint("a.b.d")


def test_ttl_is_the_remaining_lifetime_plus_leeway(
    superoffice: FakeSuperOffice, verifier: TokenVerifier
) -> None:
    claims = verifier.verify(superoffice.sign(superoffice.claims(CTX, lifetime=300)), CTX)
    assert 355 <= verifier.ttl(claims) <= 360
    assert verifier.ttl({"exp": 0}) == 1.0
    assert verifier.ttl({"exp": 10**10}) == 86_400.0


def test_a_closed_key_source_stops_fetching(superoffice: FakeSuperOffice) -> None:
    keys = SigningKeys(superoffice.jwks_url, refresh_every=0.01, allow_http=True)
    keys.start()
    wait_until(lambda: superoffice.jwks_fetches >= 2, what="refreshed in the background")
    keys.close()
    assert keys._thread is not None
    keys._thread.join(5)
    assert not keys._thread.is_alive()
