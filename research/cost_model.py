"""Step-time cost model: seconds of one engine step from what the step computes.

    t = c_decode_launch [decodes > 0] + c_prefill_launch [prefills > 0]
        + c_decode_row * decode rows + c_prefill_token * prefill tokens
        + c_kv_token * KV tokens read + c_block * KV blocks read

The first four terms are the weight-bound part (matmuls, per-call overhead),
the last two the attention part: tokens of context read and blocks visited
(each block is one block-table lookup and one tile; small blocks mean more of
them). Coefficients are fitted by non-negative least squares to measured steps
and stored as JSON under configs/cost_models/. A model fitted with one KV-cache dtype
predicts another by scaling the per-token term with the KV bytes each token reads
(`CostModel.for_kv_dtype`): decode attention is bound by reading the cache.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from engine.kv_layout import bytes_per_token, cdiv
from engine.scheduler import ScheduleOutput

FEATURES = ("decode_launch", "prefill_launch", "decode_row", "prefill_token", "kv_token",
            "block")
ATTENTION_FEATURES = ("kv_token", "block")


@dataclasses.dataclass(frozen=True)
class ModelShape:
  """What the simulator needs to know of a model: its KV bytes and context length."""
  name: str
  num_layers: int
  num_kv_heads: int
  head_dim: int
  max_position_embeddings: int
  dtype: str = "bfloat16"              # of the KV cache (engine/kv_layout.py ITEMSIZE)

  @classmethod
  def of(cls, name: str, model_config, dtype: str) -> ModelShape:
    return cls(name, model_config.num_layers, model_config.num_kv_heads, model_config.head_dim,
               model_config.max_position_embeddings, dtype)


@dataclasses.dataclass(frozen=True)
class CostModel:
  """Coefficients (seconds per unit of each feature) plus where they came from."""
  coefficients: dict[str, float]
  shape: ModelShape
  device: str = ""
  source: str = ""                     # how it was measured (date, command)
  fit_error: dict[str, float] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    missing = sorted(set(FEATURES) - set(self.coefficients))
    if missing:
      raise ValueError(f"cost model lacks coefficients {missing}")
    if any(v < 0 for v in self.coefficients.values()):
      raise ValueError("cost model coefficients must be >= 0")

  def predict(self, features: dict[str, float]) -> float:
    return sum(self.coefficients[k] * features[k] for k in FEATURES)

  def attention_seconds(self, features: dict[str, float]) -> float:
    return sum(self.coefficients[k] * features[k] for k in ATTENTION_FEATURES)

  def for_kv_dtype(self, dtype: str) -> CostModel:
    """This model for a run whose KV cache is `dtype`: kv_token scaled by the KV bytes per
    token (scales included) relative to the dtype it was fitted with; the per-block term
    (one table lookup and tile per block) unchanged.

    NOTE: assumes attention time proportional to the bytes read; check it against the
    decode kernel's measured time per dtype (benchmarks/kv_quant.py).
    """
    if dtype == self.shape.dtype:
      return self
    ratio = bytes_per_token(self.shape, dtype) / bytes_per_token(self.shape, self.shape.dtype)
    coefficients = dict(self.coefficients, kv_token=self.coefficients["kv_token"] * ratio)
    return dataclasses.replace(self, coefficients=coefficients,
                               shape=dataclasses.replace(self.shape, dtype=dtype),
                               source=f"{self.source}; kv_token x {ratio:.3f} for {dtype}")

  def to_json(self) -> dict:
    return {"coefficients": self.coefficients, "shape": dataclasses.asdict(self.shape),
            "device": self.device, "source": self.source, "fit_error": self.fit_error}

  @classmethod
  def from_json(cls, d: dict) -> CostModel:
    try:
      return cls({k: float(v) for k, v in d["coefficients"].items()},
                 ModelShape(**d["shape"]), d.get("device", ""), d.get("source", ""),
                 dict(d.get("fit_error", {})))
    except (KeyError, TypeError) as e:
      raise ValueError(f"bad cost model JSON: {e}") from None


def step_features(out: ScheduleOutput, block_size: int) -> dict[str, float]:
  """The cost model's inputs for one scheduled step.

  NOTE: a k-step decode (`num_decode_steps`) counts as the k decode steps it
  replaces: each iteration launches, computes every row (a row with fewer tokens
  is padding for the rest) and reads each row's context so far. The host time
  it saves is not modelled (the model has no host term).
  """
  iterations = max((s.num_new_tokens for s in out.decodes), default=1)
  ends = [end for s in out.decodes for end in range(s.start + 1, s.start + s.num_new_tokens + 1)]
  ends += [s.start + s.num_new_tokens for s in out.prefills]   # KV tokens each row attends over
  return {"decode_launch": float(bool(out.decodes)) * iterations,
          "prefill_launch": float(bool(out.prefills)),
          "decode_row": float(len(out.decodes) * iterations),
          "prefill_token": float(sum(s.num_new_tokens for s in out.prefills)),
          "kv_token": float(sum(ends)), "block": float(sum(cdiv(e, block_size) for e in ends))}


def nnls(a: np.ndarray, b: np.ndarray, tol: float = 1e-12) -> np.ndarray:
  """Non-negative least squares (Lawson-Hanson active set) on column-scaled `a`."""
  norms = np.linalg.norm(a, axis=0)
  norms[norms == 0] = 1.0
  a = a / norms                                   # [rows, features], unit columns
  n = a.shape[1]
  passive, x = np.zeros(n, bool), np.zeros(n)
  for _ in range(3 * n):
    grad = a.T @ (b - a @ x)
    if passive.all() or np.where(passive, -np.inf, grad).max() <= tol:
      break
    passive[np.argmax(np.where(passive, -np.inf, grad))] = True
    while True:
      z = np.zeros(n)
      z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
      if (z[passive] > tol).all():
        break
      bad = passive & (z <= tol)
      alpha = np.min(x[bad] / (x[bad] - z[bad]))
      x = x + alpha * (z - x)
      passive &= x > tol
    x = z
  return np.clip(x, 0.0, None) / norms


def fit(samples: list[tuple[dict[str, float], float]], shape: ModelShape, device: str,
        source: str, fixed: dict[str, float] | None = None) -> CostModel:
  """Fits coefficients to (features, measured seconds) samples.

  `fixed` coefficients (e.g. the attention terms from a kernel benchmark, see
  `attention_coefficients`) are taken as given; the others are fitted to what
  remains of each step's time.
  NOTE: plain (absolute) least squares: weighting rows by 1/seconds chased the
  fastest outliers of noisy shared-CPU timings and under-predicted everything.
  """
  fixed = dict(fixed or {})
  unknown = sorted(set(fixed) - set(FEATURES))
  if unknown:
    raise ValueError(f"unknown fixed coefficient(s) {unknown}; known: {FEATURES}")
  free = [k for k in FEATURES if k not in fixed]
  if len(samples) < len(free):
    raise ValueError(f"need at least {len(free)} timed steps to fit, got {len(samples)}")
  a = np.array([[f[k] for k in FEATURES] for f, _ in samples])      # [steps, features]
  t = np.array([s for _, s in samples])                             # [steps]
  if (t <= 0).any():
    raise ValueError("step timings must be positive")
  coef = np.array([fixed.get(k, 0.0) for k in FEATURES])
  cols = [FEATURES.index(k) for k in free]
  coef[cols] = nnls(a[:, cols], t - a @ coef)
  rel = np.abs(a @ coef - t) / t
  err = {"median_rel": float(np.median(rel)), "p90_rel": float(np.quantile(rel, 0.9)),
         "total_rel": float(abs((a @ coef).sum() - t.sum()) / t.sum()), "steps": len(t)}
  return CostModel(dict(zip(FEATURES, map(float, coef))), shape, device, source, err)


def attention_coefficients(bench: dict, num_layers: int) -> dict[str, float]:
  """The kv_token and block terms (seconds per step) from `benchmarks/block_sizes.py` output.

  Each row times one layer's decode attention over `batch` rows of `ctx` tokens at one
  block size; a non-negative fit of time = a * tokens + b * blocks over the block sizes
  separates the cost of reading KV from the cost of each block visited, and the model's
  `num_layers` turn per-layer into per-step seconds.
  """
  rows = bench.get("rows", [])
  if len(rows) < 2:
    raise ValueError("need block_sizes.py results for at least two block sizes")
  batch, ctx = bench["batch"], bench["ctx"]
  a = np.array([[batch * ctx, batch * cdiv(ctx, r["block_size"])] for r in rows], float)
  t = np.array([r["decode_us"] * 1e-6 for r in rows])
  kv_token, block = nnls(a, t) * num_layers
  return {"kv_token": float(kv_token), "block": float(block)}


def fit_steps(steps: list[dict], shape: ModelShape, device: str, source: str,
              attention_bench: str | None = None) -> CostModel:
  """`fit` over a sweep's timed steps ({"features", "seconds"} dicts).

  With `attention_bench` (a `benchmarks/block_sizes.py` JSON of the same GPU) the
  kv_token and block terms come from it (`attention_coefficients`), not from the fit.
  """
  fixed = None
  if attention_bench:
    with open(attention_bench, encoding="utf-8") as f:
      fixed = attention_coefficients(json.load(f), shape.num_layers)
    source += f"; kv_token and block from {os.path.basename(attention_bench)}"
  return fit([(_in_shape_bytes(s, shape), s["seconds"]) for s in steps], shape, device,
             source, fixed)


def _in_shape_bytes(step: dict, shape: ModelShape) -> dict[str, float]:
  """A timed step's features with its KV tokens counted in `shape.dtype`'s bytes (a sweep
  over several KV-cache dtypes fits one model; the inverse of `CostModel.for_kv_dtype`)."""
  dtype = step.get("kv_cache_dtype", shape.dtype)
  if dtype == shape.dtype:
    return step["features"]
  ratio = bytes_per_token(shape, dtype) / bytes_per_token(shape, shape.dtype)
  return dict(step["features"], kv_token=step["features"]["kv_token"] * ratio)


def load(path: str | os.PathLike) -> CostModel:
  with open(path, encoding="utf-8") as f:
    return CostModel.from_json(json.load(f))


def save(model: CostModel, path: str | os.PathLike) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(model.to_json(), f, indent=2, sort_keys=True)
    f.write("\n")


def bundled(name: str) -> str:
  """Path of configs/cost_models/<name>.json (a path ending in .json is returned as is)."""
  if name.endswith(".json"):
    return name
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return os.path.join(root, "configs", "cost_models", f"{name}.json")
