"""One process of a 2-process, 4-device tensor-parallel engine run (multi-controller JAX).

Started twice by test_multihost.py: `multihost_worker.py PROCESS_ID PORT`, each
with XLA_FLAGS=--xla_force_host_platform_device_count=2. Both processes join
through `jax.distributed.initialize`, see the 4 global CPU devices (2 their
own), and run the same engine over the global ("tp",) mesh with the same
requests, as hosts of a multi-host deployment would. Gloo carries the
cross-process all-reduces. Prints one JSON line.
"""
from __future__ import annotations

import json
import sys

import jax


def main(process_id: int, port: int) -> None:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                             process_id=process_id, initialization_timeout=120)
  from tests.parallel.tp_worker import generate, tiny_model, tiny_prompts
  result, llm = generate(tiny_model(), 4, tiny_prompts())
  cache = llm.engine.runner.kv_cache   # [num_layers * num_blocks, kv_heads, 2, block_size, head_dim]
  shards = sorted(cache.addressable_shards, key=lambda s: s.device.id)
  report = {
      "process_index": jax.process_index(), "process_count": jax.process_count(),
      "device_count": jax.device_count(), "local_device_count": jax.local_device_count(),
      "mesh_size": llm.engine.mesh.size, "tokens": result["tokens"],
      "local_heads": [[s.index[1].start, s.index[1].stop] for s in shards],
      "local_shard_shapes": [list(s.data.shape) for s in shards],
  }
  print(json.dumps(report), flush=True)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]))
