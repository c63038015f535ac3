"""Runs the tensor-parallel scenarios on 4 CPU devices and prints one JSON report.

Started by test_tensor_parallel.py in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=4, since JAX reads that flag
once, when it starts (other test modules in the pytest process import it first).
Every fact the tests check is measured here on the real arrays and compiled HLO.
"""
from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from engine import LLM, EngineConfig, LLMEngine, SamplingParams, parallel
from engine import packing
from engine.step_inputs import empty_decode
from engine.steps import make_steps
from models import LoadedModel, ModelConfig, load_model
from models.fused import fuse_projections
from models.weights.layout import expected_shape, param_entries, set_path
from benchmarks import hlo

MAX_TOKENS = 12
ENGINE = dict(block_size=8, num_blocks=96, max_num_seqs=4, max_batch_tokens=32,
              max_model_len=160)
# NOTE: whole chat prompts in one prefill step: fewer shapes for the 30-layer model to compile.
SMOLLM_ENGINE = dict(ENGINE, max_batch_tokens=128)


def tiny_config() -> ModelConfig:
  """8 query heads over 4 kv heads (GQA 2:1), splittable 1, 2 and 4 ways."""
  return ModelConfig(vocab_size=384, hidden_size=64, intermediate_size=128, num_layers=2,
                     num_heads=8, num_kv_heads=4, head_dim=16, max_position_embeddings=256,
                     rope_theta=10000.0, eos_token_ids=())


def tiny_model(seed: int = 0) -> LoadedModel:
  """Host-resident random weights scaled 1/sqrt(fan_in), so greedy picks are clear-cut."""
  config, rng, params = tiny_config(), np.random.default_rng(seed), {}
  for path, _, _ in param_entries(config):
    shape = expected_shape(config, path)
    if path[-1] == "scale":
      value = 1.0 + 0.1 * rng.standard_normal(shape)
    elif path == ("embed",):
      value = rng.standard_normal(shape)
    else:
      value = rng.standard_normal(shape) / np.sqrt(shape[-2])          # [(L,) in, out]
    set_path(params, path, jnp.asarray(value, jnp.float32))
  return LoadedModel(config, params, None, "tiny-random")


def tiny_prompts() -> list[list[int]]:
  """Lengths 5..45: with max_batch_tokens=32 the long ones prefill in chunks beside decodes."""
  rng = np.random.default_rng(1)
  return [rng.integers(0, 384, n).tolist() for n in (5, 17, 45, 30)]


def cache_report(engine: LLMEngine, reference_cache=None) -> dict:
  """Sharding of the KV cache as the array carries it, and each shard vs the 1-device cache."""
  cache = engine.runner.kv_cache   # [num_layers * num_blocks, kv_heads, 2, block_size, head_dim]
  shards = []
  for s in sorted(cache.addressable_shards, key=lambda s: s.device.id):
    heads = s.index[1]
    entry = {"device": s.device.id, "shape": list(s.data.shape),
             "heads": [heads.start or 0, cache.shape[1] if heads.stop is None else heads.stop]}
    if reference_cache is not None:
      ref = np.asarray(reference_cache)[s.index]
      entry["max_diff"] = float(np.max(np.abs(np.asarray(s.data) - ref)))
      entry["nonzero"] = bool(np.any(ref != 0))
    shards.append(entry)
  spec = getattr(cache.sharding, "spec", None)
  return {"shape": list(cache.shape), "spec": None if spec is None else [str(a) for a in spec],
          "num_devices": len(cache.sharding.device_set), "shards": shards,
          "num_layers": engine.model.config.num_layers,
          "num_blocks": engine.runner.cache_config.num_blocks}


def param_report(params) -> dict:
  """Spec and per-device shard shape of one param of each kind."""
  out = {}
  layers = params["layers"]          # stacked: [num_layers, ...]
  for name, leaf in (("qkv", layers["attn"]["qkv_kernel"]),
                     ("o", layers["attn"]["o_proj"]["kernel"]),
                     ("gate_up", layers["mlp"]["gate_up_kernel"]),
                     ("down", layers["mlp"]["down_proj"]["kernel"]),
                     ("layer_norm", layers["attn_norm"]["scale"]),
                     ("norm", params["final_norm"]["scale"]), ("embed", params["embed"])):
    spec = getattr(leaf.sharding, "spec", None)
    out[name] = {"spec": None if spec is None else [str(a) for a in spec],
                 "shard": list(leaf.addressable_shards[0].data.shape),
                 "devices": len(leaf.sharding.device_set)}
  return out


COLLECTIVES = ("all-reduce", "all-gather", "all-to-all", "collective-permute", "reduce-scatter")


def compiled_decode(model: LoadedModel, tp: int) -> dict:
  """Facts of the compiled decode step (a real TP-sharded compile): its collectives, those
  of the layer loop and its trip count, and the shardings of the stacked layer params."""
  mesh = parallel.make_mesh(tp)
  params = parallel.shard_params(fuse_projections(model.params, model.config, tp), mesh)
  shape = (16 * model.config.num_layers, model.config.num_kv_heads, 2, 8, model.config.head_dim)
  caches = jnp.zeros(shape, jnp.float32, device=parallel.cache_sharding(mesh))
  token_buffer = jnp.zeros((9,), jnp.int32, device=NamedSharding(mesh, P()))
  decode, _ = make_steps(model.config, None, mesh)
  x = empty_decode(8, 4, trash_slot=8)
  ints, floats, layout = packing.pack(x)
  compiled = decode.lower(params, caches, token_buffer, ints, floats,
                          layout=layout).compile()
  text = compiled.as_text()
  bodies = hlo.computations(text)
  loops = [{"trip_count": trip, **{op: len(hlo.instructions(bodies[body], op))
                                   for op in COLLECTIVES}}
           for body, trip in hlo.while_loops(text)]
  layers = compiled.input_shardings[0][0]["layers"]
  specs = {"/".join(str(getattr(k, "key", k)) for k in path): [str(a) for a in sharding.spec]
           for path, sharding in jax.tree_util.tree_leaves_with_path(layers)}
  return {"collectives": {op: len(hlo.instructions(text.splitlines(), op)) for op in COLLECTIVES},
          "loops": loops, "layer_specs": specs}


def generate(model: LoadedModel, tp: int, prompts) -> tuple[dict, LLM]:
  llm = LLM(loaded_model=model, tensor_parallel=tp, **ENGINE)
  outs = llm.generate(prompt_token_ids=prompts, use_tqdm=False, sampling_params=SamplingParams(
      temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=True))
  return {"tokens": [o.token_ids for o in outs], "logprobs": [o.logprobs for o in outs]}, llm


def tiny_scenarios() -> dict:
  model, prompts = tiny_model(), tiny_prompts()
  report, reference = {}, None
  for tp in (1, 2, 4):
    result, llm = generate(model, tp, prompts)
    if tp == 1:
      reference = llm.engine.runner.kv_cache
    else:
      result["cache"] = cache_report(llm.engine, reference)
      result["params"] = param_report(llm.engine.model.params)
      result["compiled"] = compiled_decode(model, tp)
    report[f"tp{tp}"] = result
  return report


def int8_scenarios() -> dict:
  """An int8 KV cache (issue 15): TP 2 gives TP 1's tokens, values and scales split by head."""
  model, prompts = tiny_model(), tiny_prompts()
  report, reference = {}, None
  for tp in (1, 2):
    llm = LLM(loaded_model=model, tensor_parallel=tp, kv_cache_dtype="int8", **ENGINE)
    outs = llm.generate(prompt_token_ids=prompts, use_tqdm=False, sampling_params=SamplingParams(
        temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=True))
    report[f"tp{tp}"] = {"tokens": [o.token_ids for o in outs],
                         "logprobs": [o.logprobs for o in outs]}
    cache = llm.engine.runner.kv_cache
    if tp == 1:
      reference = [np.asarray(x) for x in cache]
      continue
    report["tp2"]["cache"] = {}
    for name, leaf, ref in zip(("values", "scales"), cache, reference):
      shards = sorted(leaf.addressable_shards, key=lambda s: s.device.id)
      report["tp2"]["cache"][name] = {
          "dtype": str(leaf.dtype), "shape": list(leaf.shape),
          "spec": [str(a) for a in leaf.sharding.spec],
          "shards": [list(s.data.shape) for s in shards],
          "max_diff": max(float(np.max(np.abs(np.asarray(s.data, np.float32)
                                              - ref[s.index].astype(np.float32))))
                          for s in shards)}
  return report


def error_of(fn) -> str | None:
  try:
    fn()
  except ValueError as e:
    return str(e)
  return None


def smollm_scenarios() -> dict:
  """Greedy chat answers at TP 1 (given model) and TP 3 (loaded straight onto the mesh)."""
  model = load_model(None, dtype="float32")
  tok = model.tokenizer
  prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": q}]))
             for q in ("What is the capital of France?", "Write one sentence about the sea.",
                       "List three colours.")]
  params = SamplingParams(temperature=0.0, max_tokens=8)
  report, reference = {}, None
  for tp, loaded in ((1, model), (3, None)):
    llm = LLM(loaded_model=loaded, tensor_parallel=tp, **SMOLLM_ENGINE)
    report[f"tp{tp}"] = {"tokens": [o.token_ids for o in llm.generate(
        prompt_token_ids=prompts, sampling_params=params, use_tqdm=False)]}
    if tp == 1:
      reference = llm.engine.runner.kv_cache
    else:
      report["tp3"]["cache"] = cache_report(llm.engine, reference)
      report["tp3"]["params"] = param_report(llm.engine.model.params)
  report["tp2_error"] = error_of(lambda: LLM(loaded_model=model, tensor_parallel=2, **ENGINE))
  report["tp8_error"] = error_of(lambda: LLM(loaded_model=model, tensor_parallel=8, **ENGINE))
  return report


def main() -> None:
  if len(jax.devices()) != 4:
    raise SystemExit(f"needs 4 devices (XLA_FLAGS); got {jax.devices()}")
  report = {"tiny": tiny_scenarios(), "int8": int8_scenarios(), "smollm": smollm_scenarios()}
  json.dump(report, sys.stdout)


if __name__ == "__main__":
  main()
