"""Cost-model fit, and the `pagedjax sweep` / `pagedjax simulate` commands."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from research import cost_model as cm
from serving import cli
from tests.experiments.helpers import TINY_SHAPE, TRUTH, synthetic_samples


def test_fit_recovers_known_coefficients_and_stays_non_negative():
  samples = synthetic_samples(200, seed=0)
  model = cm.fit(samples, TINY_SHAPE, "synthetic", "test")
  for k, v in TRUTH.items():
    assert model.coefficients[k] == pytest.approx(v, rel=1e-6)
  assert model.fit_error["p90_rel"] < 1e-9
  # A feature that only hurts the fit gets 0, never a negative coefficient.
  noisy = [(dict(f, block=0.0), s) for f, s in samples]
  assert min(cm.fit(noisy, TINY_SHAPE, "", "").coefficients.values()) >= 0.0


def test_fit_with_fixed_attention_terms_fits_the_rest():
  samples = synthetic_samples(100, seed=1)
  # Wrong fixed attention terms: the free ones absorb what they can, the fixed stay put.
  model = cm.fit(samples, TINY_SHAPE, "", "", fixed={"kv_token": 1e-7, "block": 0.0})
  assert model.coefficients["kv_token"] == 1e-7
  assert model.coefficients["block"] == 0.0
  exact = cm.fit(samples, TINY_SHAPE, "", "",
                 fixed={"kv_token": TRUTH["kv_token"], "block": TRUTH["block"]})
  assert exact.coefficients["decode_row"] == pytest.approx(TRUTH["decode_row"], rel=1e-6)
  with pytest.raises(ValueError, match="unknown fixed"):
    cm.fit(samples, TINY_SHAPE, "", "", fixed={"kv_tokens": 1.0})


def test_attention_coefficients_separate_tokens_from_blocks():
  # Per layer: 1 ns per KV token plus 20 ns per block visited, 4 layers.
  batch, ctx = 8, 1000
  rows = [{"block_size": bs, "decode_us": 1e6 * (1e-9 * batch * ctx
                                                + 2e-8 * batch * -(-ctx // bs))}
          for bs in (8, 16, 64, 256)]
  terms = cm.attention_coefficients({"batch": batch, "ctx": ctx, "rows": rows}, 4)
  assert terms["kv_token"] == pytest.approx(4e-9, rel=1e-6)
  assert terms["block"] == pytest.approx(8e-8, rel=1e-6)
  with pytest.raises(ValueError, match="two block sizes"):
    cm.attention_coefficients({"batch": 1, "ctx": 1, "rows": rows[:1]}, 4)


def test_cost_model_json_round_trip_and_validation(tmp_path):
  model = cm.CostModel(dict.fromkeys(cm.FEATURES, 1e-3), TINY_SHAPE, "cpu", "test")
  cm.save(model, tmp_path / "m.json")
  assert cm.load(tmp_path / "m.json") == model
  with pytest.raises(ValueError, match="lacks"):
    cm.CostModel({"block": 1.0}, TINY_SHAPE)
  with pytest.raises(ValueError, match=">= 0"):
    cm.CostModel(dict.fromkeys(cm.FEATURES, -1.0), TINY_SHAPE)


@pytest.mark.parametrize("command", ["sweep", "simulate"])
def test_help(command, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main([command, "--help"])
  assert e.value.code == 0
  out = capsys.readouterr().out
  assert "--block-sizes" in out and "--queue-timeout" in out


def test_simulate_end_to_end(tmp_path, capsys):
  model = cm.CostModel({"decode_launch": 1e-3, "prefill_launch": 2e-3, "decode_row": 1e-4,
                        "prefill_token": 1e-5, "kv_token": 1e-7, "block": 1e-6},
                       TINY_SHAPE, "synthetic", "test")
  cm.save(model, tmp_path / "cost.json")
  out = tmp_path / "out"
  rc = cli.main(["simulate", "--cost-model", str(tmp_path / "cost.json"), "--kv-budget-gb",
                 "0.002", "--num-requests", "12", "--scale", "0.1", "--rate", "3",
                 "--block-sizes", "16,64", "--chunked", "on", "--out", str(out),
                 "--no-progress", "--save-trace", str(tmp_path / "trace.jsonl")])
  assert rc == 0
  with open(out / "simulate.csv") as f:
    rows = list(csv.DictReader(f))
  assert [(r["mode"], r["block_size"]) for r in rows] == [
      (m, b) for m in ("contiguous/chunked", "paged/chunked", "paged+prefix/chunked")
      for b in ("16", "64")]
  data = json.loads((out / "simulate.json").read_text())
  assert data["meta"]["backend"] == "simulator" and len(data["rows"]) == 6
  assert all(r["makespan_s"] > 0 and r["attention_model_s"] > 0 for r in data["rows"])
  for name in ("waste", "concurrency", "latency_p99", "failures"):
    assert (out / f"simulate_{name}.png").stat().st_size > 1000
  assert len((tmp_path / "trace.jsonl").read_text().splitlines()) == 12
  # Replaying the saved trace gives the same figures.
  rc = cli.main(["simulate", "--cost-model", str(tmp_path / "cost.json"), "--kv-budget-gb",
                 "0.002", "--trace", str(tmp_path / "trace.jsonl"), "--block-sizes", "16,64",
                 "--chunked", "on", "--out", str(tmp_path / "again"), "--no-progress",
                 "--no-plots"])
  again = json.loads((tmp_path / "again" / "simulate.json").read_text())["rows"]
  assert again == data["rows"]


def test_sweep_end_to_end_fits_with_benchmarked_attention_terms(tmp_path):
  """The real engine on a tiny random model; the fitted model keeps the benchmark's terms."""
  from tests.experiments.helpers import TINY_CONFIG
  rows = [{"block_size": bs, "decode_us": 10.0 + 800.0 / bs} for bs in (8, 16, 64)]
  bench = tmp_path / "block_sizes.json"
  bench.write_text(json.dumps({"batch": 4, "ctx": 128, "rows": rows}))
  out, fitted = tmp_path / "out", tmp_path / "cost.json"
  rc = cli.main(["sweep", "--model", "random:" + TINY_CONFIG, "--kv-budget-mb", "1",
                 "--num-requests", "6", "--scale", "0.05", "--rate", "5", "--block-sizes", "16",
                 "--modes", "paged", "--chunked", "on", "--max-batch-tokens", "64",
                 "--max-num-seqs", "4", "--out", str(out), "--no-progress", "--no-plots",
                 "--fit-cost-model", str(fitted), "--attention-bench", str(bench)])
  assert rc == 0
  data = json.loads((out / "sweep.json").read_text())
  assert [(r["mode"], r["block_size"], r["finished"]) for r in data["rows"]] == [
      ("paged/chunked", 16, 6)]
  model = cm.load(fitted)
  expected = cm.attention_coefficients(json.loads(bench.read_text()), num_layers=2)
  assert model.coefficients["kv_token"] == pytest.approx(expected["kv_token"])
  assert model.coefficients["block"] == pytest.approx(expected["block"])
  assert expected["block"] > 0 and model.fit_error["steps"] > 0


def test_cost_model_for_another_kv_dtype_scales_only_the_per_token_term():
  model = cm.CostModel(dict(TRUTH), TINY_SHAPE, "synthetic", "test")   # fitted in float32
  assert model.for_kv_dtype("float32") is model
  int8 = model.for_kv_dtype("int8")
  # head_dim 16: 16 bytes + a 4-byte scale per vector vs 64 bytes in float32.
  assert int8.coefficients["kv_token"] == pytest.approx(TRUTH["kv_token"] * 20 / 64)
  assert {k: v for k, v in int8.coefficients.items() if k != "kv_token"} == {
      k: v for k, v in TRUTH.items() if k != "kv_token"}
  assert int8.shape.dtype == "int8" and "kv_token x 0.312" in int8.source
  # A sweep's timed steps of several dtypes fit one model in the shape's bytes.
  steps = [{"features": f, "seconds": s, "kv_cache_dtype": "float32"}
           for f, s in synthetic_samples(60, seed=2)]
  steps += [{"features": f, "seconds": int8.predict(f), "kv_cache_dtype": "int8"}
            for f, _ in synthetic_samples(60, seed=3)]
  fitted = cm.fit_steps(steps, TINY_SHAPE, "synthetic", "test")
  assert fitted.coefficients["kv_token"] == pytest.approx(TRUTH["kv_token"], rel=1e-6)


def test_simulate_grid_has_a_kv_dtype_axis(tmp_path, capsys):
  model = cm.CostModel(dict(TRUTH), TINY_SHAPE, "synthetic", "test")
  cm.save(model, tmp_path / "cost.json")
  rc = cli.main(["simulate", "--cost-model", str(tmp_path / "cost.json"), "--kv-budget-gb",
                 "0.001", "--num-requests", "12", "--scale", "0.1", "--rate", "3",
                 "--block-sizes", "16", "--modes", "paged", "--chunked", "on",
                 "--kv-cache-dtypes", "auto,int8", "--out", str(tmp_path / "out"),
                 "--no-progress", "--no-plots"])
  assert rc == 0
  rows = json.loads((tmp_path / "out" / "simulate.json").read_text())["rows"]
  assert [(r["mode"], r["kv_cache_dtype"]) for r in rows] == [
      ("paged/chunked", "float32"), ("paged/chunked/int8", "int8")]
  # The same bytes hold 64 / 20 = 3.2x the float32 blocks in int8.
  auto, int8 = ((r["num_blocks"] - 1) for r in rows)
  assert int8 == pytest.approx(3.2 * auto, rel=1e-3)
  assert cli.main(["simulate", "--cost-model", str(tmp_path / "cost.json"), "--kv-cache-dtypes",
                   "int4", "--num-requests", "2", "--out", str(tmp_path / "bad"),
                   "--no-progress"]) == 2
  assert "KV-cache dtypes must be in" in capsys.readouterr().err
