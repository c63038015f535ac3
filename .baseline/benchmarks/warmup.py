"""Start-up compile time: `--warmup` with one compile thread vs a thread pool (GPU).

Usage: PYTHONPATH=. python -m benchmarks.warmup [--model llama3-8b] [--threads 16]
           [--max-num-seqs 8] [--max-batch-tokens 64] [--max-model-len 256]

Builds an engine on random weights, compiles every bucket shape x sampler variant
(`ModelRunner.warmup`), then generates a few tokens and checks that nothing more compiled.
Run it once per thread count, each in a fresh process (executables are shared within one).
Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from engine.llm import LLM
from engine.sampling_params import SamplingParams


def main(argv: list[str] | None = None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--model", default="llama3-8b", help="a configs/ shape, random weights")
  ap.add_argument("--dtype", default="bfloat16")
  ap.add_argument("--threads", type=int, default=None, help="compile threads (default: cores)")
  ap.add_argument("--max-num-seqs", type=int, default=8)
  ap.add_argument("--max-batch-tokens", type=int, default=64)
  ap.add_argument("--max-model-len", type=int, default=256)
  args = ap.parse_args(argv)
  llm = LLM(f"random:{args.model}", dtype=args.dtype, num_blocks=2048,
            max_num_seqs=args.max_num_seqs, max_batch_tokens=args.max_batch_tokens,
            max_model_len=args.max_model_len)
  runner = llm.engine.runner
  t0 = time.perf_counter()
  runner.warmup(threads=args.threads)
  warmup_s = time.perf_counter() - t0
  compiled = runner.num_compilations
  rng = np.random.default_rng(0)
  prompts = [rng.integers(0, 1000, 40).tolist() for _ in range(min(8, args.max_num_seqs))]
  llm.generate(prompt_token_ids=prompts, use_tqdm=False,
               sampling_params=SamplingParams(temperature=0, max_tokens=16, ignore_eos=True))
  result = {"model": args.model, "threads": args.threads, "compilations": compiled,
            "warmup_s": round(warmup_s, 1),
            "compiled_during_generate": runner.num_compilations - compiled}
  print(json.dumps(result), flush=True)
  return result


if __name__ == "__main__":
  main()
