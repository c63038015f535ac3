"""Host-side packing of a schedule into padded, bucket-shaped numpy arrays.

NOTE: padded rows and tokens write their K/V into the null block 0 (slot 0)
and have length 0, so the kernels read nothing for them.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from engine import kv_layout
from engine.buckets import Buckets, pick
from engine.sampler import SamplingTensors
from engine.scheduler import ScheduledRequest


@dataclasses.dataclass
class DecodeInputs:
  tokens: np.ndarray         # [rows] int32 (host-known tokens)
  input_slots: np.ndarray    # [rows] int32: token-buffer slot of a pending token, -1 = use `tokens`
  sample_slots: np.ndarray   # [rows] int32: token-buffer slot the sampled token goes to
  positions: np.ndarray      # [rows] int32
  slots: np.ndarray          # [rows] int32
  block_tables: np.ndarray   # [rows, width] int32
  lengths: np.ndarray        # [rows] int32 (0 = padding row)
  num_steps: np.ndarray      # [rows] int32: decode iterations of a multi-step (0 = padding row)
  sampling: SamplingTensors  # [rows] each


@dataclasses.dataclass
class PrefillInputs:
  tokens: np.ndarray         # [tokens] int32
  positions: np.ndarray      # [tokens] int32
  slots: np.ndarray          # [tokens] int32
  block_tables: np.ndarray   # [seqs, width] int32
  cu_q_lens: np.ndarray      # [seqs + 1] int32
  kv_lens: np.ndarray        # [seqs] int32
  logits_indices: np.ndarray  # [seqs] int32: each sequence's last token in the packed axis
  sample_slots: np.ndarray   # [seqs] int32: token-buffer slot the sampled token goes to
  sampling: SamplingTensors  # [seqs] each


@dataclasses.dataclass
class VerifyInputs:
  """Speculative decoding: row r's last token and m_r <= k drafts packed like a prefill
  (k + 1 token slots per row bucket row), logits at every one of them."""
  tokens: np.ndarray         # [rows * (k + 1)] int32
  positions: np.ndarray      # [rows * (k + 1)] int32
  slots: np.ndarray          # [rows * (k + 1)] int32
  block_tables: np.ndarray   # [rows, width] int32
  cu_q_lens: np.ndarray      # [rows + 1] int32
  kv_lens: np.ndarray        # [rows] int32
  logits_indices: np.ndarray  # [rows, k + 1] int32: position j of row r (its last token past m_r)
  drafts: np.ndarray         # [rows, k] int32
  num_drafts: np.ndarray     # [rows] int32
  sample_slots: np.ndarray   # [rows] int32: token-buffer slot of the row's last output token
  sampling: SamplingTensors  # [rows] each


def _slots(block_table: list[int], start: int, n: int, block_size: int) -> np.ndarray:
  pos = np.arange(start, start + n)
  table = np.asarray(block_table, dtype=np.int64)
  return kv_layout.slot(table, pos, block_size).astype(np.int32)


def _tables(scheduled: list[ScheduledRequest], rows: int, width: int) -> np.ndarray:
  tables = np.zeros((rows, width), np.int32)
  for i, s in enumerate(scheduled):
    tables[i, :len(s.block_table)] = s.block_table
  return tables


def _sampling(scheduled: list[ScheduledRequest], rows: int) -> SamplingTensors:
  return SamplingTensors.from_params(
      [s.request.sampling_params for s in scheduled],
      seeds=[s.request.seed for s in scheduled],
      steps=[s.request.num_output_tokens + s.request.num_pending_tokens for s in scheduled],
      pad_to=rows)


def _width(scheduled: list[ScheduledRequest], buckets: Buckets) -> int:
  return pick(buckets.table_widths, max(len(s.block_table) for s in scheduled))


def _sample_slots(scheduled: list[ScheduledRequest], rows: int, token_slot) -> np.ndarray:
  out = np.full(rows, token_slot(None), np.int32)        # padding → the trash slot
  for i, s in enumerate(scheduled):
    if s.samples:
      out[i] = token_slot(s.request)
  return out


def build_decode(scheduled: list[ScheduledRequest], buckets: Buckets, block_size: int,
                 token_slot) -> DecodeInputs:
  """`token_slot(request | None)` names a request's slot in the device token buffer.

  NOTE: plain Python per row, numpy once per array: this runs every step for
  every running request, on the host's critical path.
  """
  rows = pick(buckets.decode_rows, len(scheduled))
  n = len(scheduled)
  starts = [s.start for s in scheduled]
  tokens, input_slots = [0] * n, [-1] * n
  for i, s in enumerate(scheduled):
    if s.start < s.request.num_tokens:
      tokens[i] = s.request.token_at(s.start)
    else:                                  # NOTE: sampled by the step in flight
      input_slots[i] = token_slot(s.request)
  slots = [kv_layout.slot(s.block_table, p, block_size) for s, p in zip(scheduled, starts)]
  pad = lambda values, fill: np.array(values + [fill] * (rows - n), np.int32)
  return DecodeInputs(pad(tokens, 0), pad(input_slots, -1),
                      _sample_slots(scheduled, rows, token_slot), pad(starts, 0), pad(slots, 0),
                      _tables(scheduled, rows, _width(scheduled, buckets)),
                      pad([p + 1 for p in starts], 0),
                      pad([s.num_new_tokens for s in scheduled], 0), _sampling(scheduled, rows))


def _pack(scheduled: list[ScheduledRequest], chunks: list[list[int]], num_tokens: int,
          seqs: int, block_size: int) -> tuple:
  """Chunk i (its token ids, from scheduled[i].start on) packed after chunk i - 1, then
  padding: (tokens, positions, slots, cu_q_lens, kv_lens); padded sequences are empty."""
  total = sum(len(c) for c in chunks)
  tokens = np.zeros(num_tokens, np.int32)
  positions = np.zeros(num_tokens, np.int32)
  slots = np.zeros(num_tokens, np.int32)
  cu = np.full(seqs + 1, total, np.int32)
  kv_lens = np.zeros(seqs, np.int32)
  offset = 0
  for i, (s, chunk) in enumerate(zip(scheduled, chunks)):
    n, end = len(chunk), offset + len(chunk)
    tokens[offset:end] = chunk
    positions[offset:end] = np.arange(s.start, s.start + n)
    slots[offset:end] = _slots(s.block_table, s.start, n, block_size)
    cu[i], kv_lens[i] = offset, s.start + n
    offset = end
  return tokens, positions, slots, cu, kv_lens


def build_prefill(scheduled: list[ScheduledRequest], buckets: Buckets, block_size: int,
                  token_slot) -> PrefillInputs:
  total = sum(s.num_new_tokens for s in scheduled)
  num_tokens = pick(buckets.prefill_tokens, total)
  seqs = buckets.prefill_seqs(num_tokens)     # NOTE: >= len(scheduled), one token each at least
  tokens, positions, slots, cu, kv_lens = _pack(scheduled, [s.token_ids for s in scheduled],
                                                num_tokens, seqs, block_size)
  logits_indices = np.zeros(seqs, np.int32)
  logits_indices[:len(scheduled)] = cu[1:len(scheduled) + 1] - 1
  return PrefillInputs(tokens, positions, slots, _tables(scheduled, seqs, _width(scheduled, buckets)),
                       cu, kv_lens, logits_indices, _sample_slots(scheduled, seqs, token_slot),
                       _sampling(scheduled, seqs))


def build_verify(scheduled: list[ScheduledRequest], buckets: Buckets, block_size: int,
                 token_slot, k: int) -> VerifyInputs:
  """Decode rows with their drafts (`ScheduledRequest.draft_token_ids`, at most k each).

  NOTE: a verify row's input token is on the host: speculation runs only once a
  request's sampled tokens have landed (the proposer needs them).
  """
  rows = pick(buckets.decode_rows, len(scheduled))
  chunks = []
  for s in scheduled:
    assert s.start < s.request.num_tokens, "a verify row's last token is still pending"
    chunks.append([s.request.token_at(s.start), *s.draft_token_ids])
  tokens, positions, slots, cu, kv_lens = _pack(scheduled, chunks, rows * (k + 1), rows,
                                                block_size)
  drafts = np.zeros((rows, k), np.int32)
  num_drafts = np.zeros(rows, np.int32)
  for i, chunk in enumerate(chunks):
    drafts[i, :len(chunk) - 1] = chunk[1:]
    num_drafts[i] = len(chunk) - 1
  # NOTE: position j of row r is token cu[r] + j, clipped to the row's last one.
  logits_indices = np.minimum(cu[:rows, None] + np.arange(k + 1)[None, :],
                              np.maximum(cu[1:, None] - 1, 0)).astype(np.int32)
  return VerifyInputs(tokens, positions, slots, _tables(scheduled, rows, _width(scheduled, buckets)),
                      cu, kv_lens, logits_indices, drafts, num_drafts,
                      _sample_slots(scheduled, rows, token_slot), _sampling(scheduled, rows))


def _zeros(*shapes) -> list[np.ndarray]:
  """One int32 zero array per shape; NOTE: never shared, so callers may fill them in place
  (the benchmarks build real schedules from these)."""
  return [np.zeros(shape, np.int32) for shape in shapes]


def _no_sampling(rows: int) -> SamplingTensors:
  return SamplingTensors.from_params([], seeds=[], steps=[], pad_to=rows)


def empty_decode(rows: int, width: int, trash_slot: int) -> DecodeInputs:
  """All-padding decode inputs of one bucket (for warm-up)."""
  tokens, input_slots, sample_slots, positions, slots, lengths, num_steps = _zeros(*[rows] * 7)
  return DecodeInputs(tokens, input_slots - 1, sample_slots + trash_slot, positions, slots,
                      np.zeros((rows, width), np.int32), lengths, num_steps, _no_sampling(rows))


def empty_prefill(num_tokens: int, seqs: int, width: int, trash_slot: int) -> PrefillInputs:
  """All-padding prefill inputs of one bucket (for warm-up)."""
  tokens, positions, slots = _zeros(*[num_tokens] * 3)
  kv_lens, logits_indices, sample_slots = _zeros(*[seqs] * 3)
  return PrefillInputs(tokens, positions, slots, np.zeros((seqs, width), np.int32),
                       np.zeros(seqs + 1, np.int32), kv_lens, logits_indices,
                       sample_slots + trash_slot, _no_sampling(seqs))


def empty_verify(rows: int, k: int, width: int, trash_slot: int) -> VerifyInputs:
  """All-padding verify inputs of one bucket (for warm-up)."""
  tokens, positions, slots = _zeros(*[rows * (k + 1)] * 3)
  kv_lens, num_drafts, sample_slots = _zeros(*[rows] * 3)
  return VerifyInputs(tokens, positions, slots, np.zeros((rows, width), np.int32),
                      np.zeros(rows + 1, np.int32), kv_lens, np.zeros((rows, k + 1), np.int32),
                      np.zeros((rows, k), np.int32), num_drafts, sample_slots + trash_slot,
                      _no_sampling(rows))
