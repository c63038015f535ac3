"""`pagedjax client`: send one prompt to a running `pagedjax serve`.

Streams the answer to the terminal as it is generated (default), or prints it
whole (`--no-stream`), or prints the result as JSON (`--json`).

examples:
  pagedjax client --port 50051 "Why is the sky blue?"
  pagedjax client --chat --system "Be brief." --max-tokens 64 "Tell me a joke"
  pagedjax client --json --temperature 0 "2+2="
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from serving.sampling_flags import add_sampling_args, sampling_kwargs_from_args

NAME = "client"
HELP = "send a prompt to a running pagedjax server and print the answer"


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("prompt", help="the prompt (a user message with --chat)")
  parser.add_argument("--host", default="localhost")
  parser.add_argument("--port", type=int, default=50051)
  parser.add_argument("--chat", action="store_true",
                      help="send the prompt as a user chat message (chat template applied)")
  parser.add_argument("--system", default=None, help="system message (implies --chat)")
  parser.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True,
                      help="stream text as it is generated (default) or print it at the end")
  parser.add_argument("--json", action="store_true",
                      help="print one JSON object: text, token_ids, finish_reason, usage")
  parser.add_argument("--request-id", default="")
  parser.add_argument("--cache-salt", default="")
  parser.add_argument("--priority", type=int, default=0)
  parser.add_argument("--timeout", type=float, default=None, help="deadline in seconds")
  add_sampling_args(parser)


def run(args: argparse.Namespace) -> int:
  import grpc
  from serving.client import PagedJaxClient

  kwargs = dict(request_id=args.request_id, cache_salt=args.cache_salt,
                priority=args.priority, timeout=args.timeout,
                **sampling_kwargs_from_args(args))
  if args.chat or args.system is not None:
    msgs = [{"role": "system", "content": args.system}] if args.system else []
    kwargs["messages"] = msgs + [{"role": "user", "content": args.prompt}]
  else:
    kwargs["prompt"] = args.prompt
  try:
    with PagedJaxClient(f"{args.host}:{args.port}") as client:
      if args.json or not args.stream:
        result = client.generate(**kwargs)
        if args.json:
          print(json.dumps(dataclasses.asdict(result), ensure_ascii=False))
        else:
          print(result.text)
        return 0
      return _stream(client, kwargs)
  except grpc.RpcError as e:
    print(f"pagedjax client: {e.code().name}: {e.details()}", file=sys.stderr)
    return 1


def _stream(client, kwargs) -> int:
  stream = client.generate_stream(**kwargs)
  try:
    for chunk in stream:
      sys.stdout.write(chunk.text)
      sys.stdout.flush()
      if chunk.finished:
        u = chunk.usage
        sys.stdout.write("\n")
        print(f"[{chunk.finish_reason}: {u.prompt_tokens} prompt ({u.cached_prompt_tokens} "
              f"cached) + {u.completion_tokens} generated tokens, "
              f"TTFT {u.time_to_first_token_s:.3f}s]", file=sys.stderr)
  except KeyboardInterrupt:
    stream.cancel()  # NOTE: the server aborts the request and frees its blocks.
    raise
  return 0
