"""A local stand-in for SuperOffice's State API, over real HTTP on 127.0.0.1.

It answers per tenant with any state, delay, error status or garbage, and counts
the calls it got::

    with FakeSuperOffice() as so:
        so.set_state("Cust1", "Running", valid_for=60)
        so.script("Cust2", Reply(status=503, headers={"Retry-After": "1"}))
        app.conf.tenant_gate_state_api_url = so.state_api_url

It also plays SuperOffice's signing side: an RSA key published as a JWKS at
``/login/.well-known/jwks`` (``jwks_url``), and notification bodies with freshly
signed tokens, or forged ones::

        app.conf.tenant_gate_webhook_jwks_url = so.jwks_url
        app.conf.tenant_gate_webhook_issuer = so.issuer
        body = so.notification("Cust1", 2)                 # a valid Suspend
        forged = so.sign(so.claims("Cust1"), alg="none")   # refused by the webhook
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import unquote, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from .serving import QuietServer, Serving

STATE_PATH = "/api/state/"
JWKS_PATH = "/login/.well-known/jwks"
#: The claim in which SuperOffice tokens name the tenant.
CTX_CLAIM = "http://schemes.superoffice.net/identity/ctx"


@functools.lru_cache(maxsize=1)
def _default_key() -> rsa.RSAPrivateKey:
    # One key per process: generating RSA keys is slow, and the tests start many fakes.
    return generate_key()


def generate_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    """A fresh RSA key, e.g. to forge tokens with a key SuperOffice never had."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class Reply:
    """One scripted answer. ``body=None`` sends the tenant's state document."""

    status: int = 200
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    content_type: str = "application/json"
    #: Answer only once this is set (at most 30 s): a fetch a test holds in flight.
    release: threading.Event | None = None


@dataclass
class _Tenant:
    document: dict[str, Any] | None = None
    delay: float = 0.0
    #: Answer 404 (see :meth:`FakeSuperOffice.not_found`).
    not_found: bool = False
    script: deque[Reply] = field(default_factory=deque)


def unknown_document(context_id: str, valid_for: float = 60.0) -> dict[str, Any]:
    """What the State API answers (200) for a tenant it does not know: the documented
    answer with ``State: Unknown`` (0) and ``IsRunning: false``. The documentation does
    not say what ``Endpoint`` and ``Api`` hold then: empty here."""
    return {
        "ContextIdentifier": context_id,
        "Endpoint": "",
        "State": "Unknown",
        "IsRunning": False,
        "ValidUntil": dotnet_timestamp(datetime.now(timezone.utc) + timedelta(seconds=valid_for)),
        "Api": "",
    }


def dotnet_timestamp(when: datetime) -> str:
    """A timestamp as .NET writes it: 7 fraction digits and a ``Z``."""
    when = when.astimezone(timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond:06d}0Z"


class FakeSuperOffice(Serving):
    """A threaded HTTP server playing SuperOffice. Thread-safe; use as a context manager."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        key: rsa.RSAPrivateKey | None = None,
        kid: str = "fake-superoffice-1",
    ) -> None:
        self._lock = threading.Lock()
        self._tenants: dict[str, _Tenant] = {}
        self._calls: Counter[str] = Counter()
        self.key = key or _default_key()
        self.kid = kid
        self._published: dict[str, rsa.RSAPublicKey] = {kid: self.key.public_key()}
        self._jwks_script: deque[Reply] = deque()
        self._jwks_fetches = 0
        self._server = QuietServer((host, port), _handler(self))
        self.thread_name = "fake-superoffice"

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def state_api_url(self) -> str:
        """What to put in ``tenant_gate_state_api_url``."""
        return self.base_url + STATE_PATH.rstrip("/")

    @property
    def issuer(self) -> str:
        """The ``iss`` of the tokens it signs: its base URL, as SuperOffice's is its own."""
        return self.base_url

    @property
    def jwks_url(self) -> str:
        """What to put in ``tenant_gate_webhook_jwks_url``."""
        return self.base_url + JWKS_PATH

    @property
    def public_key_pem(self) -> str:
        """Its signing key's public half, PEM: for ``tenant_gate_webhook_public_key``."""
        return (
            self.key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode("ascii")
        )

    @property
    def certificate_pem(self) -> str:
        """A self-signed certificate of its signing key, PEM (SuperOffice ships one)."""
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-superoffice")])
        now = datetime.now(timezone.utc)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(1)
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30))
            .sign(self.key, hashes.SHA256())
        )
        return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")

    @property
    def jwks_fetches(self) -> int:
        """How many times its JWKS was fetched."""
        with self._lock:
            return self._jwks_fetches

    def publish_key(self, kid: str, key: rsa.RSAPublicKey | None) -> None:
        """Add (or with ``None`` withdraw) a key in the JWKS, e.g. to rotate keys."""
        with self._lock:
            if key is None:
                self._published.pop(kid, None)
            else:
                self._published[kid] = key

    def script_jwks(self, *replies: Reply) -> None:
        """Answer these replies to the next JWKS fetches, in order, then the JWKS again
        (a 200 reply without a body: the JWKS as it is then, after its delay/release)."""
        with self._lock:
            self._jwks_script.extend(replies)

    def jwks(self) -> dict[str, Any]:
        """The JWKS document it serves."""
        with self._lock:
            published = dict(self._published)
        keys = []
        for kid, key in published.items():
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key))
            jwk.update(kid=kid, use="sig", alg="RS256")
            keys.append(jwk)
        return {"keys": keys}

    def claims(
        self, context_id: str | None, *, lifetime: float = 300.0, **overrides: Any
    ) -> dict[str, Any]:
        """Claims like SuperOffice's: ``iss``, ``iat``, ``nbf``, ``exp`` and the tenant (ctx).

        *overrides* replace claims; an override of ``None`` removes the claim. Pass
        ``context_id=None`` for a token that names no tenant.
        """
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "iat": now,
            "nbf": now,
            "exp": now + int(lifetime),
            "jti": _b64(hashlib.sha256(f"{now}{time.perf_counter_ns()}".encode()).digest()[:12]),
        }
        if context_id is not None:
            claims[CTX_CLAIM] = context_id
        claims.update(overrides)
        return {name: value for name, value in claims.items() if value is not None}

    def sign(
        self,
        claims: dict[str, Any],
        *,
        key: rsa.RSAPrivateKey | bytes | str | None = None,
        alg: str = "RS256",
        headers: dict[str, Any] | None = None,
    ) -> str:
        """A token with these claims, signed with *key* (default: its own) by *alg*.

        Anything may be forged: ``alg="none"``, ``alg="HS256"`` with ``key`` the public
        key PEM, another RSA key. Headers default to ``{"kid": self.kid}``; a header
        given as ``None`` is left out.
        """
        header = {"alg": alg, "typ": "JWT", "kid": self.kid, **(headers or {})}
        header = {name: value for name, value in header.items() if value is not None}
        if alg.startswith("RS") or alg.startswith("PS"):
            signing_key = key if key is not None else self.key
            return jwt.encode(claims, signing_key, algorithm=alg, headers=header)
        # PyJWT refuses to make the forgeries below; build them by hand.
        signing_input = (
            _b64(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64(json.dumps(claims, separators=(",", ":")).encode())
        )
        if alg.lower() == "none":
            return signing_input + "."
        if alg in {"HS256", "HS384", "HS512"}:
            secret = key.encode() if isinstance(key, str) else key
            if not isinstance(secret, bytes):
                raise TypeError("an HS* forgery needs key= as bytes or str")
            digest = getattr(hashlib, "sha" + alg[2:])
            mac = hmac.new(secret, signing_input.encode("ascii"), digest).digest()
            return signing_input + "." + _b64(mac)
        raise ValueError(f"sign() cannot make {alg!r} tokens")

    def notification(
        self,
        context_id: str,
        change_type: int = 0,
        *,
        public_endpoint: str | None = None,
        version_name: str = "Release 10.3.8",
        file_version: str = "10.3.8.2024",
        claims: dict[str, Any] | None = None,
        kid: str | None = None,
        key: rsa.RSAPrivateKey | None = None,
        expired: bool = False,
        not_yet_valid: bool = False,
        ctx_claim: bool = True,
        token: str | None = None,
    ) -> dict[str, Any]:
        """A notification body with a freshly signed token (or *token*, if given).

        *claims* override the token's claims (``None`` removes one); *kid* and *key*
        forge its header and signature; *expired* / *not_yet_valid* move its validity
        an hour into the past / future; ``ctx_claim=False`` leaves the tenant claim out.
        """
        if token is None:
            overrides: dict[str, Any] = {}
            now = int(time.time())
            if expired:
                overrides.update(iat=now - 3900, nbf=now - 3900, exp=now - 3600)
            if not_yet_valid:
                overrides.update(iat=now, nbf=now + 3600, exp=now + 7200)
            overrides.update(claims or {})
            token = self.sign(
                self.claims(context_id if ctx_claim else None, **overrides),
                key=key,
                headers=None if kid is None else {"kid": kid},
            )
        body: dict[str, Any] = {
            "ChangeType": change_type,
            "ContextIdentifier": context_id,
            "VersionName": version_name,
            "FileVersion": file_version,
            "Token": token,
        }
        if public_endpoint is not None:
            body["PublicEndpoint"] = public_endpoint
        return body

    # -- what it answers ----------------------------------------------------------

    def set_state(
        self,
        context_id: str,
        state: str | int = "Running",
        *,
        valid_for: float = 60.0,
        is_running: bool | None = None,
        endpoint: str | None = None,
        delay: float | None = None,
        **extra: Any,
    ) -> None:
        """Answer *state* for the tenant from now on (``ValidUntil`` = now + *valid_for*)."""
        if is_running is None:
            is_running = state in ("Running", "OnlineMaintenance", 2, 5)
        server = endpoint or f"https://online{len(context_id) % 9 + 1}.superoffice.com"
        document: dict[str, Any] = {
            "ContextIdentifier": context_id,
            "Endpoint": f"{server}/{context_id}",
            "State": state,
            "IsRunning": is_running,
            "ValidUntil": dotnet_timestamp(
                datetime.now(timezone.utc) + timedelta(seconds=valid_for)
            ),
            "Api": f"{server}/{context_id}/api",
        }
        document.update(extra)
        with self._lock:
            tenant = self._tenants.setdefault(context_id, _Tenant())
            tenant.document, tenant.not_found = document, False
            if delay is not None:
                tenant.delay = delay

    def set_document(self, context_id: str, document: Any) -> None:
        """Answer exactly this JSON value for the tenant from now on."""
        with self._lock:
            tenant = self._tenants.setdefault(context_id, _Tenant())
            tenant.document, tenant.not_found = document, False

    def set_delay(self, context_id: str, delay: float) -> None:
        with self._lock:
            self._tenants.setdefault(context_id, _Tenant()).delay = delay

    def script(self, context_id: str, *replies: Reply) -> None:
        """Answer these replies to the next calls, in order, then the state again."""
        with self._lock:
            self._tenants.setdefault(context_id, _Tenant()).script.extend(replies)

    def forget(self, context_id: str) -> None:
        """Forget the tenant (its state, script, delay): from now on it answers as
        SuperOffice does for a tenant it does not know, 200 with ``State: Unknown``
        (see :func:`unknown_document`)."""
        with self._lock:
            self._tenants.pop(context_id, None)

    def not_found(self, context_id: str) -> None:
        """Answer 404 for the tenant from now on (after its script), as the real State
        API never does for a tenant: the way to test a wrong URL."""
        with self._lock:
            self._tenants.setdefault(context_id, _Tenant()).not_found = True

    def calls(self, context_id: str | None = None) -> int:
        """State API calls received (for one tenant, or in all)."""
        with self._lock:
            if context_id is None:
                return sum(self._calls.values())
            return self._calls[context_id]

    def reset_calls(self) -> None:
        with self._lock:
            self._calls.clear()

    def _answer(self, context_id: str) -> tuple[Reply, float]:
        with self._lock:
            self._calls[context_id] += 1
            tenant = self._tenants.get(context_id) or _Tenant()
            document = tenant.document
            if document is None:
                document = unknown_document(context_id)
            if tenant.script:
                reply = tenant.script.popleft()
                if reply.body is None and reply.status == 200:
                    reply = Reply(
                        200,
                        json.dumps(document).encode(),
                        reply.headers,
                        reply.delay,
                        reply.content_type,
                    )
                return reply, reply.delay or tenant.delay
            if tenant.not_found:
                return Reply(status=404, body=b'{"Message":"Not found"}'), tenant.delay
            return Reply(body=json.dumps(document).encode()), tenant.delay

    def _answer_jwks(self) -> Reply:
        with self._lock:
            self._jwks_fetches += 1
            scripted = self._jwks_script.popleft() if self._jwks_script else None
        if scripted is not None and (scripted.body is not None or scripted.status != 200):
            return scripted
        jwks = Reply(body=json.dumps(self.jwks()).encode())
        return jwks if scripted is None else replace(scripted, body=jwks.body)


def _handler(fake: FakeSuperOffice) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path == JWKS_PATH:
                reply = fake._answer_jwks()
                if reply.release is not None:
                    reply.release.wait(30)
                if reply.delay:
                    time.sleep(reply.delay)
                self._send(reply)
                return
            if not path.startswith(STATE_PATH):
                self._send(Reply(status=404, body=b"{}"))
                return
            reply, delay = fake._answer(unquote(path[len(STATE_PATH) :]))
            if delay:
                time.sleep(delay)  # the stand-in for a slow server
            self._send(reply)

        def _send(self, reply: Reply) -> None:
            body = reply.body or b""
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: tests read counts, not logs

    return Handler
