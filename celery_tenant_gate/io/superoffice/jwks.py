"""SuperOffice's signing keys, kept fresh in the background, off the request path.

:class:`SigningKeys` fetches the JWKS in a thread of its own, at start and every
*refresh_every* seconds; a request only reads the keys it has (a dict, replaced whole,
read without a lock). A ``kid`` it does not know asks that thread for one fetch now
(at most one a *refetch_every* seconds, one at a time) and waits at most *wait* for it;
requests with known keys never wait. Keys are PyJWT's :class:`jwt.PyJWK`, RSA of at
least :data:`MIN_RSA_BITS` bits; the JWKS is fetched over https only::

    keys = SigningKeys("https://online.superoffice.com/login/.well-known/jwks")
    key = keys.get(kid)  # a PyJWK; TokenRejected / KeysUnavailable if none
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

import jwt
import requests
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from celery_tenant_gate.model.errors import ConfigError, TenantGateError

logger = logging.getLogger(__name__)

#: Smallest RSA key accepted, in bits (NIST SP 800-131A; PyJWT's own minimum).
MIN_RSA_BITS = 2048
#: Seconds to connect to the JWKS host, and to wait for its answer.
JWKS_TIMEOUT = (3.05, 10.0)


class TokenRejected(TenantGateError):
    """The token is not a valid SuperOffice token for this notification; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"notification token rejected: {reason}")
        self.reason = reason


class KeysUnavailable(TenantGateError):
    """SuperOffice's signing keys could not be fetched: no token can be checked now
    (the webhook answers 503, so that SuperOffice retries)."""


class KeyPending(TenantGateError):
    """The key for this ``kid`` needs a fetch, and the caller asked not to wait for it."""

    def __init__(self, kid: str | None) -> None:
        super().__init__(f"the signing key {kid!r} is being fetched")


class KeySource(Protocol):
    """Where the verifier gets the key for a token's ``kid`` (without *wait*: raises
    :class:`KeyPending` rather than waiting for a fetch)."""

    def get(self, kid: str | None, *, wait: bool = True) -> jwt.PyJWK: ...


class StaticKey:
    """One configured key (a PEM public key or certificate), whatever the ``kid``."""

    def __init__(self, pem: str) -> None:
        self.key = load_public_key(pem)

    def get(self, kid: str | None, *, wait: bool = True) -> jwt.PyJWK:
        return self.key


def rsa_jwk(jwk: jwt.PyJWK, name: str) -> jwt.PyJWK:
    """*jwk* if it is an RSA key of at least :data:`MIN_RSA_BITS` bits, else ``ValueError``."""
    key = jwk.key
    if not isinstance(key, RSAPublicKey):
        raise ValueError(f"{name} is not an RSA public key (tokens are RS256)")
    if key.key_size < MIN_RSA_BITS:
        raise ValueError(f"{name} has {key.key_size} bits, fewer than {MIN_RSA_BITS}")
    return jwk


def check_https(url: str, *, allow_http: bool) -> None:
    """``ConfigError`` unless *url* is https (or http when *allow_http*: tests only)."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "https" or (scheme == "http" and allow_http):
        return
    raise ConfigError(
        f"the JWKS URL {url!r} must be https: keys fetched over plain HTTP can be "
        "replaced by anyone on the way (tenant_gate_webhook_jwks_allow_http is for tests)"
    )


class SigningKeys:
    """The JWKS at *url*, fetched and refreshed by a daemon thread. Thread-safe.

    The thread starts with :meth:`start` (or the first :meth:`get`). Until its first
    fetch has ended, :meth:`get` waits at most *wait* seconds for it; if it failed,
    :meth:`get` raises :class:`KeysUnavailable` at once, naming the URL and the error.
    Keys fetched once are kept while later fetches fail.
    """

    def __init__(
        self,
        url: str,
        *,
        refresh_every: float = 300.0,
        refetch_every: float = 10.0,
        wait: float = 5.0,
        allow_http: bool = False,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        check_https(url, allow_http=allow_http)
        self.url = url
        self.refresh_every = refresh_every
        self.refetch_every = refetch_every
        self.wait = wait
        self._session = session or requests.Session()
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        #: Fetches ended (worked or not), one in flight, the error of the last one.
        self._fetches = 0
        self._fetching = False
        self._error: str | None = "not fetched yet"
        self._fetched = False
        #: When an unknown kid last asked for a fetch, and the fetch count it waits beyond.
        self._asked_at: float | None = None
        self._asked_after = 0
        self._done = threading.Condition()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the fetching thread (once; later calls do nothing)."""
        with self._done:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="tenant-gate-jwks", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the fetching thread (the keys it has are kept)."""
        self._stop.set()
        self._wake.set()

    def get(self, kid: str | None, *, wait: bool = True) -> jwt.PyJWK:
        """The key for *kid* (``None``: the only key, if there is one).

        A known key is returned at once. Otherwise, with *wait*, waits at most
        :attr:`wait` seconds for the fetch it needs; without, raises
        :class:`KeyPending` instead of waiting (call again with *wait* elsewhere).
        """
        key = _pick(self._keys, kid)
        if key is not None:
            return key
        self.start()
        with self._done:
            target = self._fetch_needed(kid)
            if not wait:
                raise KeyPending(kid)
            if not self._done.wait_for(lambda: self._fetches > target, self.wait):
                raise KeysUnavailable(
                    f"the JWKS at {self.url} did not answer within {self.wait:g} s"
                )
            if not self._fetched:
                raise self._unavailable()
        key = _pick(self._keys, kid)
        if key is None:
            raise _no_key(kid, len(self._keys), self.url)
        return key

    def _fetch_needed(self, kid: str | None) -> int:
        """The fetch count to wait beyond for *kid*, asking for a fetch if one may be
        asked for; raises if waiting cannot help. Called holding the lock."""
        in_flight = self._fetches + (1 if self._fetching else 0)
        if not self._fetched:
            if self._fetches > 0:
                raise self._unavailable()  # at once: the first fetch failed already
            return 0
        if kid is None:
            raise _no_key(kid, len(self._keys), self.url)
        now = self._clock()
        if self._asked_at is None or now - self._asked_at >= self.refetch_every:
            # One fetch for every unknown kid of the next refetch_every seconds.
            self._asked_at, self._asked_after = now, in_flight
            self._wake.set()
        elif self._fetches > self._asked_after:
            raise _no_key(kid, len(self._keys), self.url)  # fetched since it was asked
        return self._asked_after

    def _unavailable(self) -> KeysUnavailable:
        return KeysUnavailable(
            f"could not fetch SuperOffice's signing keys from {self.url}: {self._error}"
        )

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            self._wake.clear()
            with self._done:
                self._fetching = True
            try:
                worked = self._fetch()
            except Exception as exc:  # the thread must outlive any failure of the fetch
                logger.exception("tenant-gate: fetching the JWKS at %s failed", self.url)
                self._ended(None, f"{type(exc).__name__}: {exc}")
                worked = False
            failures = 0 if worked else failures + 1
            # After a failure, again soon (1, 2, 4 ... s), never later than usual.
            pause = self.refresh_every if worked else min(2.0 ** (failures - 1), self.refresh_every)
            self._wake.wait(pause)

    def _fetch(self) -> bool:
        try:
            response = self._session.get(self.url, timeout=JWKS_TIMEOUT, allow_redirects=False)
            response.raise_for_status()
            keys = _usable_keys(response.json(), self.url)
            if not keys:
                raise ValueError("no usable RS256 signing key in it")
        except (requests.RequestException, ValueError) as exc:
            # Keep the keys we have: SuperOffice being unreachable is no reason to
            # distrust the keys it published before.
            logger.warning("tenant-gate: could not fetch the JWKS at %s: %s", self.url, exc)
            self._ended(None, f"{type(exc).__name__}: {exc}")
            return False
        self._ended(keys, None)
        return True

    def _ended(self, keys: dict[str, jwt.PyJWK] | None, error: str | None) -> None:
        with self._done:
            if keys is not None:
                self._keys = keys
                self._fetched = True
            self._error = error
            self._fetching = False
            self._fetches += 1
            self._done.notify_all()


def _no_key(kid: str | None, count: int, url: str) -> TokenRejected:
    if kid is None:
        return TokenRejected(f"the token names no 'kid' and the JWKS has {count} keys")
    return TokenRejected(f"no key {kid!r} in the JWKS at {url}")


def load_public_key(pem: str) -> jwt.PyJWK:
    """An RSA public key (2048 bits or more) from a PEM public key or X.509
    certificate, as a PyJWK; ``ConfigError`` if it is not one."""
    data = pem.strip().encode("ascii", "replace")
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            key: object = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = load_pem_public_key(data)
        if not isinstance(key, RSAPublicKey):
            raise ValueError(f"must be an RSA key (tokens are RS256), got {type(key).__name__}")
        jwk = jwt.PyJWK.from_dict(
            {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key)), "use": "sig"}, "RS256"
        )
        return rsa_jwk(jwk, "the key")
    except ValueError as exc:
        raise ConfigError(f"webhook public key: {exc}") from None


def _pick(keys: dict[str, jwt.PyJWK], kid: str | None) -> jwt.PyJWK | None:
    if kid is not None:
        return keys.get(kid)
    # A token without kid can only be checked when the JWKS leaves no choice.
    return next(iter(keys.values())) if len(keys) == 1 else None


def _usable_keys(document: Any, url: str) -> dict[str, jwt.PyJWK]:
    """The RS256 signing keys of a JWKS document, by ``kid``; others are skipped."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS: expected an object with a 'keys' array")
    keys: dict[str, jwt.PyJWK] = {}
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("kty") != "RSA":
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or entry.get("use", "sig") != "sig":
            continue
        if entry.get("alg", "RS256") != "RS256":
            continue
        try:
            keys[kid] = rsa_jwk(jwt.PyJWK(entry, algorithm="RS256"), f"key {kid!r}")
        except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
            logger.warning("tenant-gate: skipped a key of the JWKS at %s: %s", url, exc)
    return keys
