"""Checking the signed ``Token`` of a notification: is it really from SuperOffice, and
for this tenant? PyJWT checks it; this module says what to check and finds the key::

    verifier = TokenVerifier("https://online.superoffice.com",
                             jwks_url="https://online.superoffice.com/login/.well-known/jwks")
    claims = verifier.verify(notification.token, notification.context_id)

Only RS256, whatever the token's header says (``none`` and HS256 keyed with the
public key are refused by PyJWT before any key is used); ``iss`` equal to the issuer
(a string compared whole: no prefix or suffix matches); ``exp``, ``iat`` and ``iss``
required; ``exp``, ``nbf`` and ``iat`` against this machine's clock with *leeway*
seconds of skew (an ``iat`` in the future is refused); ``aud`` whenever an audience is
configured; RSA keys of at least 2048 bits; the tenant claim equal to the body's tenant.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from typing import Any

import jwt

from celery_tenant_gate.model.errors import ConfigError

from .jwks import (
    KeyPending,
    KeySource,
    KeysUnavailable,
    SigningKeys,
    StaticKey,
    TokenRejected,
)

__all__ = [
    "CTX_CLAIM",
    "KeyPending",
    "KeysUnavailable",
    "TokenRejected",
    "TokenVerifier",
    "token_fingerprint",
]

#: The only signature algorithm accepted: SuperOffice signs with RS256.
ALGORITHM = "RS256"
#: The claim in which SuperOffice tokens name the tenant.
CTX_CLAIM = "http://schemes.superoffice.net/identity/ctx"
#: Claims a token must have.
REQUIRED_CLAIMS = ["exp", "iat", "iss"]
#: Longest a used token is remembered, whatever its ``exp`` says.
MAX_TTL = 86_400.0
#: Most token headers whose parse is remembered (a header is the same for every token
#: signed with one key: its ``kid`` is found without parsing each token twice).
_HEADERS_KEPT = 64


def token_fingerprint(token: str) -> str:
    """SHA-256 (hex) of *token* without its ``=`` padding: what identifies it for replay
    (PyJWT accepts only the canonical base64url of each segment, padding aside)."""
    return hashlib.sha256(token.replace("=", "").encode("utf-8", "surrogatepass")).hexdigest()


class TokenVerifier:
    """Verifies notification tokens with PyJWT. Thread-safe; keep one per process.

    Keys come from *keys*, or from the JWKS at *jwks_url* (:class:`SigningKeys`,
    https unless *allow_http*), or from *public_key_pem*: exactly one.
    *tenant_claim_required* false accepts a token without the tenant claim
    (:data:`CTX_CLAIM`) for the tenant the body names; a claim present always counts.
    """

    def __init__(
        self,
        issuer: str,
        *,
        jwks_url: str | None = None,
        public_key_pem: str | None = None,
        keys: KeySource | None = None,
        audience: str | None = None,
        leeway: float = 60.0,
        tenant_claim_required: bool = True,
        allow_http: bool = False,
    ) -> None:
        if [jwks_url, public_key_pem, keys].count(None) != 2:
            raise ConfigError(
                "TokenVerifier needs exactly one key source: jwks_url, public_key_pem or keys"
            )
        if not isinstance(issuer, str) or not issuer:
            raise ConfigError("TokenVerifier: issuer must be a non-empty string")
        if jwks_url is not None:
            keys = SigningKeys(jwks_url, allow_http=allow_http)
        elif public_key_pem is not None:
            keys = StaticKey(public_key_pem)
        assert keys is not None
        self.keys: KeySource = keys
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self.tenant_claim_required = tenant_claim_required
        self._headers: dict[str, dict[str, Any]] = {}

    def close(self) -> None:
        """Stop fetching keys in the background (a JWKS key source's thread)."""
        close = getattr(self.keys, "close", None)
        if close is not None:
            close()

    def verify(self, token: str, context_id: str, *, wait: bool = True) -> dict[str, Any]:
        """The token's claims if it is valid for tenant *context_id*.

        Raises :class:`TokenRejected` if not; :class:`KeysUnavailable` if its key
        could not be fetched; :class:`KeyPending` (only without *wait*) if its key is
        being fetched.
        """
        try:
            key = self.keys.get(self._kid(token), wait=wait)
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                options={
                    "require": REQUIRED_CLAIMS,
                    "verify_aud": self.audience is not None,
                    "enforce_minimum_key_length": True,
                },
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
            )
        except jwt.PyJWTError as exc:
            raise TokenRejected(f"{type(exc).__name__}: {exc}") from None
        ctx = claims.get(CTX_CLAIM)
        if ctx is None and self.tenant_claim_required:
            raise TokenRejected(
                f"the token names no tenant (claim {CTX_CLAIM!r}); accept such tokens only "
                "if SuperOffice's carry none (tenant_gate_webhook_tokens_without_tenant)"
            )
        if ctx is not None and ctx != context_id:
            raise TokenRejected(f"the token is for tenant {ctx!r}, the body for {context_id!r}")
        return claims

    def ttl(self, claims: Mapping[str, Any]) -> float:
        """Seconds the token stays acceptable (its ``exp`` plus leeway, from now).

        At least 1 s and at most :data:`MAX_TTL`: how long to remember it was used.
        """
        remaining = float(claims["exp"]) + self.leeway - time.time()
        return min(max(remaining, 1.0), MAX_TTL)

    def _kid(self, token: str) -> str | None:
        """The token's ``kid``, to pick a key (PyJWT checks the header again with it)."""
        segment = token.partition(".")[0]
        header = self._headers.get(segment)
        if header is None:
            header = jwt.get_unverified_header(token)
            if len(self._headers) >= _HEADERS_KEPT:
                self._headers.clear()  # many headers: forged; drop them all
            self._headers[segment] = header
        kid: str | None = header.get("kid")  # a string: PyJWT checked
        return kid
