"""`pagedjax bench serve`: a load generator for OpenAI-compatible HTTP servers (and
pagedjax's gRPC API).

Modules: `workloads` (the incident's traffic, fixed lengths, JSONL traces ->
`BenchRequest`s with arrival times), `openai_backend` / `grpc_backend` (one
streamed request, timed chunk by chunk), `grpc_text` (text prompts of a given
token count, for gRPC), `runner` (arrivals or a concurrency bound), `summary`
(TTFT, TPOT, ITL, throughput, goodput) and `report` (table, JSON, plots).
Nothing here imports JAX or the engine.
"""
