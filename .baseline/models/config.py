"""The model configuration: a frozen, hashable dataclass (static under jit)."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from models.errors import ModelLoadError

# HF `architectures` / GGUF `general.architecture` values we can run, mapped to
# our architecture names.
_HF_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
}
SUPPORTED_ARCHITECTURES = ("llama", "qwen2")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Llama-3 style rope frequency scaling (HF `rope_type: llama3`)."""
  factor: float
  low_freq_factor: float
  high_freq_factor: float
  original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture hyper-parameters of a Llama-family decoder.

  NOTE: frozen and made only of hashable fields, so a config can be passed to
  `jax.jit(..., static_argnames=("config",))`.
  """
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rms_norm_eps: float = 1e-5
  rope_theta: float = 10000.0
  rope_scaling: RopeScaling | None = None
  max_position_embeddings: int = 2048
  tie_word_embeddings: bool = False
  attention_bias: bool = False  # bias on the Q, K and V projections (Qwen2)
  bos_token_id: int | None = None
  eos_token_ids: tuple[int, ...] = ()
  architecture: str = "llama"

  def __post_init__(self):
    object.__setattr__(self, "eos_token_ids", tuple(int(t) for t in self.eos_token_ids))
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers",
                 "num_heads", "num_kv_heads", "head_dim"):
      if int(getattr(self, name)) <= 0:
        raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of "
                       f"num_kv_heads ({self.num_kv_heads})")
    if self.head_dim % 2:
      raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
    if self.architecture not in SUPPORTED_ARCHITECTURES:
      raise ValueError(f"unsupported architecture {self.architecture!r}; "
                       f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")

  @property
  def num_queries_per_kv(self) -> int:
    return self.num_heads // self.num_kv_heads

  @classmethod
  def from_hf_config(cls, hf: dict[str, Any]) -> "ModelConfig":
    """Builds a config from the dict of an HF `config.json`."""
    archs = hf.get("architectures") or []
    arch = next((_HF_ARCHITECTURES[a] for a in archs if a in _HF_ARCHITECTURES), None)
    if arch is None:
      model_type = hf.get("model_type")
      arch = model_type if model_type in SUPPORTED_ARCHITECTURES else None
    if arch is None:
      raise ValueError(f"unsupported architecture {archs or hf.get('model_type')!r}; "
                       f"supported: {', '.join(_HF_ARCHITECTURES)}")
    if arch == "llama" and (hf.get("attention_bias") or hf.get("mlp_bias")):
      raise ValueError("Llama with attention_bias/mlp_bias is not supported")
    num_heads = int(hf["num_attention_heads"])
    hidden = int(hf["hidden_size"])
    eos = hf.get("eos_token_id")
    eos_ids = () if eos is None else (tuple(eos) if isinstance(eos, (list, tuple)) else (eos,))
    return cls(
        vocab_size=int(hf["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(hf["intermediate_size"]),
        num_layers=int(hf["num_hidden_layers"]),
        num_heads=num_heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
        head_dim=int(hf.get("head_dim") or hidden // num_heads),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6 if arch == "qwen2" else 1e-5)),
        rope_theta=float(_rope_theta(hf)),
        rope_scaling=_rope_scaling_from_hf(hf),
        max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attention_bias=(arch == "qwen2"),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_ids=eos_ids,
        architecture=arch,
    )

  @classmethod
  def from_gguf(cls, reader_or_path: Any) -> "ModelConfig":
    """Builds a config from GGUF metadata (a `gguf.GGUFReader` or a path)."""
    from models.weights.gguf_meta import config_from_gguf  # avoid import cycle
    return config_from_gguf(reader_or_path)

  @classmethod
  def from_json(cls, path: str | os.PathLike) -> "ModelConfig":
    """Reads an HF-style `config.json`."""
    try:
      with open(path, encoding="utf-8") as f:
        hf = json.load(f)
    except FileNotFoundError:
      raise ModelLoadError(f"{path}: file not found") from None
    except (OSError, json.JSONDecodeError) as e:
      raise ModelLoadError(f"{path}: cannot read config JSON: {e}") from None
    try:
      return cls.from_hf_config(hf)
    except (KeyError, ValueError, TypeError) as e:
      raise ModelLoadError(f"{path}: bad model config: {e}") from None

  def to_hf_config(self) -> dict[str, Any]:
    """The config as an HF-style `config.json` dict (round-trips from_hf_config)."""
    arch_name = {v: k for k, v in _HF_ARCHITECTURES.items()}[self.architecture]
    out = {
        "architectures": [arch_name], "model_type": self.architecture,
        "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
        "intermediate_size": self.intermediate_size,
        "num_hidden_layers": self.num_layers, "num_attention_heads": self.num_heads,
        "num_key_value_heads": self.num_kv_heads, "head_dim": self.head_dim,
        "rms_norm_eps": self.rms_norm_eps, "rope_theta": self.rope_theta,
        "max_position_embeddings": self.max_position_embeddings,
        "tie_word_embeddings": self.tie_word_embeddings,
        "bos_token_id": self.bos_token_id, "eos_token_id": list(self.eos_token_ids),
    }
    if self.rope_scaling is not None:
      out["rope_scaling"] = {"rope_type": "llama3", **dataclasses.asdict(self.rope_scaling)}
    return out


def _rope_theta(hf: dict[str, Any]) -> float:
  params = hf.get("rope_parameters") or {}
  return hf.get("rope_theta", params.get("rope_theta", 10000.0))


def _rope_scaling_from_hf(hf: dict[str, Any]) -> RopeScaling | None:
  """Parses `rope_scaling` (or transformers 5's `rope_parameters`)."""
  rs = hf.get("rope_scaling") or hf.get("rope_parameters")
  if not rs:
    return None
  kind = rs.get("rope_type", rs.get("type", "default"))
  if kind == "default":
    return None
  if kind != "llama3":
    raise ValueError(f"unsupported rope scaling type {kind!r} (only 'llama3')")
  return RopeScaling(
      factor=float(rs["factor"]), low_freq_factor=float(rs["low_freq_factor"]),
      high_freq_factor=float(rs["high_freq_factor"]),
      original_max_position_embeddings=int(rs["original_max_position_embeddings"]))
