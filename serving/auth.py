"""Who is calling, and which prefix-cache salt their requests get.

With API keys configured (`pagedjax serve --api-key-file`), every Inference
RPC must carry `authorization: Bearer <key>` metadata; the key names a tenant,
and the server derives the cache salt from that tenant, so no client can reach
another tenant's prefix-cache blocks whatever `cache_salt` it sends. What a
client-set `cache_salt` does is the `--client-cache-salt` policy:

- `allow`: it subdivides the caller's own cache (with keys: tenant + salt;
  without keys: the salt alone, the client's word, as before),
- `ignore`: it is dropped (with keys: one salt per tenant; without: one cache),
- `reject`: a request that sets it is INVALID_ARGUMENT.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Iterable, Mapping

from serving.request_convert import InvalidRequestError

SALT_POLICIES = ("allow", "ignore", "reject")
MIN_KEY_CHARS = 16
# NOTE: no '/' in a tenant name: the derived salt "tenant/<name>/<client salt>"
# then names exactly one tenant, whatever the client salt holds.
_TENANT_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_BEARER_RE = re.compile(r"bearer\s+(\S+)\s*", re.IGNORECASE)


class UnauthenticatedError(Exception):
  """The call has no key, or one the server does not know."""


def _digest(key: str) -> bytes:
  return hashlib.sha256(key.encode("utf-8")).digest()


@dataclasses.dataclass(frozen=True)
class ApiKeys:
  """API keys by tenant. Only SHA-256 digests of the keys are kept.

  NOTE: a lookup hashes the presented key and finds the digest in a dict, so
  its time tells nothing about how close a guess was to a real key.
  """
  digests: tuple[tuple[bytes, str], ...]
  _index: dict = dataclasses.field(init=False, repr=False, compare=False)

  def __post_init__(self):
    index = dict(self.digests)
    if len(index) != len(self.digests):
      raise ValueError("the same API key is listed twice")
    object.__setattr__(self, "_index", index)

  @classmethod
  def from_mapping(cls, tenant_of_key: Mapping[str, str]) -> "ApiKeys":
    """From {key: tenant}; raises ValueError for a short key or a bad tenant name."""
    for key, tenant in tenant_of_key.items():
      if not _TENANT_RE.fullmatch(tenant):
        raise ValueError(f"tenant name {tenant[:64]!r} must be 1-64 of A-Z a-z 0-9 . _ -")
      if len(key) < MIN_KEY_CHARS or not key.isprintable() or any(c.isspace() for c in key):
        raise ValueError(f"the API key of tenant {tenant!r} must be at least {MIN_KEY_CHARS} "
                         "printable characters without spaces")
    return cls(tuple((_digest(k), t) for k, t in tenant_of_key.items()))

  @classmethod
  def from_file(cls, path: str) -> "ApiKeys":
    """One `TENANT KEY` pair per line; blank lines and `#` comments are skipped."""
    pairs: list[tuple[str, str]] = []
    with open(path, encoding="utf-8") as f:
      for n, line in enumerate(f, 1):
        line = line.strip()
        if not line or line.startswith("#"):
          continue
        fields = line.split()
        if len(fields) != 2:
          raise ValueError(f"{path}:{n}: expected 'TENANT KEY', got {len(fields)} fields")
        pairs.append((fields[1], fields[0]))
    if not pairs:
      raise ValueError(f"{path}: no API keys")
    keys = dict(pairs)
    if len(keys) != len(pairs):
      raise ValueError(f"{path}: the same API key is listed twice")
    return cls.from_mapping(keys)

  def tenant(self, metadata: Iterable[tuple[str, str]] | None) -> str:
    """The tenant of a gRPC call's `authorization: Bearer <key>` metadata."""
    values = [v for k, v in metadata or () if k == "authorization"]
    if len(values) != 1 or not isinstance(values[0], str):
      raise UnauthenticatedError("send one 'authorization: Bearer <API key>' metadata entry")
    return self.tenant_of(values[0])

  def tenant_of(self, authorization: str | None) -> str:
    """The tenant of an `Authorization: Bearer <key>` value (gRPC metadata or an HTTP
    header); raises UnauthenticatedError."""
    m = _BEARER_RE.fullmatch(authorization or "")
    tenant = self._index.get(_digest(m.group(1))) if m else None
    if tenant is None:
      raise UnauthenticatedError("unknown API key")
    return tenant


def cache_salt(tenant: str | None, client_salt: str, policy: str) -> str | None:
  """The salt the engine hashes into a request's prefix-cache blocks (None: no salt).

  NOTE: with a tenant, the salt always starts with "tenant/<name>/", so two
  tenants never share a block: the prefix cache keys the first block (hence
  every block of the chain) on the salt.
  """
  if client_salt and policy == "reject":
    raise InvalidRequestError(
        "cache_salt: this server sets the cache salt itself (--client-cache-salt reject); "
        "leave cache_salt empty")
  if policy == "ignore":
    client_salt = ""
  if tenant is None:
    return client_salt or None
  return f"tenant/{tenant}/{client_salt}"
