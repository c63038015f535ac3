"""`pagedjax simulate` as a newcomer meets it: a small default grid, results kept when
interrupted, a table that cuts nothing, plot titles without a machine's notes."""
from __future__ import annotations

import glob
import json
import os

from research import cost_model as cm
from serving import cli
from serving.commands.sweep_flags import chunked_of
from serving.commands.sweep_runs import TABLE_COLUMNS, format_table

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_RUN = ["--num-requests", "4", "--scale", "0.05", "--rate", "5", "--kv-budget-gb", "0.01",
            "--no-progress", "--no-plots"]


def _simulate_parser():
  return cli.build_parser()._subparsers._group_actions[0].choices["simulate"]


def test_default_grid_is_small():
  args = _simulate_parser().parse_args([])
  runs = len(args.block_sizes) * len(args.modes) * len(chunked_of(args))
  assert runs == 3 and "3 runs" in _simulate_parser().format_help()


def test_interrupted_simulation_keeps_the_finished_runs(tmp_path, monkeypatch):
  from research import simulator
  made = []
  real_init = simulator.SimBackend.__init__

  def interrupt_on_the_second_run(self, *args, **kwargs):
    made.append(1)
    if len(made) == 2:
      raise KeyboardInterrupt      # what Ctrl-C does half-way through the grid
    real_init(self, *args, **kwargs)
  monkeypatch.setattr(simulator.SimBackend, "__init__", interrupt_on_the_second_run)
  out = tmp_path / "out"
  assert cli.main(["simulate", *TINY_RUN, "--out", str(out)]) == 130
  data = json.loads((out / "simulate.json").read_text())
  assert [r["mode"] for r in data["rows"]] == ["contiguous/chunked"]
  assert data["meta"]["partial"] is True
  assert len((out / "simulate.csv").read_text().splitlines()) == 2   # header + the run


def test_table_cuts_no_header_and_no_mode_name():
  rows = [{"mode": "paged+prefix/unchunked", "block_size": 16, "waste_pct": 0.123456,
           "stranded_free_pct_when_blocked": 12.5, "throughput_tok_s": 31.19}]
  header, line = format_table(rows).splitlines()
  assert header.split() == list(TABLE_COLUMNS)
  assert line.split()[:2] == ["paged+prefix/unchunked", "16"] and "0.1235" in line
  assert len(header) == len(line)


def test_bundled_cost_models_keep_notes_out_of_plot_titles(tmp_path, capsys):
  for path in glob.glob(os.path.join(REPO, "configs", "cost_models", "*.json")):
    device = cm.load(path).device
    assert device and not any(c in device for c in "();"), (path, device)
  out = tmp_path / "out"
  assert cli.main(["simulate", *TINY_RUN, "--modes", "paged", "--out", str(out)]) == 0
  meta = json.loads((out / "simulate.json").read_text())["meta"]
  assert meta["title"] == "simulated random:smollm2-135m on cpu" and "partial" not in meta
  assert "paged/chunked" in capsys.readouterr().out


def test_simulate_never_imports_jax(tmp_path):
  """The simulator is host-only: the engine's scheduler, KV managers and KV layout arithmetic
  (engine/kv_layout.py), a cost model instead of the device. A fresh process checks it."""
  import subprocess
  import sys
  code = ("import sys\nfrom serving import cli\n"
          f"rc = cli.main(['simulate', *{TINY_RUN!r}, '--modes', 'paged', "
          f"'--out', {str(tmp_path / 'out')!r}])\n"
          "print(rc, 'jax' in sys.modules, 'flax' in sys.modules, 'pallas_kernels' in sys.modules)")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        timeout=300, env=dict(os.environ, PYTHONPATH=REPO))
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.split()[-4:] == ["0", "False", "False", "False"], proc.stdout
