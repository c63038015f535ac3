"""Engine configuration: one frozen dataclass, validated on construction."""
from __future__ import annotations

import dataclasses

from engine.context_limit import check_fits_cache

from engine.kv_layout import BLOCK_SIZES as _BLOCK_SIZES
from engine.kv_layout import KV_CACHE_DTYPES
from engine.spec.ngram import NgramConfig


@dataclasses.dataclass(frozen=True)
class EngineConfig:
  """Everything that shapes one engine. Two engines may differ in any field."""
  model: str | None = None               # None = the default SmolLM2-135M-Instruct
  dtype: str = "float32"                 # compute dtype of the weights
  # "auto" (= dtype), "bfloat16", or 8-bit with per-token scales: "float8_e4m3", "int8"
  kv_cache_dtype: str = "auto"
  block_size: int = 16
  num_blocks: int | None = None          # None: derived from kv_cache_memory_* below
  kv_cache_memory_fraction: float = 0.85  # of free accelerator memory (GPU)
  kv_cache_memory_bytes: int = 256 << 20  # CPU default budget
  max_batch_tokens: int = 512            # per-step token budget (decodes + prefill chunks)
  max_num_seqs: int = 64                 # running requests at most
  max_model_len: int | None = None       # None: min(model context, 4096, KV cache capacity)
  enable_prefix_caching: bool = True
  enable_chunked_prefill: bool = True
  allocator: str = "paged"               # "paged" or "contiguous" (the baseline)
  watermark: float = 0.01
  warmup: bool = False                   # compile every planned step shape at start-up
  # Persistent XLA compilation cache (engine/compile_cache.py): None =
  # $PAGEDJAX_COMPILATION_CACHE_DIR, else ~/.cache/pagedjax/xla; "" or "off" = none.
  # NOTE: process-wide; a directory JAX already uses wins.
  compilation_cache_dir: str | None = None
  seed: int = 0                          # draws seeds for requests that give none
  attention_backend: str | None = None   # None: pallas_kernels decides from the platform
  tensor_parallel: int = 1               # devices the weights and KV heads are split over
  # Decode iterations per step when no prefill runs (multi-step decode): the
  # host schedules, dispatches and reads back once per k tokens of each row.
  num_decode_steps: int = 1
  # Speculative decoding (engine/spec/): None (off) or "ngram": up to
  # num_speculative_tokens drafts per decode row by prompt lookup (the request's
  # own prompt and output, suffixes of ngram_prompt_lookup_max down to _min
  # tokens), verified in one step; the output is exactly that of decoding
  # without it (greedy and seeded sampling alike).
  speculative: str | None = None
  num_speculative_tokens: int = 4
  ngram_prompt_lookup_max: int = 4
  ngram_prompt_lookup_min: int = 1
  # Research only (sweeps, the simulator's parity tests): let the KV cache hold
  # fewer tokens than max_model_len. A request that outgrows the whole cache then
  # fails with FinishReason.ERROR, after streaming tokens; off, such a
  # max_model_len is refused at start-up (engine/context_limit.py).
  allow_small_kv_cache: bool = False

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
    if self.kv_cache_dtype not in KV_CACHE_DTYPES:
      raise ValueError(f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}, "
                       f"got {self.kv_cache_dtype!r}")
    if not isinstance(self.num_decode_steps, int) or not 1 <= self.num_decode_steps <= 64:
      raise ValueError(f"num_decode_steps must be an int in 1..64, got {self.num_decode_steps!r}")
    self._check_speculative()
    if not isinstance(self.tensor_parallel, int) or self.tensor_parallel < 1:
      raise ValueError(f"tensor_parallel must be a positive int, got {self.tensor_parallel!r}")
    if self.max_model_len is not None and self.max_model_len < 2:
      raise ValueError(f"max_model_len must be >= 2, got {self.max_model_len}")
    if (self.max_model_len is not None and self.num_blocks is not None
        and not self.allow_small_kv_cache):
      # NOTE: checked here, before any weights load; the engine checks again once
      # a memory budget has been turned into blocks.
      check_fits_cache(self.max_model_len, self.num_blocks, self.block_size,
                       f"--num-blocks {self.num_blocks}")

  def _check_speculative(self) -> None:
    if self.speculative not in (None, "ngram"):
      raise ValueError(f"speculative must be None (off) or 'ngram', got {self.speculative!r}")
    if self.speculative is None:
      return
    if self.num_decode_steps > 1:
      # NOTE: a multi-step decode samples k tokens blind; a verify step needs the
      # drafts of the tokens before it on the host. One or the other per engine.
      raise ValueError("speculative decoding cannot be combined with num_decode_steps > 1")
    self.ngram_config()           # its own checks: k in 1..32, 1 <= min <= max <= 32

  def ngram_config(self) -> NgramConfig:
    return NgramConfig(num_speculative_tokens=self.num_speculative_tokens,
                       min_n=self.ngram_prompt_lookup_min, max_n=self.ngram_prompt_lookup_max)

  @property
  def speculative_tokens(self) -> int:
    """k of the verify step: num_speculative_tokens with speculation on, else 0."""
    return self.num_speculative_tokens if self.speculative else 0

  @property
  def cache_dtype(self) -> str:
    """The KV cache's dtype name (engine/kv_layout.py): `kv_cache_dtype`, "auto" = `dtype`."""
    return self.dtype if self.kv_cache_dtype == "auto" else self.kv_cache_dtype
