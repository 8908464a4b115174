"""Bearer tokens of the HTTP API, one per tenant (pure).

``AIOS_GATEWAY_TOKENS`` holds ``token=tenant`` pairs, comma-separated; the tenant ``*`` is an administrator (sees
every tenant, sets quotas). A tenant sees, submits to and cancels only its own jobs. Tokens are compared in constant
time; a missing or unknown token is a 401, another tenant's job a 404 as an unknown one (its id stays secret).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from aios.common.errors import ConfigError
from aios.scheduler.spec import is_name

ADMIN = "*"


@dataclass(frozen=True)
class Caller:
    tenant: str

    @property
    def admin(self) -> bool:
        return self.tenant == ADMIN

    def may_see(self, tenant: str) -> bool:
        return self.admin or tenant == self.tenant


class Unauthorized(Exception):
    """401: no credentials, or unknown ones."""


class Forbidden(Exception):
    """403: known caller, not theirs."""


def parse_tokens(raw: str) -> dict[str, str]:
    tokens: dict[str, str] = {}
    for i, item in enumerate(p.strip() for p in raw.split(",") if p.strip()):
        token, sep, tenant = item.partition("=")
        if not sep or not token.strip() or not tenant.strip():
            raise ConfigError(f"AIOS_GATEWAY_TOKENS: item {i + 1} is not 'token=tenant'")
        if len(token.strip()) < 16:
            raise ConfigError(f"AIOS_GATEWAY_TOKENS: the token of tenant {tenant.strip()!r} is shorter than 16 "
                              "characters")
        if tenant.strip() != ADMIN and not is_name(tenant.strip()):  # it could never submit: every job was a 422
            raise ConfigError(f"AIOS_GATEWAY_TOKENS: item {i + 1}: tenant {tenant.strip()!r} is not a tenant name "
                              "(lowercase letters, digits, '.', '_' or '-', 1 to 64 characters)")
        tokens[token.strip()] = tenant.strip()
    return tokens


def authenticate(tokens: dict[str, str], header: str | None) -> Caller:
    if not header:
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <token>'")
    token = token.strip()
    found = None
    for known, tenant in tokens.items():  # constant-time per candidate: no early exit on a prefix match
        if hmac.compare_digest(known.encode(), token.encode()):
            found = tenant
    if found is None:
        raise Unauthorized("unknown token")
    return Caller(found)
