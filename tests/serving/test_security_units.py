"""Fast units of the hostile-client defences (no model, no server): API keys,
the derived cache salt, request bounds, the bounded tokenizer pool."""
from __future__ import annotations

import threading

import pytest

from serving import auth, limits
from serving.proto.pagedjax.v1 import pagedjax_pb2 as pb
from serving.request_convert import InvalidRequestError
from serving.tokenize_pool import BoundedPool, PoolFullError

KEY_A, KEY_B = "a-key-of-tenant-a-0123", "b-key-of-tenant-b-4567"


def _md(value):
  return (("user-agent", "x"), ("authorization", value))


def test_api_keys_map_bearer_tokens_to_tenants(tmp_path):
  path = tmp_path / "keys"
  path.write_text(f"# tenant key\nalice {KEY_A}\n\nbob   {KEY_B}\n")
  keys = auth.ApiKeys.from_file(str(path))
  assert keys.tenant(_md(f"Bearer {KEY_A}")) == "alice"
  assert keys.tenant(_md(f"bearer {KEY_B}")) == "bob"
  assert KEY_A not in repr(keys)                     # only digests are kept
  for md in (_md(f"Bearer {KEY_A}x"), _md(KEY_A), _md("Bearer"), (), None,
             _md(f"Bearer {KEY_A}") + (("authorization", f"Bearer {KEY_B}"),)):
    with pytest.raises(auth.UnauthenticatedError):
      keys.tenant(md)


@pytest.mark.parametrize("text, error", [
    ("alice short\n", "at least 16"),
    (f"al/ice {KEY_A}\n", "tenant name"),
    (f"alice {KEY_A} extra\n", ":1: expected 'TENANT KEY'"),
    (f"alice {KEY_A}\nbob {KEY_A}\n", "twice"),
    ("# nothing\n", "no API keys"),
])
def test_bad_api_key_files_are_refused(tmp_path, text, error):
  path = tmp_path / "keys"
  path.write_text(text)
  with pytest.raises(ValueError, match=error):
    auth.ApiKeys.from_file(str(path))


def test_derived_salt_never_lets_one_tenant_name_another():
  salts = {auth.cache_salt(t, s, "allow") for t in ("a", "b")
           for s in ("", "x", "tenant/a/", "tenant/b/x", "/x")}
  assert len(salts) == 10                            # all distinct
  assert auth.cache_salt("b", "tenant/a/x", "allow") != auth.cache_salt("a", "x", "allow")
  assert auth.cache_salt("a", "x", "ignore") == auth.cache_salt("a", "", "allow") == "tenant/a/"
  assert auth.cache_salt(None, "x", "allow") == "x"
  assert auth.cache_salt(None, "x", "ignore") is None and auth.cache_salt(None, "", "allow") is None
  assert auth.cache_salt("a", "", "reject") == "tenant/a/"
  with pytest.raises(InvalidRequestError, match="cache_salt"):
    auth.cache_salt("a", "x", "reject")


LIMITS = limits.RequestLimits()


@pytest.mark.parametrize("request_kwargs, field", [
    (dict(request_id="r" * 257), "request_id"),
    (dict(cache_salt="s" * 257), "cache_salt"),
    (dict(sampling=pb.SamplingParams(stop=["x"] * 17)), "sampling.stop has 17"),
    (dict(sampling=pb.SamplingParams(stop=["x", "y" * 257])), "sampling.stop[1]"),
    (dict(sampling=pb.SamplingParams(stop_token_ids=[1] * 257)), "sampling.stop_token_ids"),
    (dict(prompt="é" * 501), "prompt is 1002 bytes; at most 1000"),
    (dict(messages=[pb.ChatMessage(role="user", content="x" * 1000)]), "messages is 1004 bytes"),
    (dict(messages=[pb.ChatMessage(role="user", content="x")] * 1025), "messages has 1025"),
])
def test_every_bound_names_its_field(request_kwargs, field):
  req = pb.GenerateRequest(**{"prompt": "hi", **request_kwargs})
  if "messages" in request_kwargs:
    req.prompt = ""
  with pytest.raises(InvalidRequestError) as err:
    limits.check_generate(req, LIMITS, max_prompt_bytes=1000)
  assert str(err.value).startswith(field.split(" ")[0]) and field in str(err.value)


def test_requests_at_the_bounds_pass():
  req = pb.GenerateRequest(request_id="r" * 256, cache_salt="s" * 256, prompt="x" * 1000,
                           sampling=pb.SamplingParams(stop=["y" * 256] * 16,
                                                      stop_token_ids=[1] * 256))
  limits.check_generate(req, LIMITS, max_prompt_bytes=1000)
  limits.check_tokenize(pb.TokenizeRequest(text="x" * 1000), LIMITS, 1000)
  with pytest.raises(InvalidRequestError, match="^text is 1001 bytes"):
    limits.check_tokenize(pb.TokenizeRequest(text="x" * 1001), LIMITS, 1000)
  assert LIMITS.max_prompt_bytes(256, 162) == 256 * 162
  assert LIMITS.max_prompt_bytes(10 ** 6, 162) == limits.MAX_MESSAGE_BYTES


def test_bounded_pool_refuses_work_past_its_queue():
  pool = BoundedPool(workers=1, max_queued=0)
  release, started = threading.Event(), threading.Event()

  def block():
    started.set()
    release.wait(10)
    return "done"

  try:
    results = []
    first = threading.Thread(target=lambda: results.append(pool.run(block)))
    first.start()
    assert started.wait(10)
    with pytest.raises(PoolFullError, match="retry later"):
      pool.run(lambda: "refused")
    release.set()
    first.join(10)
    assert results == ["done"]
    assert pool.run(lambda: 7) == 7                   # the slot came back
    with pytest.raises(ZeroDivisionError):
      pool.run(lambda: 1 / 0)
    assert pool.run(lambda: 8) == 8                   # also after a failure
  finally:
    release.set()
    pool.shutdown()



def test_serve_binds_loopback_by_default_and_its_flags_match_the_config():
  import argparse

  from serving.commands import serve
  from serving.server import ServerConfig
  from serving.help_format import HelpFormatter
  parser = argparse.ArgumentParser(formatter_class=HelpFormatter)   # as `pagedjax` builds it
  serve.add_arguments(parser)
  args = parser.parse_args([])
  assert args.host == ServerConfig().host == "127.0.0.1"
  assert args.client_cache_salt == ServerConfig().client_cache_salt
  assert args.api_key_file is None and ServerConfig().api_keys is None
  assert "(default: 127.0.0.1)" in parser.format_help()
  with pytest.raises(ValueError, match="client_cache_salt"):
    ServerConfig(client_cache_salt="maybe")
