"""`pagedjax client`: send one prompt to a running `pagedjax serve`.

Streams the answer to the terminal as it is generated (default), or prints it
whole (`--no-stream`), or prints the result as JSON (`--json`). PROMPT is a
user message with the model's chat template applied, and sampling is greedy
for up to 128 tokens, as with `pagedjax generate` (SamplingParams' defaults).
Exit status 1 on an RPC error, 2 on a bad flag value (checked before sending).

examples:
  pagedjax client --port 50051 "Why is the sky blue?"
  pagedjax client --system "Be brief." --max-tokens 64 "Tell me a joke"
  pagedjax client --no-chat-template --json "The capital of France is"
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from serving.cli_output import cut_notice, print_logprobs
from serving.prompt_flags import add_chat_template_arg, check_prompt, user_messages
from serving.sampling_flags import (add_sampling_args, sampling_kwargs_from_args,
                                    sampling_params_from_args)

NAME = "client"
API_KEY_ENV = "PAGEDJAX_API_KEY"
HELP = "send a prompt to a running pagedjax server and print the answer"


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("prompt", help="the user message (raw text with --no-chat-template)")
  parser.add_argument("--host", default="localhost", help="the server's address")
  parser.add_argument("--port", type=int, default=50051, help="the server's gRPC port")
  add_chat_template_arg(parser, "PROMPT")
  parser.add_argument("--system", default=None,
                      help="system message sent before PROMPT (default: none)")
  parser.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True,
                      help="stream text as it is generated, or print it at the end")
  parser.add_argument("--json", action="store_true",
                      help="print one JSON object: text, token_ids, finish_reason, usage")
  parser.add_argument("--request-id", default="",
                      help="an id the server echoes back")
  parser.add_argument("--cache-salt", default="",
                      help="prefix-cache isolation key: requests share cached blocks only "
                           "with the same salt (default: empty; the shared cache)")
  parser.add_argument("--priority", type=int, default=0,
                      help="scheduling priority, lower = more important")
  parser.add_argument("--timeout", type=float, default=None,
                      help="deadline in seconds (default: none)")
  parser.add_argument("--api-key", default=None,
                      help=f"API key of a server started with --api-key-file (default: "
                           f"${API_KEY_ENV} if set, else none)")
  add_sampling_args(parser)


def _request_kwargs(args: argparse.Namespace) -> dict:
  """The request, checked here first so errors name the flags and nothing is sent."""
  check_prompt(args.prompt)
  sampling_params_from_args(args)
  kwargs = dict(request_id=args.request_id, cache_salt=args.cache_salt,
                priority=args.priority, timeout=args.timeout,
                **sampling_kwargs_from_args(args))
  if args.chat_template:
    kwargs["messages"] = user_messages(args.prompt, args.system)
  elif args.system is not None:
    raise ValueError("--system needs the chat template (drop --no-chat-template)")
  else:
    kwargs["prompt"] = args.prompt
  return kwargs


def run(args: argparse.Namespace) -> int:
  import grpc
  from serving.client import PagedJaxClient

  kwargs = _request_kwargs(args)
  try:
    api_key = args.api_key or os.environ.get(API_KEY_ENV)
    with PagedJaxClient(f"{args.host}:{args.port}", api_key=api_key) as client:
      if args.json or not args.stream:
        result = client.generate(**kwargs)
        if args.json:
          print(json.dumps(dataclasses.asdict(result), ensure_ascii=False))
          return 0
        print(result.text)
        _after_answer(args, result.finish_reason, result.usage, result.token_ids,
                      result.logprobs)
        return 0
      return _stream(client, kwargs, args)
  except grpc.RpcError as e:
    print(f"pagedjax client: {e.code().name}: {e.details()}", file=sys.stderr)
    return 1


def _after_answer(args, finish_reason, usage, token_ids, logprobs) -> None:
  """Plain mode: logprobs table and the cut notice, on stderr."""
  if args.logprobs:
    print_logprobs(token_ids, logprobs)
  notice = cut_notice(finish_reason, usage.completion_tokens, args.max_tokens)
  if notice:
    print(notice, file=sys.stderr)


def _stream(client, kwargs, args) -> int:
  stream = client.generate_stream(**kwargs)
  token_ids, logprobs = [], []
  try:
    for chunk in stream:
      sys.stdout.write(chunk.text)
      sys.stdout.flush()
      token_ids += chunk.token_ids
      logprobs += chunk.logprobs
      if chunk.finished:
        u = chunk.usage
        sys.stdout.write("\n")
        print(f"[{chunk.finish_reason}: {u.prompt_tokens} prompt ({u.cached_prompt_tokens} "
              f"cached) + {u.completion_tokens} generated tokens, "
              f"TTFT {u.time_to_first_token_s:.3f}s]", file=sys.stderr)
        _after_answer(args, chunk.finish_reason, u, token_ids, logprobs)
  except KeyboardInterrupt:
    stream.cancel()  # NOTE: the server aborts the request and frees its blocks.
    raise
  return 0
