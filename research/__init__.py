"""Block-size research: workloads, trace replay, the real-engine sweep and the simulator.

Modules: `workload` (incident traffic + JSONL traces), `recording` (a Scheduler
subclass that snapshots memory state every step), `replay` (one driver loop
for the real engine and the simulator), `real_backend` and `simulator` (the
two backends: `LLMEngine`, and `engine.core.EngineCore` over a cost-model
runner), `cost_model` (step-time model and its fit), `metrics`, `sweep` (grids
of block size x memory mode), `compare` (simulator vs real sweep) and `report`
(CSV, JSON, plots). The commands' flags live in serving/commands/sweep_flags.py.

NOTE: it reaches the engine only through public seams: the scheduler factory
of `LLMEngine` and `EngineCore`, `Scheduler.admissible`, the KV managers'
reports (`unusable_free_blocks`, `prefix_cache`). Host-only but for
`real_backend`, which builds an `LLMEngine` (JAX) when it is used.
"""
