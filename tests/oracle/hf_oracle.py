"""The transformers oracle, run under .venv-oracle (Python 3.11, CPU torch).

Usage: hf_oracle.py {gguf|tiny} IN.json OUT_PREFIX
Writes OUT_PREFIX.json (ids, text, generations) and OUT_PREFIX.npz (logits).

  gguf: loads a GGUF with AutoModelForCausalLM/AutoTokenizer (float32) and
    reports tokenization of `texts`, chat template renderings of `chats`,
    last-position logits of `prompts` (texts), and greedy continuations
    (`generate`: token id lists, `steps` tokens, never stopping at EOS).
  tiny: for each of `models`, builds a random tiny Llama/Qwen2 from `config`
    (seeded), saves it with save_pretrained (safetensors) into `out_dir`, and
    reports full logits of `prompts` (token id lists) as NAME_full_I.
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402


def _greedy(model, ids, steps):
  """Greedy decoding with the KV cache; does not stop at EOS."""
  out = []
  past = None
  inp = torch.tensor([ids])
  with torch.no_grad():
    for _ in range(steps):
      res = model(input_ids=inp, past_key_values=past, use_cache=True)
      past = res.past_key_values
      nxt = int(res.logits[0, -1].argmax())
      out.append(nxt)
      inp = torch.tensor([[nxt]])
  return out


def run_gguf(spec):
  from transformers import AutoModelForCausalLM, AutoTokenizer
  folder, name = os.path.split(spec["gguf"])
  tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
  model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
  model.eval()
  out = {"encode": [tok.encode(t, add_special_tokens=False) for t in spec["texts"]]}
  out["decode"] = [tok.decode(ids, skip_special_tokens=True) for ids in out["encode"]]
  out["chats"] = [tok.apply_chat_template(c["messages"], tokenize=False,
                                          add_generation_prompt=c["add_generation_prompt"])
                  for c in spec["chats"]]
  out["prompt_ids"] = [tok.encode(t, add_special_tokens=False) for t in spec["prompts"]]
  logits = {}
  with torch.no_grad():
    for i, ids in enumerate(out["prompt_ids"]):
      logits[f"last_{i}"] = model(input_ids=torch.tensor([ids])).logits[0, -1].numpy()
  out["generate"] = [_greedy(model, ids, spec["steps"]) for ids in spec["generate"]]
  return out, logits


def run_tiny(spec):
  out, logits = {}, {}
  for m in spec["models"]:
    out[m["name"]], model_logits = _tiny_model(m)
    logits.update({f"{m['name']}_{k}": v for k, v in model_logits.items()})
  return out, logits


def _tiny_model(spec):
  import transformers
  torch.manual_seed(spec.get("seed", 0))
  cls_name = {"llama": "LlamaConfig", "qwen2": "Qwen2Config"}[spec["arch"]]
  config = getattr(transformers, cls_name)(**spec["config"])
  model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
  with torch.no_grad():  # non-trivial norms and biases, so a missed load shows
    for name, p in model.named_parameters():
      if name.endswith("norm.weight"):
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
      elif name.endswith(".bias"):
        p.copy_(0.1 * torch.randn_like(p))
  model.eval()
  model.save_pretrained(spec["out_dir"], safe_serialization=True,
                        max_shard_size=spec.get("max_shard_size", "5GB"))
  logits = {}
  with torch.no_grad():
    for i, ids in enumerate(spec["prompts"]):
      logits[f"full_{i}"] = model(input_ids=torch.tensor([ids])).logits[0].numpy()
  return {"saved": spec["out_dir"]}, logits


def main(argv):
  if len(argv) != 4 or argv[1] not in ("gguf", "tiny"):
    print(__doc__, file=sys.stderr)
    return 2
  with open(argv[2], encoding="utf-8") as f:
    spec = json.load(f)
  out, logits = {"gguf": run_gguf, "tiny": run_tiny}[argv[1]](spec)
  with open(argv[3] + ".json", "w", encoding="utf-8") as f:
    json.dump(out, f, ensure_ascii=False)
  np.savez(argv[3] + ".npz", **logits)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
