"""Paged-attention kernels (Pallas) and their pure-jnp references.

Cache layout (one array per layer):
  kv_cache [num_blocks, num_kv_heads, 2, block_size, head_dim]
K at index 0 and V at index 1 of axis 2; token slot s lives in block
s // block_size at offset s % block_size; block 0 is the null block that
padded tokens write to and no sequence reads. See docs/kernels.md.
"""

from pallas_kernels.backend import default_backend
from pallas_kernels.backend import resolve_backend
from pallas_kernels.decode import paged_decode_attention
from pallas_kernels.decode_reference import paged_decode_attention_reference
from pallas_kernels.kv_write import write_kv
from pallas_kernels.kv_write import write_kv_reference
from pallas_kernels.prefill import paged_prefill_attention
from pallas_kernels.prefill_reference import paged_prefill_attention_reference

__all__ = [
    "default_backend",
    "paged_decode_attention",
    "paged_decode_attention_reference",
    "paged_prefill_attention",
    "paged_prefill_attention_reference",
    "resolve_backend",
    "write_kv",
    "write_kv_reference",
]
