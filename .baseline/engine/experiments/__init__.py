"""Block-size research: workloads, trace replay, the real-engine sweep and the simulator.

Modules: `workload` (incident traffic + JSONL traces), `recording` (a Scheduler
subclass that snapshots memory state every step), `replay` (one driver loop
for the real engine and the simulator), `cost_model` (step-time model and its
fit), `simulator`, `metrics`, `sweep` (grids of block size x memory mode) and
`plots`.
"""
