"""Reading facts off compiled HLO text (`jax.stages.Compiled.as_text()`), for the benchmarks
and the tests."""
from __future__ import annotations

import re

_HEADER = re.compile(r"^(?:ENTRY )?%([\w.\-]+) \(")
_WHILE = re.compile(r" while\(.*body=%([\w.\-]+)")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


def computations(hlo: str) -> dict[str, list[str]]:
  """Each computation's instruction lines, by name (the entry one under its own name too)."""
  out, name = {}, None
  for line in hlo.splitlines():
    m = _HEADER.match(line)
    if m:
      name = m.group(1)
      out[name] = []
    elif name is not None and line.strip() not in ("", "}"):
      out[name].append(line)
  return out


def instructions(lines: list[str], op: str) -> list[str]:
  """The lines of `lines` whose instruction is `op` (or its async `op-start`)."""
  pattern = re.compile(rf"= \S+ {re.escape(op)}(?:-start)?\(")
  return [line for line in lines if pattern.search(line)]


def while_loops(hlo: str) -> list[tuple[str, int | None]]:
  """(body computation, known trip count or None) of every while loop."""
  out = []
  for line in hlo.splitlines():
    m = _WHILE.search(line)
    if m:
      trip = _TRIP.search(line)
      out.append((m.group(1), int(trip.group(1)) if trip else None))
  return out


def executed(hlo: str, op: str) -> int:
  """How many `op` instructions one run of the module executes: those in a while loop's
  body once per trip (known trip counts; loops nested in a loop body are not multiplied)."""
  bodies = computations(hlo)
  trips = dict(while_loops(hlo))
  return sum(len(instructions(lines, op)) * (trips.get(name) or 1)
             for name, lines in bodies.items())


def instruction_count(hlo: str) -> int:
  """Instructions in the whole module (every computation, fused ones included)."""
  return sum(len(lines) for lines in computations(hlo).values())


def input_output_aliases(hlo: str) -> dict[int, int]:
  """{output tuple index: parameter number} of the module's input_output_alias header."""
  header = hlo.splitlines()[0]
  m = re.search(r"input_output_alias=\{(.*?)\}, entry_computation_layout", header)
  if not m:
    return {}
  return {int(out): int(param)
          for out, param in re.findall(r"\{(\d+)\}: \((\d+), \{\}", m.group(1))}
