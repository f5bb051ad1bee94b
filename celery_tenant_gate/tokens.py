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
import binascii
import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import jwt
import requests
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from .errors import ConfigError, TenantGateError

logger = logging.getLogger(__name__)

#: The only signature algorithm accepted: SuperOffice signs with RS256.
ALGORITHM = "RS256"
#: The claim in which SuperOffice tokens name the tenant.
CTX_CLAIM = "http://schemes.superoffice.net/identity/ctx"
#: Seconds to connect to the JWKS host, and to wait for its answer.
JWKS_TIMEOUT = (3.05, 10.0)
#: Longest a used token is remembered, whatever its ``exp`` says.
MAX_TTL = 86_400.0
_OPTIONS: jwt.types.Options = {
    "require": ["exp", "iss"],
    # Checked in _check_times against our own clock, which tests can drive.
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
}


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
        header = _unverified_header(token)
        alg = header.get("alg")
        # Checked before any key is touched: 'none' and HS256 (keyed with our public
        # key) are the classic forgeries.
        if alg != ALGORITHM:
            raise TokenRejected(f"algorithm {alg!r} is not allowed (only {ALGORITHM})")
        key = self._key_for(header.get("kid"))
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                issuer=self.issuer,
                audience=self.audience,
                options={**_OPTIONS, "verify_aud": self.audience is not None},
            )
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise TokenRejected(str(exc) or type(exc).__name__) from None
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
        with self._lock:
            now = self._clock()
            stale = self._fetched_at is None or now - self._fetched_at >= self.max_age
            unknown = kid is not None and kid not in self._keys
            may_fetch = self._tried_at is None or now - self._tried_at >= self.refresh_interval
            if (stale or unknown) and may_fetch:
                self._tried_at = now
                self._refresh(now)
            keys = dict(self._keys)
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


def _unverified_header(token: str) -> dict[str, Any]:
    """The token's JOSE header, to pick the algorithm and key before verifying.

    Only the header segment is decoded: ``jwt.get_unverified_header`` decodes (and
    checks character by character) all three, and ``jwt.decode`` does it all again,
    which was a quarter of the verification's cost. This read may be lenient:
    ``jwt.decode`` checks the whole token strictly afterwards, header included.
    """
    segment, _, rest = token.partition(".")
    if rest.count(".") != 1:
        raise TokenRejected("malformed token (not three dot-separated segments)")
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        header = json.loads(data)
    except (binascii.Error, ValueError, RecursionError) as exc:
        raise TokenRejected(f"malformed token (header: {exc})") from None
    if not isinstance(header, dict):
        raise TokenRejected("malformed token (the header is not a JSON object)")
    return header


def _is_seconds(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


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
