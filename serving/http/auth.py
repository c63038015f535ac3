"""The authentication hook of the HTTP API and the tenant-scoped cache salt.

`authenticate(authorization_header) -> tenant | None` is any callable: the
server answers 401 when it returns None. Without one, the API is open and
requests run as no tenant.
"""
from __future__ import annotations

import hmac
import json
from typing import Callable, Mapping

Authenticator = Callable[[str | None], str | None]


def bearer_token(authorization: str | None) -> str | None:
  """The key of an `Authorization: Bearer <key>` header, else None."""
  if not authorization:
    return None
  scheme, _, key = authorization.strip().partition(" ")
  key = key.strip()
  return key if scheme.lower() == "bearer" and key else None


def api_key_authenticator(keys: Mapping[str, str]) -> Authenticator:
  """An authenticator from a fixed {api key: tenant} map (bearer tokens).

  NOTE: every key is compared in constant time, so the answer's timing does
  not tell how much of a guessed key was right.
  """
  table = [(k.encode(), tenant) for k, tenant in keys.items()]
  if not table or any(not k for k, _ in table):
    raise ValueError("api keys must be non-empty, and at least one is needed")

  def authenticate(authorization: str | None) -> str | None:
    key = (bearer_token(authorization) or "").encode()
    found = None
    for k, tenant in table:
      if hmac.compare_digest(k, key):
        found = tenant
    return found
  return authenticate


def effective_cache_salt(tenant: str | None, client_salt: str | None) -> str | None:
  """The prefix-cache salt a request runs with.

  NOTE: with a tenant the salt always contains it, so two tenants never share
  a cached block whatever salts their clients send; the client's salt can
  only split a tenant's cache further. The encoding is injective (a JSON list).
  """
  if tenant is None:
    return client_salt
  return json.dumps(["tenant", tenant, client_salt])
