"""Cold vs warm: the incident's mixed workload through `LLM.generate` (run on a GPU).

Usage: PYTHONPATH=. python -m benchmarks.mixed_workload [--model llama3-8b] [--out DIR]

Builds one engine (random weights of a configs/ shape, bf16, prefix caching on), warms it up
(unless --no-warmup), then runs `--rounds` rounds of the incident's traffic (one shared
220-token system prompt, user prompts of 20-2,000 tokens, ~50 or ~1,500 new tokens; all
requests submitted at once; every round the same lengths with other user-prompt tokens, so
later rounds reuse only the system prompt). Round 1 is the cold run: any shape that warm-up missed compiles there. For
each round it prints wall time, compilations during the round, output tokens/s and TTFT
p50/p99, then the ratio of round 1 to the last round (the issue's target: <= 1.1).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import numpy as np

from engine.llm import LLM
from research import workload as w


def requests(round_: int, num: int, scale: float, max_model_len: int, vocab: int):
  """(prompt token ids, SamplingParams) of one round; max_tokens capped by the context.

  NOTE: every round has the same lengths (one trace); only the user prompts' token ids
  differ between rounds, so a later round reuses nothing but the shared system prompt.
  """
  out = []
  for r in w.generate(w.WorkloadConfig(num_requests=num, seed=0, scale=scale)):
    ids = dataclasses.replace(r, seed=r.seed + 1_000_003 * round_).prompt_token_ids(vocab)
    sp = r.sampling_params()
    out.append((ids, dataclasses.replace(
        sp, max_tokens=min(sp.max_tokens, max_model_len - len(ids)))))
  return out


def run_round(llm: LLM, reqs) -> dict:
  compiled = llm.engine.runner.num_compilations
  t0 = time.perf_counter()
  outs = llm.generate(prompt_token_ids=[ids for ids, _ in reqs],
                      sampling_params=[sp for _, sp in reqs], use_tqdm=False)
  wall = time.perf_counter() - t0
  ttft = np.array([o.usage.time_to_first_token_s for o in outs
                   if o.usage.time_to_first_token_s is not None])
  tokens = sum(len(o.token_ids) for o in outs)
  return dict(wall_s=round(wall, 2), compilations=llm.engine.runner.num_compilations - compiled,
              output_tokens=tokens, output_tok_s=round(tokens / wall),
              ttft_p50_s=round(float(np.percentile(ttft, 50)), 2),
              ttft_p99_s=round(float(np.percentile(ttft, 99)), 2),
              errors=sum(o.error is not None for o in outs))


def main(argv: list[str] | None = None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--model", default="llama3-8b", help="a configs/ shape (default llama3-8b)")
  ap.add_argument("--num-requests", type=int, default=200, help="per round (default 200)")
  ap.add_argument("--scale", type=float, default=1.0,
                  help="multiplies every length of the workload (default 1.0)")
  ap.add_argument("--rounds", type=int, default=2, help="rounds; the first is cold (default 2)")
  ap.add_argument("--max-num-seqs", type=int, default=256, help="(default 256)")
  ap.add_argument("--max-model-len", type=int, default=4096, help="(default 4096)")
  ap.add_argument("--max-batch-tokens", type=int, default=2048, help="(default 2048)")
  ap.add_argument("--num-decode-steps", type=int, default=1, help="(default 1)")
  ap.add_argument("--no-warmup", dest="warmup", action="store_false",
                  help="skip warm-up (default: warm up)")
  ap.add_argument("--dtype", default="bfloat16", help="(default bfloat16)")
  ap.add_argument("--out", default=None, help="folder for mixed_workload.json (default: none)")
  args = ap.parse_args(argv)
  t0 = time.perf_counter()
  llm = LLM(f"random:{args.model}", dtype=args.dtype, max_num_seqs=args.max_num_seqs,
            max_model_len=args.max_model_len, max_batch_tokens=args.max_batch_tokens,
            num_decode_steps=args.num_decode_steps, warmup=args.warmup)
  ready_s = time.perf_counter() - t0
  result = dict(model=args.model, warmup=args.warmup, ready_s=round(ready_s, 1),
                compilations_at_ready=llm.engine.runner.num_compilations, rounds=[])
  print(json.dumps(result), flush=True)
  vocab = llm.engine.model.config.vocab_size
  for i in range(args.rounds):
    r = run_round(llm, requests(i + 1, args.num_requests, args.scale, args.max_model_len, vocab))
    result["rounds"].append(r)
    print(json.dumps(dict(round=i + 1, **r)), flush=True)
  result["cold_over_warm"] = round(result["rounds"][0]["wall_s"] / result["rounds"][-1]["wall_s"], 3)
  print(json.dumps({k: v for k, v in result.items() if k != "rounds"}), flush=True)
  if args.out:
    with open(os.path.join(args.out, "mixed_workload.json"), "w") as f:
      json.dump(result, f, indent=1)
  return result


if __name__ == "__main__":
  main()
