"""Start-up time to SERVING, cold and from the persistent compilation cache (GPU).

Usage: PYTHONPATH=. python -m benchmarks.warmup --out warmup.json [--model llama3-8b]
           [--max-num-seqs 256] [--max-model-len 4096] [--max-batch-tokens 2048]
           [--num-decode-steps 4] [--dtype bfloat16] [--runs 2] [--cache-dir DIR]

Starts `pagedjax serve --model random:<model>` (random weights; the defaults are the 8B
at the default serving configuration, prefix caching on) `--runs` times, each a fresh
process, all with one compilation-cache directory that starts empty: run 1 is cold, the
later runs load every step from the cache. Per run: seconds from process start until
grpc.health answers (listening) and until it says SERVING (warm), the step shapes the
server planned and the compilations it made (its SERVING line), compile seconds
(Prometheus) and the cache files present afterwards. Prints a table; writes the JSON.
The parent process never imports JAX, so the GPU is the servers' alone.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SERVING = re.compile(r"SERVING \((\d+) step shapes planned; (\d+) compilations in ([\d.]+) s\)")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def serve_command(args, port: int, metrics_port: int, cache_dir: str) -> list[str]:
  return [sys.executable, "-m", "serving.cli", "serve", "--host", "127.0.0.1",
          "--port", str(port), "--metrics-port", str(metrics_port),
          "--model", f"random:{args.model}", "--dtype", args.dtype,
          "--max-num-seqs", str(args.max_num_seqs), "--max-model-len", str(args.max_model_len),
          "--max-batch-tokens", str(args.max_batch_tokens), "--block-size", str(args.block_size),
          "--num-decode-steps", str(args.num_decode_steps), "--compilation-cache-dir", cache_dir,
          *args.serve_args]


def _metric(metrics_port: int, name: str) -> float | None:
  text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read()
  for line in text.decode().splitlines():
    if line.startswith(name + " "):
      return float(line.split()[1])
  return None


def _wait_serving(proc, client, t0: float, timeout: float) -> tuple[float | None, float]:
  """(seconds to the first health answer, seconds to SERVING) after `t0`."""
  listening = None
  while time.perf_counter() - t0 < timeout:
    if proc.poll() is not None:
      raise RuntimeError(f"server exited with {proc.returncode}")
    try:
      status = client.health(timeout=1.0)
    except Exception:      # NOTE: not listening yet
      time.sleep(0.2)
      continue
    listening = listening or time.perf_counter() - t0
    if status == "SERVING":
      return listening, time.perf_counter() - t0
    time.sleep(0.2)
  raise TimeoutError(f"not SERVING after {timeout:.0f} s")


def _wait_line(log_path: str, proc, timeout: float = 30.0) -> re.Match:
  """The server's SERVING line (printed just after health flips)."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline and proc.poll() is None:
    with open(log_path) as f:
      found = _SERVING.search(f.read())
    if found:
      return found
    time.sleep(0.1)
  raise RuntimeError(f"no SERVING line in {log_path}")


def run_once(args, cache_dir: str, log_path: str) -> dict:
  """One server process: start, wait for SERVING, read its numbers, SIGTERM."""
  from serving.client import PagedJaxClient        # NOTE: grpc only, no JAX
  port, metrics_port = _free_port(), _free_port()
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  # NOTE: the repository first, then whatever PYTHONPATH already held (carried wheels).
  env.update(PYTHONPATH=os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p),
             PYTHONUNBUFFERED="1")
  with open(log_path, "w") as log:
    t0 = time.perf_counter()
    proc = subprocess.Popen(serve_command(args, port, metrics_port, cache_dir), cwd=REPO,
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    client = PagedJaxClient(f"127.0.0.1:{port}")
    try:
      listening_s, serving_s = _wait_serving(proc, client, t0, args.timeout)
      compile_s = _metric(metrics_port, "pagedjax_compile_seconds_total")
      found = _wait_line(log_path, proc)
    finally:
      client.close()
      proc.send_signal(signal.SIGTERM)
      try:
        proc.wait(60)
      except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
  return {"listening_s": round(listening_s, 1), "serving_s": round(serving_s, 1),
          "planned_shapes": int(found.group(1)), "compilations": int(found.group(2)),
          "warmup_s": float(found.group(3)), "compile_seconds_metric": compile_s,
          "cache_files": sum(len(files) for _, _, files in os.walk(cache_dir)), "log": log_path}


def to_table(runs: list[dict]) -> str:
  lines = ["| run | cache | start -> listening s | start -> SERVING s | warm-up s | "
           "planned shapes | executables compiled (run 1) / loaded (later) | cache files |",
           "|" + "---|" * 8]
  for i, r in enumerate(runs):
    lines.append(f"| {i + 1} | {'cold (empty)' if i == 0 else 'warm (filled by run 1)'} | "
                 f"{r['listening_s']} | {r['serving_s']} | {r['warmup_s']} | "
                 f"{r['planned_shapes']} | {r['compilations']} | {r['cache_files']} |")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", required=True, help="where to write the JSON results")
  ap.add_argument("--model", default="llama3-8b", help="a configs/ shape (or a .json path)")
  ap.add_argument("--dtype", default="bfloat16")
  ap.add_argument("--max-num-seqs", type=int, default=256)
  ap.add_argument("--max-model-len", type=int, default=4096)
  ap.add_argument("--max-batch-tokens", type=int, default=2048)
  ap.add_argument("--block-size", type=int, default=16)
  ap.add_argument("--num-decode-steps", type=int, default=4)
  ap.add_argument("--runs", type=int, default=2, help="server starts sharing one cache dir")
  ap.add_argument("--cache-dir", default=None, help="an empty folder (default: a new temp one)")
  ap.add_argument("--timeout", type=float, default=1800, help="seconds per start, at most")
  ap.add_argument("serve_args", nargs="*", help="more `pagedjax serve` flags, after --")
  args = ap.parse_args(argv)
  cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="pagedjax-xla-")
  os.makedirs(cache_dir, exist_ok=True)
  if os.listdir(cache_dir):
    ap.error(f"--cache-dir {cache_dir} is not empty: the first run must be cold")
  logs = os.path.dirname(os.path.abspath(args.out))
  runs = []
  for i in range(args.runs):
    runs.append(run_once(args, cache_dir, os.path.join(logs, f"warmup_serve_{i + 1}.log")))
    print(json.dumps(runs[-1]), flush=True)
  result = {"model": args.model, "dtype": args.dtype, "max_num_seqs": args.max_num_seqs,
            "max_model_len": args.max_model_len, "max_batch_tokens": args.max_batch_tokens,
            "block_size": args.block_size, "num_decode_steps": args.num_decode_steps,
            "cache_dir": cache_dir, "date": time.strftime("%Y-%m-%d"), "runs": runs,
            "table": to_table(runs)}
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
  print(result["table"], flush=True)
  return result


if __name__ == "__main__":
  main()
