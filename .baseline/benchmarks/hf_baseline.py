"""HF transformers `generate` on the same shapes as benchmarks/throughput.py (GPU, bf16).

Usage: python -m benchmarks.hf_baseline --out DIR [--models ...] [--batches ...]
           [--variants eager,compiled]
Random weights from our configs/<name>.json (HF config format), a static KV cache,
greedy, 128-token prompts x 256 new tokens; writes hf.json
{"<model>/<batch>/<variant>": {...}}. Two variants of the same `generate` call:
"eager" (static cache, `disable_compile=True`) and "compiled" (transformers' own
torch.compile of the static-cache forward). NOTE: each is warmed up with an identical
call first, so the timed call never compiles (a shorter warm-up call recompiled).
Run in its own process: torch and JAX should not share the GPU's memory.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch
import transformers

PROMPT, NEW = 128, 256
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def run(name: str, batch: int, variant: str) -> dict:
  with open(os.path.join(CONFIGS, f"{name}.json")) as f:
    cfg = transformers.AutoConfig.for_model(**json.load(f))
  with torch.device("cuda"):
    model = transformers.AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.bfloat16)
  model.eval()
  ids = torch.randint(0, cfg.vocab_size, (batch, PROMPT), device="cuda")
  kwargs = dict(attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=0,
                cache_implementation="static", max_new_tokens=NEW, min_new_tokens=NEW,
                disable_compile=variant == "eager")
  with torch.inference_mode():
    t0 = time.perf_counter()
    model.generate(ids, **kwargs)     # warm-up: the same shapes as the timed call
    torch.cuda.synchronize()
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = model.generate(ids, **kwargs)
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
  generated = (out.shape[1] - PROMPT) * batch
  del model
  torch.cuda.empty_cache()
  return {"tokens_per_s": generated / wall, "wall_s": wall, "warm_up_s": warm,
          "generated": generated,
          "transformers": transformers.__version__, "torch": torch.__version__}


def main():
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--out", default=".")
  ap.add_argument("--models", default="llama3.2-1b,llama3-8b")
  ap.add_argument("--batches", default="64,256")
  ap.add_argument("--variants", default="eager,compiled")
  args = ap.parse_args()
  results = {}
  for variant in args.variants.split(","):
    for name in args.models.split(","):
      for batch in (int(b) for b in args.batches.split(",")):
        key = f"{name}/{batch}/{variant}"
        try:
          results[key] = run(name, batch, variant)
        except Exception as e:  # pylint: disable=broad-except
          results[key] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        print(key, results[key], flush=True)
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "hf.json"), "w") as f:   # after each: a timeout keeps some
          json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
