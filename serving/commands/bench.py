"""`pagedjax bench serve`: load-test a running server and report TTFT, TPOT, ITL.

examples:
  pagedjax bench serve --base-url http://127.0.0.1:8000 --workload fixed \\
      --input-len 128 --output-len 256 --concurrency 64 --num-requests 512 --out runs/c64
  pagedjax bench serve --base-url http://127.0.0.1:8000 --workload incident --rate 2 \\
      --num-requests 200 --slo-ttft 500 --slo-tpot 50 --out runs/incident-r2
  pagedjax bench serve --grpc 127.0.0.1:50051 --trace trace.jsonl --out runs/trace

Works against any OpenAI-compatible server (/v1/completions with token-id
prompts, streamed); --grpc drives a pagedjax gRPC server instead.
"""
from __future__ import annotations

import argparse
import asyncio
import sys

from serving.help_format import HelpFormatter

NAME = "bench"
HELP = "benchmark a running server (bench serve: TTFT, TPOT, ITL, throughput, goodput)"


def register(subparsers) -> argparse.ArgumentParser:
  parser = subparsers.add_parser(NAME, help=HELP, description=HELP)
  sub = parser.add_subparsers(dest="bench_command", metavar="BENCHMARK")
  sub.required = True
  serve = sub.add_parser("serve", help="load-test a server over HTTP or gRPC",
                         description=__doc__, formatter_class=HelpFormatter)
  add_serve_arguments(serve)
  serve.set_defaults(_run=run_serve)
  return parser


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
  target = p.add_mutually_exclusive_group(required=True)
  target.add_argument("--base-url", help="an OpenAI-compatible server, e.g. http://127.0.0.1:8000 "
                           "(default: none; this or --grpc)")
  target.add_argument("--grpc", metavar="HOST:PORT", help="a pagedjax gRPC server (default: none; this or --base-url)")
  p.add_argument("--model", help="model id to request (default: the first of GET /v1/models)")
  p.add_argument("--api-key", help="sent as 'Authorization: Bearer KEY' (default: none)")
  p.add_argument("--workload", choices=("incident", "fixed"), default="incident",
                 help="incident: the incident's chat + report traffic; fixed: --input-len "
                      "random token ids in, --output-len out")
  p.add_argument("--trace", help="replay a JSONL trace (research.workload format) "
                                 "instead of --workload, at its own arrival times unless "
                                 "--rate/--concurrency is given (default: none)")
  load = p.add_mutually_exclusive_group()
  load.add_argument("--rate", type=float,
                    help="Poisson arrivals per second, 'inf' for all at once (default: none; "
                         "give this, --concurrency or --trace)")
  load.add_argument("--concurrency", type=int, help="keep this many requests in flight (default: none)")
  p.add_argument("--num-requests", type=int, default=None,
                 help="requests to send (default: 100; a trace: all of it)")
  p.add_argument("--input-len", type=int, default=128, help="fixed: prompt tokens")
  p.add_argument("--output-len", type=int, default=256,
                 help="fixed: output tokens")
  p.add_argument("--scale", type=float, default=1.0,
                 help="incident: multiply prompt and output lengths")
  p.add_argument("--vocab-size", type=int, default=32000,
                 help="prompt token ids are drawn from 1..N-1 (at most the served "
                      "model's vocabulary)")
  p.add_argument("--seed", type=int, default=0, help="draws prompts and arrivals")
  p.add_argument("--slo-ttft", type=float, help="goodput SLO: time to first token, ms (default: none, no TTFT SLO)")
  p.add_argument("--slo-tpot", type=float, help="goodput SLO: time per output token, ms (default: none, no TPOT SLO)")
  p.add_argument("--no-ignore-eos", dest="ignore_eos", action="store_false",
                 help="do not send ignore_eos (for servers that refuse it; outputs may then "
                      "be shorter than planned)")
  p.add_argument("--timeout", type=float, default=600.0,
                 help="seconds one request may take")
  p.add_argument("--out", required=True, help="folder for results.json, latency_cdf.png, "
                                              "table.txt")


def _requests(args) -> list:
  from serving.bench import workloads as wl
  n = args.num_requests
  if n is not None and n < 1:
    raise ValueError(f"--num-requests must be >= 1, got {n}")
  rate = args.rate if args.rate is not None else float("inf")
  if args.trace:
    return wl.from_trace_file(args.trace, n, args.rate, args.seed, args.vocab_size)
  if args.rate is None and args.concurrency is None:
    raise ValueError("give --rate or --concurrency (or --trace for its own arrival times)")
  n = 100 if n is None else n
  if args.workload == "fixed":
    return wl.fixed(n, args.input_len, args.output_len, rate, args.seed, args.vocab_size)
  return wl.incident(n, rate, args.seed, args.scale, args.vocab_size)


def _backend(args):
  if args.grpc:
    from serving.bench.grpc_backend import GrpcBackend
    return GrpcBackend(args.grpc, args.timeout)
  from serving.bench.openai_backend import OpenAIBackend
  return OpenAIBackend(args.base_url, args.model, args.api_key, args.ignore_eos, args.timeout)


async def _bench(args, requests) -> tuple:
  from serving.bench import runner
  async with _backend(args) as backend:
    result = await runner.run(backend, requests, args.concurrency)
    return result, backend.model


def run_serve(args: argparse.Namespace) -> int:
  """Runs the benchmark, prints the table, writes the files; 1 if nothing completed."""
  from serving.bench import report, summary

  if args.concurrency is not None and args.concurrency < 1:
    raise ValueError(f"--concurrency must be >= 1, got {args.concurrency}")
  slo = summary.Slo(None if args.slo_ttft is None else args.slo_ttft / 1e3,
                    None if args.slo_tpot is None else args.slo_tpot / 1e3)
  requests = _requests(args)
  try:
    result, model = asyncio.run(_bench(args, requests))
  except RuntimeError as e:
    print(f"pagedjax bench serve: {e}", file=sys.stderr)
    return 1
  figures = summary.summarize(result.results, result.duration_s, slo)
  load = (f"concurrency {args.concurrency}" if args.concurrency is not None else
          f"rate {args.rate}/s" if args.rate is not None else "trace arrivals")
  title = f"{args.trace or args.workload}, {load}, {model or args.grpc}"
  config = {k: v for k, v in vars(args).items() if not k.startswith("_")}
  config["model"] = model
  paths = report.write_all(args.out, config, figures, result.results, title)
  print(report.table(figures, title))
  print("wrote " + ", ".join(paths))
  return 0 if figures["completed"] else 1
