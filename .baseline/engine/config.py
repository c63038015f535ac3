"""Engine configuration: one frozen dataclass, validated on construction."""
from __future__ import annotations

import dataclasses

_BLOCK_SIZES = tuple(2 ** i for i in range(3, 9))   # 8 … 256


@dataclasses.dataclass(frozen=True)
class EngineConfig:
  """Everything that shapes one engine. Two engines may differ in any field."""
  model: str | None = None               # None = the default SmolLM2-135M-Instruct
  dtype: str = "float32"                 # compute dtype of the weights
  kv_cache_dtype: str | None = None      # default: same as dtype
  block_size: int = 16
  num_blocks: int | None = None          # None: derived from kv_cache_memory_* below
  kv_cache_memory_fraction: float = 0.85  # of free accelerator memory (GPU)
  kv_cache_memory_bytes: int = 256 << 20  # CPU default budget
  max_batch_tokens: int = 512            # per-step token budget (decodes + prefill chunks)
  max_num_seqs: int = 64                 # running requests at most
  max_model_len: int | None = None       # None: min(model context, 4096)
  enable_prefix_caching: bool = True
  enable_chunked_prefill: bool = True
  allocator: str = "paged"               # "paged" or "contiguous" (the baseline)
  watermark: float = 0.01
  warmup: bool = False                   # compile every shape bucket at start-up
  seed: int = 0                          # draws seeds for requests that give none
  attention_backend: str | None = None   # None: pallas_kernels decides from the platform
  tensor_parallel: int = 1               # devices the weights and KV heads are split over
  # Decode iterations per step when no prefill runs (multi-step decode): the
  # host schedules, dispatches and reads back once per k tokens of each row.
  num_decode_steps: int = 1

  def __post_init__(self):
    if self.block_size not in _BLOCK_SIZES:
      raise ValueError(f"block_size must be a power of two in 8..256, got {self.block_size}")
    if self.num_blocks is not None and self.num_blocks < 2:
      raise ValueError(f"num_blocks must be >= 2 (block 0 is reserved), got {self.num_blocks}")
    if self.allocator not in ("paged", "contiguous"):
      raise ValueError(f"allocator must be 'paged' or 'contiguous', got {self.allocator!r}")
    if self.max_batch_tokens < 1 or self.max_num_seqs < 1:
      raise ValueError("max_batch_tokens and max_num_seqs must be positive")
    if not 0.0 < self.kv_cache_memory_fraction <= 1.0:
      raise ValueError("kv_cache_memory_fraction must be in (0, 1]")
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"dtype must be float32 or bfloat16, got {self.dtype!r}")
    if not isinstance(self.num_decode_steps, int) or not 1 <= self.num_decode_steps <= 64:
      raise ValueError(f"num_decode_steps must be an int in 1..64, got {self.num_decode_steps!r}")
    if not isinstance(self.tensor_parallel, int) or self.tensor_parallel < 1:
      raise ValueError(f"tensor_parallel must be a positive int, got {self.tensor_parallel!r}")

  @property
  def cache_dtype(self) -> str:
    return self.kv_cache_dtype or self.dtype
