"""The `jax.distributed.initialize` path: 2 processes x 2 CPU devices run one TP=4 engine.

As far as one machine allows a multi-host run: two processes on this host
join through a coordinator, build the global 4-device mesh, shard weights and
KV cache across both, and must produce the single-device greedy tokens.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.parallel.tp_worker import MAX_TOKENS

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multihost_worker.py")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(WORKER)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> list[dict]:
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  port, logs = _free_port(), tmp_path_factory.mktemp("multihost")
  # NOTE: output goes to files, not pipes: a process blocked on a full pipe
  # would stall the other one inside a collective.
  files = [(open(logs / f"{i}.out", "w+"), open(logs / f"{i}.err", "w+")) for i in range(2)]
  procs = [subprocess.Popen([sys.executable, WORKER, str(i), str(port)], cwd=ROOT, env=env,
                            stdout=out, stderr=err, text=True)
           for i, (out, err) in enumerate(files)]
  try:
    for p in procs:
      p.wait(timeout=400)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  reports = []
  for p, (out, err) in zip(procs, files):
    out.seek(0), err.seek(0)
    assert p.returncode == 0, err.read()[-4000:]
    reports.append(json.loads(out.read().strip().splitlines()[-1]))
    out.close(), err.close()
  return reports


def test_processes_see_the_global_mesh(reports):
  for i, r in enumerate(reports):
    assert (r["process_index"], r["process_count"]) == (i, 2)
    assert (r["device_count"], r["local_device_count"], r["mesh_size"]) == (4, 2, 4)


def test_each_process_holds_its_kv_heads(reports):
  # 4 kv heads over 4 devices: process 0 holds heads 0-1, process 1 heads 2-3.
  assert [r["local_heads"] for r in reports] == [[[0, 1], [1, 2]], [[2, 3], [3, 4]]]
  for r in reports:
    assert [s[1] for s in r["local_shard_shapes"]] == [1, 1]


def test_greedy_tokens_equal_single_device(reports, report):
  want = report["tiny"]["tp1"]["tokens"]     # the 1-device engine, same model and requests
  assert len(want) == 4 and all(len(t) == MAX_TOKENS for t in want)
  for r in reports:
    assert r["tokens"] == want
