"""The block-size x memory-mode grid, run through the real engine or the simulator.

Every run gets the same KV memory budget in bytes, so num_blocks shrinks as
the block size grows (num_blocks = budget // bytes_per_block + the null
block). Modes: contiguous (the incident's allocator), paged, and paged with
prefix caching; each with and without chunked prefill.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from engine.config import EngineConfig
from engine.experiments import metrics
from engine.experiments.cost_model import CostModel, ModelShape
from engine.experiments.replay import Backend, ReplayOptions, RunLog, replay
from engine.experiments.workload import TraceRequest
from engine.runner import bytes_per_block

BLOCK_SIZES = (8, 16, 32, 64, 128, 256)
MODES = {                          # name: (allocator, prefix caching)
    "contiguous": ("contiguous", False),
    "paged": ("paged", False),
    "paged+prefix": ("paged", True),
}


@dataclasses.dataclass(frozen=True)
class SweepConfig:
  """The grid and what every run shares."""
  kv_budget_bytes: int
  block_sizes: tuple[int, ...] = BLOCK_SIZES
  modes: tuple[str, ...] = tuple(MODES)
  chunked_prefill: tuple[bool, ...] = (True, False)
  base: EngineConfig = EngineConfig()      # model, dtype, token budget, max_num_seqs, ...
  replay: ReplayOptions = ReplayOptions()

  def __post_init__(self):
    unknown = sorted(set(self.modes) - set(MODES))
    if unknown:
      raise ValueError(f"unknown mode(s) {unknown}; known: {sorted(MODES)}")
    bad = sorted(set(self.block_sizes) - set(BLOCK_SIZES))
    if bad:
      raise ValueError(f"block sizes must be in {BLOCK_SIZES}, got {bad}")
    if self.kv_budget_bytes <= 0:
      raise ValueError("kv_budget_bytes must be > 0")
    if not self.block_sizes or not self.modes or not self.chunked_prefill:
      raise ValueError("the grid is empty")


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One cell of the grid."""
  mode: str
  chunked_prefill: bool
  block_size: int
  num_blocks: int
  config: EngineConfig

  @property
  def label(self) -> str:
    return f"{self.mode}/{'chunked' if self.chunked_prefill else 'whole'}"


def run_specs(config: SweepConfig, shape: ModelShape) -> list[RunSpec]:
  """The grid's runs, in a stable order."""
  specs = []
  for mode in config.modes:
    allocator, prefix = MODES[mode]
    for chunked in config.chunked_prefill:
      for bs in config.block_sizes:
        # NOTE: a ModelShape has the model config's KV fields, so the runner's formula applies.
        num_blocks = config.kv_budget_bytes // bytes_per_block(shape, bs, shape.dtype) + 1
        if num_blocks < 2:
          raise ValueError(f"KV budget of {config.kv_budget_bytes} bytes holds no block of {bs}")
        cfg = dataclasses.replace(config.base, block_size=bs, num_blocks=num_blocks,
                                  allocator=allocator, enable_prefix_caching=prefix,
                                  enable_chunked_prefill=chunked)
        specs.append(RunSpec(mode, chunked, bs, num_blocks, cfg))
  return specs


def check_trace(trace: Sequence[TraceRequest], max_model_len: int) -> None:
  """Every request must fit the context, or the contiguous region would not exist."""
  too_long = [r.request_id for r in trace if r.total_len > max_model_len]
  if too_long:
    raise ValueError(f"{len(too_long)} request(s) need more than max_model_len={max_model_len} "
                     f"tokens (prompt + max_tokens), e.g. {too_long[0]}")


BackendFactory = Callable[[RunSpec], Backend]


def run_one(trace: Sequence[TraceRequest], spec: RunSpec, make_backend: BackendFactory,
            options: ReplayOptions, cost_model: CostModel | None = None,
            ) -> tuple[dict, RunLog]:
  """Replays `trace` on one backend; returns the sweep row and the raw log."""
  log = replay(make_backend(spec), trace, options)
  row = {"mode": spec.label, "memory": spec.mode, "chunked_prefill": spec.chunked_prefill,
         "block_size": spec.block_size, "num_blocks": spec.num_blocks,
         **metrics.summarize(log, cost_model)}
  return row, log


def run_sweep(trace: Sequence[TraceRequest], config: SweepConfig, shape: ModelShape,
              make_backend: BackendFactory, cost_model: CostModel | None = None,
              progress: bool = True,
              on_row: Callable[[list[dict], list[dict]], None] | None = None,
              ) -> tuple[list[dict], list[dict]]:
  """Runs the grid; returns (rows, timed steps as dicts for a cost-model fit).

  `on_row(rows, steps)` (so far) is called after each run, e.g. to save partial results.
  """
  from tqdm import tqdm
  specs = run_specs(config, shape)
  rows, steps = [], []
  bar = tqdm(specs, desc="runs", unit="run", disable=not progress)
  for spec in bar:
    bar.set_postfix_str(f"{spec.label} bs={spec.block_size}")
    row, log = run_one(trace, spec, make_backend, config.replay, cost_model)
    rows.append(row)
    steps += [{"mode": spec.label, "block_size": spec.block_size, "features": f, "seconds": s}
              for f, s in log.timed_steps]
    if on_row is not None:
      on_row(rows, steps)
  return rows, steps
