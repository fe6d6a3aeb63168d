"""Optional API-key / bearer-token authentication, the acting principal, and correlation ids.

Keys come from ``CQRSKIT_API_KEYS``, either JSON (``{"<key>": {"user_id": "alice",
"roles": ["admin"]}}``) or ``key=user[:role|role],key2=user2``. Without keys authentication
is off: every request is anonymous and allowed. With keys:

1. A request that presents a credential (``Authorization: Bearer <key>`` or
   ``X-API-Key: <key>``) that matches no key gets 401, whatever its method.
2. A request that changes state (any method but GET, HEAD, OPTIONS) without a credential
   gets 401 with ``WWW-Authenticate: Bearer``.
3. Keys are compared in constant time (SHA-256 digests with :func:`hmac.compare_digest`,
   every configured key each time); keys are never logged or shown in errors.
4. The acting user id of a command comes only from the verified principal: the command
   sender stamps it (and the correlation id) on every command, so it lands in every
   event's metadata; request bodies cannot carry one.

``X-Correlation-ID`` (a UUID) is accepted on any request and becomes the correlation id of
the commands it sends; a malformed one is 422. :func:`require_admin` guards operator
routes: with authentication on it needs a principal with the ``admin`` role (401 / 403);
:func:`authenticate` applies the same rule to every path under :data:`ADMIN_PREFIX`, so the
operator routes are guarded however they are included. Without keys they are open, like
every other route.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any
from uuid import UUID

from fastapi import Depends, HTTPException, Request

__all__ = [
    "ADMIN_PREFIX",
    "CORRELATION_HEADER",
    "ApiKeys",
    "Principal",
    "PrincipalDep",
    "authenticate",
    "current_correlation_id",
    "current_user_id",
    "get_principal",
    "require_admin",
]

CORRELATION_HEADER = "X-Correlation-ID"
ADMIN_PREFIX = "/admin"
"""Every route under this path needs the ``admin`` role when authentication is on."""
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="cqrskit"'}
_USER = re.compile(r"^[A-Za-z0-9_.@\-]{1,200}$")
_MAX_KEY = 512


@dataclass(frozen=True)
class Principal:
    """A verified caller."""

    user_id: str
    roles: frozenset[str] = frozenset()

    def __repr__(self) -> str:
        return f"Principal(user_id={self.user_id!r}, roles={sorted(self.roles)!r})"


class ApiKeys:
    """The configured keys, kept only as SHA-256 digests."""

    def __init__(self, keys: Mapping[str, Principal]) -> None:
        for key in keys:
            if not key or len(key) > _MAX_KEY:
                raise ValueError(f"an API key has 1 to {_MAX_KEY} characters")
        self._entries = [(_digest(key), principal) for key, principal in keys.items()]

    def __repr__(self) -> str:
        return f"ApiKeys({len(self._entries)} keys)"

    @property
    def enabled(self) -> bool:
        """Whether any key is configured (authentication on)."""
        return bool(self._entries)

    @classmethod
    def parse(cls, text: str | None) -> ApiKeys:
        """Parse ``CQRSKIT_API_KEYS`` (JSON object or ``key=user:role|role,...``)."""
        text = (text or "").strip()
        if not text:
            return cls({})
        if text.startswith("{"):
            try:
                raw: Any = json.loads(text)
            except ValueError:
                raise ValueError("CQRSKIT_API_KEYS is not valid JSON") from None
            if not isinstance(raw, dict):
                raise ValueError("CQRSKIT_API_KEYS must be a JSON object")
            return cls({key: _principal(value) for key, value in raw.items()})
        keys: dict[str, Principal] = {}
        for entry in filter(None, (part.strip() for part in text.split(","))):
            key, sep, rest = entry.partition("=")
            if not sep:
                raise ValueError("CQRSKIT_API_KEYS entries look like key=user[:role|role]")
            user, _, roles = rest.partition(":")
            keys[key.strip()] = _principal({"user_id": user.strip(), "roles": roles.split("|")})
        return cls(keys)

    def verify(self, presented: str) -> Principal | None:
        """Return the principal of ``presented``, or ``None``; constant time in the key."""
        digest = _digest(presented[: _MAX_KEY + 1])
        found: Principal | None = None
        for stored, principal in self._entries:
            if hmac.compare_digest(stored, digest):
                found = principal
        return found


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def _principal(value: Any) -> Principal:
    if not isinstance(value, dict):
        raise ValueError("each API key maps to {'user_id': ..., 'roles': [...]}")
    user = value.get("user_id")
    roles = value.get("roles", [])
    if not isinstance(user, str) or not _USER.match(user):
        raise ValueError("an API key's user_id has 1 to 200 letters, digits or _.@-")
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise ValueError("an API key's roles are a list of strings")
    return Principal(user, frozenset(r.strip() for r in roles if r.strip()))


def _keys(request: Request) -> ApiKeys:
    keys = getattr(request.app.state, "api_keys", None)
    return keys if isinstance(keys, ApiKeys) else ApiKeys({})


def _credential(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HTTPException(401, "use Authorization: Bearer <key>", headers=_CHALLENGE)
        return token.strip()
    return request.headers.get("x-api-key")


async def authenticate(request: Request) -> Principal | None:
    """Verify the request's credential; enforce guarantees 1 and 2 (a FastAPI dependency).

    The principal (or ``None``) is kept on ``request.state.principal``. Also validates
    ``X-Correlation-ID`` into ``request.state.correlation_id``.
    """
    return _resolve(request)


def _resolve(request: Request) -> Principal | None:
    if hasattr(request.state, "principal"):
        principal: Principal | None = request.state.principal
        return principal
    raw_correlation = request.headers.get(CORRELATION_HEADER)
    correlation: UUID | None = None
    if raw_correlation is not None:
        try:
            if len(raw_correlation) > 64:
                raise ValueError
            correlation = UUID(raw_correlation)
        except ValueError:
            raise HTTPException(422, f"{CORRELATION_HEADER} must be a UUID") from None
    keys = _keys(request)
    principal = None
    if keys.enabled:
        presented = _credential(request)
        if presented is not None:
            principal = keys.verify(presented)
            if principal is None:
                raise HTTPException(401, "the API key is not valid", headers=_CHALLENGE)
        elif request.method not in _SAFE_METHODS:
            raise HTTPException(401, "this request needs an API key", headers=_CHALLENGE)
    request.state.principal = principal
    request.state.correlation_id = correlation
    if keys.enabled and request.url.path.startswith(ADMIN_PREFIX):
        _check_admin(principal)
    return principal


async def get_principal(request: Request) -> Principal | None:
    """The verified principal of this request, or ``None`` (anonymous)."""
    return _resolve(request)


PrincipalDep = Annotated[Principal | None, Depends(get_principal)]


def current_user_id(request: Request) -> str | None:
    """The acting user id: the verified principal's, never anything the caller wrote."""
    principal = _resolve(request)
    return None if principal is None else principal.user_id


def current_correlation_id(request: Request) -> UUID | None:
    """The request's validated ``X-Correlation-ID``, or ``None``."""
    _resolve(request)
    correlation: UUID | None = request.state.correlation_id
    return correlation


async def require_admin(request: Request) -> Principal | None:
    """Allow only principals with the ``admin`` role when authentication is on (401 / 403)."""
    principal = _resolve(request)
    if _keys(request).enabled:
        _check_admin(principal)
    return principal


def _check_admin(principal: Principal | None) -> None:
    if principal is None:
        raise HTTPException(401, "this request needs an API key", headers=_CHALLENGE)
    if "admin" not in principal.roles:
        raise HTTPException(403, "this request needs the admin role")


def __dir__() -> list[str]:
    return list(__all__)
