"""Checking the signed ``Token`` of a notification: is it really from SuperOffice?

Only RS256 is accepted, whatever the token says. The key is SuperOffice's: either
from its JWKS (by ``kid``, fetched with requests and cached) or a configured PEM
public key or certificate::

    verifier = TokenVerifier("https://online.superoffice.com",
                             jwks_url="https://online.superoffice.com/login/.well-known/jwks")
    claims = verifier.verify(notification.token, notification.context_id)
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jwt
import requests
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from celery_tenant_gate.model.errors import ConfigError, TenantGateError

logger = logging.getLogger(__name__)

#: The only signature algorithm accepted: SuperOffice signs with RS256.
ALGORITHM = "RS256"
#: The claim in which SuperOffice tokens name the tenant.
CTX_CLAIM = "http://schemes.superoffice.net/identity/ctx"
#: Seconds to connect to the JWKS host, and to wait for its answer.
JWKS_TIMEOUT = (3.05, 10.0)
#: Longest a used token is remembered, whatever its ``exp`` says.
MAX_TTL = 86_400.0
#: Claims a token must have (``exp`` and ``nbf`` are checked against our own clock,
#: which tests can drive).
REQUIRED_CLAIMS = ("exp", "iss")
#: RS256: RSASSA-PKCS1-v1_5 with SHA-256 (RFC 7518 section 3.3), as PyJWT verifies it.
_PADDING = padding.PKCS1v15()
_HASH = hashes.SHA256()


class TokenRejected(TenantGateError):
    """The token is not a valid SuperOffice token for this notification; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"notification token rejected: {reason}")
        self.reason = reason


def token_fingerprint(token: str, *parts: str) -> str:
    """SHA-256 (hex) of *token* and, when given, further *parts* (such as the body's fields)."""
    digest = hashlib.sha256(token.encode("utf-8", "surrogatepass"))
    for part in parts:
        digest.update(b"\x00" + part.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def load_public_key(pem: str) -> RSAPublicKey:
    """An RSA public key from a PEM public key or X.509 certificate (``ConfigError`` if not)."""
    data = pem.strip().encode("ascii", "replace")
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            key: object = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = load_pem_public_key(data)
    except ValueError as exc:
        raise ConfigError(
            f"webhook public key: not a PEM public key or certificate ({exc})"
        ) from None
    if not isinstance(key, RSAPublicKey):
        raise ConfigError(
            f"webhook public key: must be an RSA key (tokens are RS256), got {type(key).__name__}"
        )
    return key


class TokenVerifier:
    """Verifies notification tokens. Thread-safe; keep one per process.

    *issuer* must equal the token's ``iss``; *audience*, when given, its ``aud``.
    ``exp`` is required; ``exp`` and ``nbf`` are checked with *leeway* seconds of clock
    skew. Give *jwks_url* or *public_key_pem* (not both). An unknown ``kid`` makes
    the JWKS be fetched again, at most once every *refresh_interval* seconds; keys
    older than *max_age* seconds are refreshed on next use.
    """

    def __init__(
        self,
        issuer: str,
        *,
        jwks_url: str | None = None,
        public_key_pem: str | None = None,
        audience: str | None = None,
        leeway: float = 60.0,
        session: requests.Session | None = None,
        refresh_interval: float = 30.0,
        max_age: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if (jwks_url is None) == (public_key_pem is None):
            raise ConfigError(
                "TokenVerifier needs exactly one key source: jwks_url or public_key_pem"
            )
        if not issuer:
            raise ConfigError("TokenVerifier: issuer must be a non-empty string")
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self.jwks_url = jwks_url
        self.refresh_interval = refresh_interval
        self.max_age = max_age
        self._static_key = None if public_key_pem is None else load_public_key(public_key_pem)
        self._session = session or requests.Session()
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, RSAPublicKey] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._tried_at: float | None = None  # last attempt, successful or not

    def verify(self, token: str, context_id: str) -> dict[str, Any]:
        """The token's claims if it is valid for tenant *context_id*.

        Raises :class:`TokenRejected` otherwise, also when the JWKS cannot be fetched.
        """
        jws = _parse(token)
        alg = jws.header.get("alg")
        # Checked before any key is touched: 'none' and HS256 (keyed with our public
        # key) are the classic forgeries.
        if alg != ALGORITHM:
            raise TokenRejected(f"algorithm {alg!r} is not allowed (only {ALGORITHM})")
        key = self._key_for(jws.header.get("kid"))
        try:
            key.verify(jws.signature, jws.signing_input, _PADDING, _HASH)
        except InvalidSignature:
            raise TokenRejected("Signature verification failed") from None
        claims = _claims(jws.payload)
        self._check_claims(claims)
        self._check_times(claims)
        ctx = claims.get(CTX_CLAIM)
        if ctx is not None and ctx != context_id:
            raise TokenRejected(f"the token is for tenant {ctx!r}, the body for {context_id!r}")
        return claims

    def ttl(self, claims: Mapping[str, Any]) -> float:
        """Seconds the token stays acceptable (its ``exp`` plus leeway, from now).

        At least 1 s and at most :data:`MAX_TTL`: how long to remember it was used.
        """
        remaining = float(claims["exp"]) + self.leeway - self._clock()
        return min(max(remaining, 1.0), MAX_TTL)

    def _check_claims(self, claims: Mapping[str, Any]) -> None:
        """What PyJWT's ``decode`` checks with our options, times aside."""
        for name in REQUIRED_CLAIMS:
            if claims.get(name) is None:
                raise TokenRejected(f'Token is missing the "{name}" claim')
        if claims["iss"] != self.issuer:
            raise TokenRejected("Invalid issuer")
        for name in ("sub", "jti"):
            if name in claims and not isinstance(claims[name], str):
                raise TokenRejected(f"claim {name!r} must be a string")
        if self.audience is None:
            return
        aud = claims.get("aud")
        if not aud:
            raise TokenRejected('Token is missing the "aud" claim')
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
            raise TokenRejected("Invalid claim format in token (aud)")
        if self.audience not in audiences:
            raise TokenRejected("Audience doesn't match")

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        now = self._clock()
        for name in ("exp", "nbf", "iat"):
            value = claims.get(name)
            if value is not None and not _is_seconds(value):
                raise TokenRejected(f"claim {name!r} must be a number of seconds")
        if now > claims["exp"] + self.leeway:
            raise TokenRejected(f"the token expired {now - claims['exp']:.0f} s ago")
        nbf = claims.get("nbf")
        if nbf is not None and now < nbf - self.leeway:
            raise TokenRejected(f"the token is not valid for another {nbf - now:.0f} s")

    def _key_for(self, kid: object) -> RSAPublicKey:
        if self._static_key is not None:
            return self._static_key
        if kid is not None and not isinstance(kid, str):
            raise TokenRejected("header 'kid' must be a string")
        # _refresh replaces the dict, never changes it: it can be read without the lock.
        keys, fetched_at = self._keys, self._fetched_at
        if (
            fetched_at is None
            or self._clock() - fetched_at >= self.max_age
            or (kid is not None and kid not in keys)
        ):
            with self._lock:
                now = self._clock()
                stale = self._fetched_at is None or now - self._fetched_at >= self.max_age
                unknown = kid is not None and kid not in self._keys
                may_fetch = self._tried_at is None or now - self._tried_at >= self.refresh_interval
                if (stale or unknown) and may_fetch:
                    self._tried_at = now
                    self._refresh(now)
                keys = self._keys
        if kid is None:
            # A token without kid can only be checked when the JWKS leaves no choice.
            if len(keys) == 1:
                return next(iter(keys.values()))
            raise TokenRejected(f"the token names no 'kid' and the JWKS has {len(keys)} keys")
        key = keys.get(kid)
        if key is None:
            raise TokenRejected(f"no key {kid!r} in the JWKS at {self.jwks_url}")
        return key

    def _refresh(self, now: float) -> None:
        assert self.jwks_url is not None
        try:
            response = self._session.get(self.jwks_url, timeout=JWKS_TIMEOUT)
            response.raise_for_status()
            keys = _rsa_keys(response.json())
        except (requests.RequestException, ValueError) as exc:
            # Keep the keys we have: SuperOffice being unreachable is no reason to
            # distrust the keys it published before.
            logger.warning("tenant-gate: could not fetch the JWKS at %s: %s", self.jwks_url, exc)
            return
        self._keys = keys
        self._fetched_at = now


class _JWS(NamedTuple):
    """A compact JWS taken apart (not yet verified)."""

    header: dict[str, Any]
    payload: bytes
    signature: bytes
    #: What the signature is over: the header and payload segments as sent.
    signing_input: bytes


def _parse(token: str) -> _JWS:
    """*token* (a compact JWS) taken apart; :class:`TokenRejected` if it is not one.

    Each segment must be base64url (RFC 7515 section 2: no other characters; up to two
    trailing ``=`` are tolerated, as PyJWT does) and the header a JSON object that asks
    for no extension (``crit``, ``b64``): we understand none. Done here, not with
    PyJWT's ``decode``: PyJWT 2.15 checks the alphabet a character at a
    time in Python, which was most of a notification's checking time
    (``python -m bench webhook``). The signature is checked as PyJWT's RS256 does it.
    """
    segments = token.split(".")
    if len(segments) != 3:
        raise TokenRejected("malformed token (not three dot-separated segments)")
    header_segment, payload_segment, signature_segment = segments
    try:
        header = json.loads(_decode_segment(header_segment, "header"))
    except (ValueError, RecursionError) as exc:
        raise TokenRejected(f"malformed token (header: {exc})") from None
    if not isinstance(header, dict):
        raise TokenRejected("malformed token (the header is not a JSON object)")
    if "crit" in header or header.get("b64", True) is not True:
        raise TokenRejected(
            "the token header asks for an extension ('crit', 'b64'); none is supported"
        )
    if "kid" in header and not isinstance(header["kid"], str):
        raise TokenRejected("header 'kid' must be a string")
    return _JWS(
        header,
        _decode_segment(payload_segment, "payload"),
        _decode_segment(signature_segment, "signature"),
        f"{header_segment}.{payload_segment}".encode("ascii"),
    )


#: A base64url segment (RFC 7515 section 2), with at most two ``=`` of padding.
_SEGMENT = re.compile(r"[A-Za-z0-9_-]*={0,2}")


def _decode_segment(segment: str, name: str) -> bytes:
    stripped = segment.rstrip("=")
    if (
        _SEGMENT.fullmatch(segment) is None
        or len(stripped) % 4 == 1
        or (stripped != segment and len(segment) % 4 != 0)
    ):
        raise TokenRejected(f"malformed token (the {name} is not base64url)")
    decoded = base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))
    # Only the canonical text of these bytes (the unused low bits of the last
    # character zero), as PyJWT checks: otherwise one signed token could be sent as
    # many different strings, each new to the replay record.
    if base64.urlsafe_b64encode(decoded).rstrip(b"=") != stripped.encode("ascii"):
        raise TokenRejected(f"malformed token (the {name} is not canonical base64url)")
    return decoded


def _claims(payload: bytes) -> dict[str, Any]:
    try:
        claims = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise TokenRejected(f"malformed token (payload: {exc})") from None
    if not isinstance(claims, dict):
        raise TokenRejected("malformed token (the payload is not a JSON object)")
    return claims


#: Most seconds a time claim may hold (year 33658): more cannot be a real time, and
#: a number too large for a float would fail the arithmetic on it.
MAX_SECONDS = 1e12


def _is_seconds(value: object) -> bool:
    # Also false for NaN and infinities; no float conversion (an int may be too large).
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and -MAX_SECONDS <= value <= MAX_SECONDS
    )


def _rsa_keys(document: Any) -> dict[str, RSAPublicKey]:
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS: expected an object with a 'keys' array")
    keys: dict[str, RSAPublicKey] = {}
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("kty") != "RSA":
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or entry.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(entry, algorithm=ALGORITHM).key
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            continue
        if isinstance(key, RSAPublicKey):
            keys[kid] = key
    return keys
