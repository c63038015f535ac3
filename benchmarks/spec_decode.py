"""Speculative decoding (n-gram prompt lookup): acceptance on quote-heavy prompts, and what
a verify step costs on a GPU.

Usage:
  PYTHONPATH=. python3 -m benchmarks.spec_decode --mode cpu --out DIR [--k 2,4,8]
  PYTHONPATH=. python3 -m benchmarks.spec_decode --mode gpu --out DIR \\
      --cpu-json docs/data/spec_decode_cpu.json

cpu: SmolLM2-135M-Instruct (the bundled GGUF), greedy, a batch of prompts that quote,
  summarise or rewrite a bundled incident report (benchmarks/data/incident_report.txt),
  once without speculation and once per k. Per run: draft acceptance (accepted / proposed),
  tokens per decode row per step (what one verify step of a row yields; 1 without
  speculation), tokens per engine step, wall time; and the self-check that every run's
  tokens equal those of the run without speculation. Writes DIR/spec_decode_cpu.json.
gpu: 1. self-check on the device: random-weight SmolLM2 shapes (float32, the GPU kernels),
  greedy on prompts that repeat themselves, with speculation against the engine without it
  and against the dense reference. 2. Llama-3-8B shapes (random bf16 weights): device time of
  a decode step and of a verify step with k = 2, 4, 8 drafts per row at batch 1, 16, 64
  (1024-token contexts), next to their memory roofline (weights + KV over the read-only
  bandwidth measured in this run); the projected speed-up of decoding at the acceptance the
  cpu mode measured: tokens per row-step x decode time / verify time (device time only: the
  host loop, which speculation no longer overlaps with the device, is not in it).
  Writes DIR/spec_decode_gpu.json; about 3 minutes on an H200.
"""
from __future__ import annotations

import argparse
import json
import os
import time

BATCHES, KS, CONTEXT = (1, 16, 64), (2, 4, 8), 1024
DOCUMENT = os.path.join(os.path.dirname(__file__), "data", "incident_report.txt")
TASKS = ("Quote the Timeline section of the report below word for word.",
         "Summarise the report below in five bullet points, quoting its key sentences.",
         "List every action item of the report below, copied exactly as written.",
         "Rewrite the report below as a short email to the team, keeping its sentences.")


def quote_prompts(tokenizer) -> list[list[int]]:
  with open(DOCUMENT, encoding="utf-8") as f:
    document = f.read()
  return [tokenizer.encode(tokenizer.apply_chat_template(
      [{"role": "user", "content": f"{task}\n\n{document}"}])) for task in TASKS]


def run_counted(llm, prompts, sampling) -> tuple[list[list[int]], dict]:
  """`llm.generate` with the engine's steps and decode rows counted."""
  engine, schedule = llm.engine, llm.engine.scheduler.schedule
  counts = {"engine_steps": 0, "decode_row_steps": 0}

  def counted():
    out = schedule()
    counts["engine_steps"] += not out.is_empty
    counts["decode_row_steps"] += len(out.decodes)
    return out
  engine.scheduler.schedule = counted
  before = engine.stats()
  t0 = time.perf_counter()
  outs = llm.generate(prompt_token_ids=prompts, sampling_params=sampling, use_tqdm=False)
  wall = time.perf_counter() - t0
  engine.scheduler.schedule = schedule
  after = engine.stats()
  tokens = [o.token_ids for o in outs]
  generated = sum(len(t) for t in tokens)
  proposed = after.spec_proposed_tokens_total - before.spec_proposed_tokens_total
  accepted = after.spec_accepted_tokens_total - before.spec_accepted_tokens_total
  # NOTE: each request's first token comes from its prompt's last prefill chunk.
  return tokens, dict(counts, wall_s=round(wall, 2), generated=generated,
                      proposed=proposed, accepted=accepted,
                      acceptance=round(accepted / proposed, 3) if proposed else None,
                      tokens_per_row_step=round((generated - len(prompts))
                                                / max(1, counts["decode_row_steps"]), 3),
                      tokens_per_engine_step=round(generated / counts["engine_steps"], 3))


def cpu_mode(args) -> dict:
  from engine import LLM, SamplingParams
  from models import load_model
  model = load_model(None, dtype="float32")
  prompts = quote_prompts(model.tokenizer)
  sampling = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
  shape = dict(max_num_seqs=len(prompts), max_batch_tokens=512, max_model_len=1024)
  runs = {}
  base_llm = LLM(loaded_model=model, **shape)
  run_counted(base_llm, prompts[:1], SamplingParams(max_tokens=4))        # compiles
  base, runs["off"] = run_counted(base_llm, prompts, sampling)
  for k in args.k:
    llm = LLM(loaded_model=model, speculative="ngram", num_speculative_tokens=k, **shape)
    run_counted(llm, prompts[:1], SamplingParams(max_tokens=4))
    tokens, runs[f"k={k}"] = run_counted(llm, prompts, sampling)
    runs[f"k={k}"]["tokens_equal_without_speculation"] = tokens == base
    print(f"k={k}: {runs[f'k={k}']}", flush=True)
  return {"model": "SmolLM2-135M-Instruct (float32)", "prompts": len(prompts),
          "prompt_tokens": [len(p) for p in prompts], "max_tokens": args.max_tokens,
          "ngram": "prompt_lookup_min 1, max 4", "runs": runs}


def gpu_mode(args) -> dict:
  from benchmarks import spec_step_times
  with open(args.cpu_json, encoding="utf-8") as f:
    cpu = json.load(f)
  check = spec_step_times.check_correctness()
  print("check:", check, flush=True)
  rows = project(spec_step_times.step_times(args.model, BATCHES, KS, CONTEXT), cpu)
  return {"check": check, "model": args.model, "context": CONTEXT, "rows": rows,
          "cpu_source": args.cpu_json}


def project(rows: list[dict], cpu: dict) -> list[dict]:
  """Adds to each verify row the cpu mode's tokens per row-step at its k and the speed-up
  it gives over decoding: tokens per row-step x decode time / verify time."""
  for r in rows:
    measured = cpu["runs"].get(f"k={r['k']}")
    if r["k"] and measured:
      r["tokens_per_row_step_cpu"] = measured["tokens_per_row_step"]
      r["projected_speedup"] = round(measured["tokens_per_row_step"] * r["decode_ms"]
                                     / r["step_ms"], 2)
  return rows


def to_markdown(result: dict) -> str:
  if "runs" in result:
    lines = ["| run | acceptance | tokens / row-step | tokens / engine step | engine steps | "
             "wall s | same tokens |", "|" + "---|" * 7]
    for name, r in result["runs"].items():
      lines.append(f"| {name} | {r['acceptance'] or '-'} | {r['tokens_per_row_step']} | "
                   f"{r['tokens_per_engine_step']} | {r['engine_steps']} | {r['wall_s']} | "
                   f"{r.get('tokens_equal_without_speculation', '-')} |")
    return "\n".join(lines)
  lines = ["| batch | step | ms | roofline ms | / roofline | / decode | tokens / row-step (cpu) "
           "| projected speed-up |", "|" + "---|" * 8]
  for r in result["rows"]:
    name = f"verify k={r['k']}" if r["k"] else "decode"
    lines.append(f"| {r['batch']} | {name} | {r['step_ms']:.2f} | {r['roofline_ms']:.2f} | "
                 f"{r['step_ms'] / r['roofline_ms']:.2f} | {r['step_ms'] / r['decode_ms']:.2f} "
                 f"| {r.get('tokens_per_row_step_cpu', '-')} | "
                 f"{r.get('projected_speedup', '-')} |")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--mode", choices=("cpu", "gpu"), required=True)
  ap.add_argument("--out", default=".")
  ap.add_argument("--k", default="2,4,8", help="cpu: num_speculative_tokens values, one run each")
  ap.add_argument("--max-tokens", type=int, default=128, help="cpu: new tokens per prompt")
  ap.add_argument("--cpu-json", default=None, help="gpu: the cpu mode's spec_decode_cpu.json")
  ap.add_argument("--model", default="llama3-8b", help="gpu: a configs/ shape")
  args = ap.parse_args(argv)
  args.k = [int(k) for k in args.k.split(",")]
  if args.mode == "gpu" and not args.cpu_json:
    ap.error("--mode gpu needs --cpu-json (the acceptance it projects from)")
  os.makedirs(args.out, exist_ok=True)
  result = cpu_mode(args) if args.mode == "cpu" else gpu_mode(args)
  with open(os.path.join(args.out, f"spec_decode_{args.mode}.json"), "w") as f:
    json.dump(result, f, indent=1)
  print(to_markdown(result))
  return result


if __name__ == "__main__":
  main()
