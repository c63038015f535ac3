#!/usr/bin/env bash
# One GPU visit's measurements, in two parts that each fit one device call (run from the
# repository root on the GPU machine; results under OUT, logs printed at the end).
#   bash benchmarks/h200_visit.sh start-up OUT   # issue 19: cold / cached start to SERVING,
#                                                # 8B throughput now and at BASELINE (.baseline/)
#   bash benchmarks/h200_visit.sh traffic OUT    # the incident's traffic cold vs warm, kernels
#   bash benchmarks/h200_visit.sh step256 OUT    # issue 19: cold / cached start with the
#                                                # lowering time; where the 8B decode step at
#                                                # batch 256 spends its time, now and before
#   bash benchmarks/h200_visit.sh tune OUT       # re-measure the decode tuning table (short rows
#                                                # in wide tables), then 8B throughput with it and
#                                                # at BASELINE
#   bash benchmarks/h200_visit.sh serve OUT      # start-up cold / from the cache, then
#                                                # `pagedjax bench serve` over HTTP against it
#   bash benchmarks/h200_visit.sh serve-fixed OUT  # the same with one cold start, the fixed
#                                                # workloads only; then the executable store's
#                                                # tokens checked (1B engine twice, one cache)
#   bash benchmarks/h200_visit.sh decode-q8-inside OUT  # issue 15: the decode's registers,
#                                                # spills, SASS and profiled phases per
#                                                # cache dtype; 8-bit times now vs $VARIANTS
#   bash benchmarks/h200_visit.sh decode-q8-streams OUT  # issue 15: the 8-bit decode with
#                                                # one or two KV heads a CTA, vs bf16; the
#                                                # best 8-bit tilings into the table
#   bash benchmarks/h200_visit.sh decode-q8-ctas OUT  # issue 15: the 8-bit decode with one
#                                                # CTA an item or the SM count's taking
#                                                # items in turn, one or two warps issuing
#                                                # the copies; 16- and 64-token blocks
#   bash benchmarks/h200_visit.sh decode-q8-items OUT  # issue 15: the 8-bit decode now (into
#                                                # the table) vs BASELINE and $VARIANTS;
#                                                # the cost of an item (4, 8, 16 a CTA);
#                                                # an H200 does 64-token blocks instead
#   bash benchmarks/h200_visit.sh decode-q8-dynamic OUT  # issue 15: the 8-bit decode's items
#                                                # in static turn vs from a global counter
#                                                # (the best into the table); CTAs' ends
#   bash benchmarks/h200_visit.sh prefill-q8 OUT  # issue 15: the Mosaic prefill over
#                                                # 8-bit caches vs bf16's and Triton; the 8B
#   bash benchmarks/h200_visit.sh decode-q8-f16 OUT  # issue 15: e4m3 through f16 vs
#                                                # BASELINE's bf16; both profiled
#   bash benchmarks/h200_visit.sh decode-q8-profile OUT  # issue 15: the 8-bit decode's
#                                                # phases per warpgroup, e4m3 vs int8
#   bash benchmarks/h200_visit.sh decode-q8-bs64 OUT  # issue 15: the 8-bit decode over
#                                                # 64-token blocks; the best into the table
#   bash benchmarks/h200_visit.sh decode-q8-ncu OUT  # issue 15: Nsight Compute on the decode
#                                                # per cache dtype: stall reasons by SASS
#                                                # instruction, pipes, bank conflicts
#   bash benchmarks/h200_visit.sh decode-q8-occupancy OUT  # issue 15: the 8-bit decode
#                                                # without setmaxnreg: registers, times
#   bash benchmarks/h200_visit.sh kv-dtype-8b OUT  # the 8B at batch 256, 1,024-token prompts,
#                                                # per KV-cache dtype (issue 15)
#   bash benchmarks/h200_visit.sh tune-blocks OUT  # re-measure the decode tiling of 64/128-token
#                                                # blocks only (the table's other entries kept)
#   bash benchmarks/h200_visit.sh prefill OUT    # issue 14: Mosaic prefill tile variants, the
#                                                # kernel alone and with its gathers, vs cuDNN
#   bash benchmarks/h200_visit.sh engine-prefill OUT  # the 8B engine with the default
#                                                # ("mosaic" on Hopper) vs "triton" (tokens checked)
#   bash benchmarks/h200_visit.sh engine-decode OUT  # the 8B engine's decode, default
#                                                # (Mosaic decode on Hopper) vs "triton"
#   bash benchmarks/h200_visit.sh profile-decode OUT  # the 8B decode step's kernels, default
#                                                # vs "triton", batch 64 and 256
#   bash benchmarks/h200_visit.sh decode-probe OUT  # issue 14: Mosaic decode tilings vs Triton
#                                                # and the read-only pass, issue's shapes
#   bash benchmarks/h200_visit.sh decode-table OUT  # the Mosaic decode's tuning-table entries
#   bash benchmarks/h200_visit.sh decode-q8 OUT  # issue 15: the Mosaic decode per KV-cache
#                                                # dtype at the issue's shapes, vs bf16's best
#   bash benchmarks/h200_visit.sh decode-q8-scales OUT  # issue 15: the 8-bit decode now vs
#                                                # BASELINE (and $VARIANTS, more such trees)
#   bash benchmarks/h200_visit.sh decode-q8-modes OUT  # issue 15: the 8-bit decode's Sᵀ (K to
#                                                # bf16 vs 8-bit wgmma) x $V_CONVERTERS (1; "1,2"
#                                                # both) V converters, block_kv 128; the best into
#                                                # the table (the probe copies it to OUT); then
#                                                # the 8B per dtype
#                                                # (SKIP_BF16=1: no bf16 kernel run first)
# Needs the wheels the GPU image lacks in .whl/ (docs/benchmarks.md) and, for the baseline,
# `git archive REV engine models pallas_kernels serving benchmarks configs | tar -x -C .baseline`.
set -u
part=$1 out=$2
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl >/dev/null 2>&1 || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:.
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv,noheader

run() {  # run NAME SECONDS CMD...: output to OUT/NAME.log, its last lines printed
  local name=$1 secs=$2; shift 2
  local t0=$SECONDS
  timeout "$secs" "$@" >"$out/$name.log" 2>&1
  echo "== $name: exit $? after $((SECONDS - t0)) s"
  grep -v -i -E "deprecat|warn\(|^\s*$" "$out/$name.log" | tail -n 14
}

q8_trees() {  # q8_trees CONVERTERS SECONDS JOB_SECONDS DIR...: the 8-bit decode per tree
  local conv=$1 secs=$2 job=$3 dir v; shift 3  # (. is "now")
  for dir in "$@"; do
    v=$([ "$dir" = . ] && echo now || echo "${dir#.}")
    mkdir -p "$out/$v"
    (cd "$dir" && run "q8_$v" "$secs" \
      python3 -m benchmarks.decode_mosaic_probe --out "$out/$v" --kv-dtype float8_e4m3,int8 \
      --block-kv 128 --stages 4 --splits 1 --qk-8bit 0,1 --v-converters "$conv" \
      --job_timeout_s "$job" --shapes 64x4096/16,256x1024/16)
  done
  grep -A4 "^| shape" "$out/q8bf16.log"; grep -A6 "^| shape" "$out"/q8_*.log
}

bf16_kernel() {  # the bf16 Mosaic decode at the issue-15 shapes: the 8-bit runs' reference
  run q8bf16 100 python3 -m benchmarks.decode_mosaic_probe --out "$out/bf16" \
    --kv-dtype bfloat16 --block-kv 128 --stages 2 --splits 1 --job_timeout_s 60 \
    --shapes 64x4096/16,256x1024/16
}

case $part in
  start-up)
    run warmup 200 python3 -m benchmarks.warmup --out "$out/warmup.json" --num-decode-steps 4
    mkdir -p "$out/now" "$out/base"
    run throughput_now 190 python3 -m benchmarks.throughput --out "$out/now" \
      --models llama3-8b --batches 64,256 --decode-steps 1
    (cd .baseline && run throughput_base 190 python3 -m benchmarks.throughput --skip-check \
      --out "$out/base" --models llama3-8b --batches 64,256 --decode-steps 1)
    ;;
  traffic)
    run mixed 300 python3 -m benchmarks.mixed_workload --out "$out"
    if [ -f benchmarks/mosaic_probe.py ]; then
      run mosaic 150 python3 -m benchmarks.mosaic_probe --out "$out"
    fi
    ;;
  prefill)
    run probe 540 python3 -m benchmarks.mosaic_probe --out "$out" \
      --variants default,bkv64-st3 --shapes 4096,4096+2048,4096-gathered,odd-bs16,odd-bs256,odd-bs8
    grep -A40 "^| shape" "$out/probe.log"
    ;;
  engine-prefill)
    for b in default triton; do  # default: "mosaic" on an H100/H200
      mkdir -p "$out/$b"
      run "engine_$b" 270 python3 -m benchmarks.throughput --out "$out/$b" \
        $([ $b = triton ] && echo --attention-backend triton --skip-check) \
        --models llama3-8b --batches 64,256 --prompt-len 2048 --new-tokens 32
    done
    ;;
  engine-decode)  # issue 14: decode-bound 8B engine, default vs Triton (tokens checked)
    for b in default triton; do
      mkdir -p "$out/$b"
      run "engine_$b" 280 python3 -m benchmarks.throughput --out "$out/$b" \
        $([ $b = triton ] && echo --attention-backend triton --skip-check) \
        --models llama3-8b --batches 64,256 --prompt-len 1024 --new-tokens 128
      grep -A4 "^| model" "$out/engine_$b.log"
    done
    ;;
  profile-decode)  # the 8B decode step's kernels at batch 64 / 256, default vs Triton
    for b in default triton; do
      mkdir -p "$out/$b"
      for n in 64 256; do
        run "prof_${b}_$n" 150 python3 -m benchmarks.profile_step --model llama3-8b --batch $n \
          --ctx 1088 --out "$out/$b" $([ $b = triton ] && echo --attention-backend triton)
      done
    done
    for f in "$out"/*/profile_*.json; do
      python3 -c 'import json,sys
r = json.load(open(sys.argv[1]))
print(sys.argv[1].split("/")[-2], r["batch"], "wall %.2f busy %.2f ms/step" % (
    r["wall_ms_per_step"], r["gpu_busy_ms_per_step"]))
for t in r["top"][:6]:
  print("   %7.3f ms %5.1fx %s" % (t["ms_per_step"], t["calls_per_step"], t["name"][:90]))' "$f"
    done
    ;;
  decode-probe)
    run probe 560 python3 -m benchmarks.decode_mosaic_probe --out "$out" --job_timeout_s 120
    grep -A8 "^| shape" "$out/probe.log"
    ;;
  decode-table)  # one split count per CTA budget, two stages: the table's shape classes
    run table 560 python3 -m benchmarks.decode_mosaic_probe --out "$out" --write-table \
      --stages 2 --splits 1,2,4,8,16 --max-ctas 528 --job_timeout_s 60 --shapes \
      1x4096/16,8x4096/16,32x4096/16,64x4096/16,128x4096/16,256x4096/16,8x8192/16,\
64x2048/16,256x1024/16,64x512/16,256x512/16,64x2048/32,64x2048/64,64x2048/128,\
8x8192/64,8x8192/128,256x1024/64,256x1024/128
    grep -A22 "^| shape" "$out/table.log"
    ;;
  decode-q8)  # issue 15: 8-bit caches in the Mosaic decode against bf16, issue's shapes
    run q8 200 python3 -m benchmarks.decode_mosaic_probe --out "$out" \
      --kv-dtype int8,float8_e4m3,bfloat16 --block-kv 128,64 --stages 2,3 --splits 1,2 \
      --qk-8bit 0 --v-converters 1 --job_timeout_s 60 --shapes 64x4096/16,256x1024/16
    grep -A12 "^| shape" "$out/q8.log"
    ;;
  decode-q8-modes)  # issue 15: qk_8bit x v_converters (8-bit entries into the table only)
    [ -n "${SKIP_BF16:-}" ] || bf16_kernel
    run q8modes 200 python3 -m benchmarks.decode_mosaic_probe --out "$out" --write-table \
      --kv-dtype float8_e4m3,int8 --block-kv 128 --stages 2,4 --splits 1 \
      --qk-8bit 0,1 --v-converters ${V_CONVERTERS:-1} --job_timeout_s 80 \
      --shapes 64x4096/16,256x1024/16
    grep -A4 "^| shape" "$out/q8bf16.log"; grep -A8 "^| shape" "$out/q8modes.log"
    mkdir -p "$out/kv"
    run throughput_kv 300 python3 -m benchmarks.throughput --out "$out/kv" --skip-check \
      --models llama3-8b --batches 256 --prompt-len 1024 --new-tokens 128 \
      --kv-cache-dtype bfloat16,int8,float8_e4m3
    grep -A5 "^| model" "$out/throughput_kv.log"
    ;;
  decode-q8-scales)  # issue 15: the 8-bit decode now vs BASELINE (.baseline/) and $VARIANTS
    bf16_kernel
    q8_trees 1,2 200 90 . .baseline ${VARIANTS:-}  # VARIANTS: more trees like .baseline
    ;;
  decode-q8-inside)  # issue 15: registers, spills and SASS of the decode per cache dtype,
    # the 8-bit phases under the intra-kernel profiler, then the 8-bit times now vs $VARIANTS
    inside() {  # inside NAME ARGS...: one decode_mosaic_inside run into OUT/NAME
      run "in_$1" 120 python3 -m benchmarks.decode_mosaic_inside --out "$out/in_$1" "${@:2}"
    }
    inside int8_qk8 --asm --kv-dtype int8 --qk-8bit 1
    inside e4m3 --asm --kv-dtype float8_e4m3 --qk-8bit 0
    inside prof_int8_qk8 --profile --kv-dtype int8 --qk-8bit 1
    [ -n "${FULL:-}" ] && for a in "bf16 --asm --kv-dtype bfloat16 --stages 2 --qk-8bit 0" \
        "prof_e4m3 --profile --kv-dtype float8_e4m3 --qk-8bit 0" \
        "prof_bf16 --profile --kv-dtype bfloat16 --stages 2 --qk-8bit 0"; do
      inside $a  # FULL=1: the bf16 kernel's dumps and profile, e4m3's profile too
    done
    bf16_kernel
    q8_trees 1 150 70 . ${VARIANTS:-}
    ;;
  decode-q8-streams)  # issue 15: one or two KV heads a CTA (streams: two compute
    # warpgroups and V converters per SM) at block_kv 64 and 128 (two streams fit only 64),
    # 3 or 4 stages, both Sᵀ ways; the best into the table (copied to OUT), bf16's kernel
    # in the same call
    bf16_kernel
    run q8_streams 400 python3 -m benchmarks.decode_mosaic_probe --out "$out" --write-table \
      --kv-dtype int8,float8_e4m3 --block-kv 64,128 --stages 3,4 --splits 1 --qk-8bit 0,1 \
      --v-converters 1 --streams 1,2 --job_timeout_s 150 --shapes 64x4096/16,256x1024/16
    grep -A4 "^| shape" "$out/q8bf16.log"; grep -A6 "^| shape" "$out/q8_streams.log"
    ;;
  decode-q8-ctas)  # issue 15: the 8-bit decode with one CTA an item vs the SM count's CTAs
    # taking items in turn (ctas), one or two warps issuing the copies (issuers), two
    # streams at block_kv 64, one or two splits; the best into the table (copied to OUT);
    # bf16's kernel in the same call; then both again over 64-token cache blocks (one TMA
    # copy per K or V of a head a step, not four)
    bf16_kernel
    run q8_ctas 330 python3 -m benchmarks.decode_mosaic_probe --out "$out" --write-table \
      --kv-dtype int8,float8_e4m3 --block-kv 64 --stages 4 --splits 1,2 --qk-8bit 0,1 \
      --v-converters 1 --streams 2 --ctas 0,sm --issuers 1,2 --job_timeout_s 160 \
      --shapes 64x4096/16,256x1024/16
    run q8bf16_bs64 100 python3 -m benchmarks.decode_mosaic_probe --out "$out/bf16_bs64" \
      --kv-dtype bfloat16 --block-kv 128 --stages 2 --splits 1 --job_timeout_s 60 \
      --shapes 64x4096/64,256x1024/64
    run q8_bs64 200 python3 -m benchmarks.decode_mosaic_probe --out "$out/bs64" \
      --write-table --kv-dtype int8,float8_e4m3 --block-kv 64 --stages 4 --splits 1 \
      --qk-8bit 0,1 --v-converters 1 --streams 2 --ctas 0,sm --issuers 1,2 \
      --job_timeout_s 100 --shapes 64x4096/64,256x1024/64
    for f in q8bf16 q8_ctas q8bf16_bs64 q8_bs64; do grep -A6 "^| shape" "$out/$f.log"; done
    ;;
  decode-q8-items)  # issue 15: the 8-bit decode now vs BASELINE (.baseline/: a tree
    # before a change under test) and $VARIANTS (more such trees) at the table's tilings (two streams at block_kv 64, the SM
    # count's CTAs, two issuers), 3 or 4 stages; the best of now into the table (copied to
    # OUT); e4m3 at 128 x 2048 and 512 x 512 (4 and 16 items a CTA) for the cost of an
    # item (times at equal bytes; decode-q8-profile has the phases). An H200 skips the
    # trees and measures 64-token blocks instead (decode-q8-bs64).
    h200=$(nvidia-smi --query-gpu=name --format=csv,noheader | grep -c H200)
    bf16_kernel
    items_probe() {  # items_probe NAME DTYPE SECONDS [ARGS...]: 8-bit tilings of the table
      local name=$1 dtype=$2 secs=$3; shift 3
      run "$name" "$secs" python3 -m benchmarks.decode_mosaic_probe --out "$out/$name" \
        --kv-dtype "$dtype" --block-kv 64 --splits 1 --v-converters 1 --streams 2 \
        --ctas sm --issuers 2 --job_timeout_s 70 "$@"
    }
    both=64x4096/16,256x1024/16
    items_probe q8_now float8_e4m3,int8 150 --shapes $both --stages 3,4 --qk-8bit 0,1 \
      --write-table
    [ "$h200" = 1 ] && exec bash "$0" decode-q8-bs64 "$out"
    for dir in .baseline ${VARIANTS:-}; do  # VARIANTS: more trees like .baseline
      (cd "$dir" && items_probe "q8_${dir#.}" float8_e4m3,int8 100 --shapes $both \
        --stages 4 --qk-8bit 0,1)
    done
    items_probe q8_fit float8_e4m3 80 --shapes 128x2048/16,512x512/16 --stages 4 \
      --qk-8bit 0
    grep -A8 "^| shape" "$out/q8bf16.log" "$out"/q8_*.log
    ;;
  decode-q8-dynamic)  # issue 15: the 8-bit decode at the table's tilings (two streams at
    # block_kv 64, the SM count's CTAs, two issuers, 3 stages) with items in static turn
    # (dynamic 0) or from a global counter (1), vs the bf16 kernel; the best into the table
    # (copied to OUT); then both under the profiler at 64 x 1024 for the CTAs' end times
    # (static: they spread 10-15 % over equal work on the H100, 2026-12-07); with a
    # .baseline tree, its static kernel at 256 x 1024 (the item loop's rework)
    bf16_kernel
    run q8_dyn 330 python3 -m benchmarks.decode_mosaic_probe --out "$out/dyn" \
      --kv-dtype float8_e4m3,int8 --block-kv 64 --splits 1 --v-converters 1 --streams 2 \
      --ctas sm --issuers 2 --stages 3 --qk-8bit 0,1 --dynamic 0,1 --job_timeout_s 150 \
      --shapes 64x4096/16,256x1024/16 --write-table
    [ -d .baseline ] && (cd .baseline && run q8_base 150 python3 -m \
      benchmarks.decode_mosaic_probe --out "$out/base" --kv-dtype float8_e4m3,int8 \
      --block-kv 64 --splits 1 --v-converters 1 --streams 2 --ctas sm --issuers 2 \
      --stages 3 --qk-8bit 0,1 --job_timeout_s 100 --shapes 256x1024/16)
    for d in 0 1; do
      run "prof_d$d" 60 python3 -m benchmarks.decode_mosaic_inside --out "$out/prof_d$d" \
        --profile --profile-space 320 --shape 64x1024/16 --kv-dtype int8 --qk-8bit 1 \
        --block-kv 64 --stages 3 --streams 2 --ctas 132 --issuers 2 --dynamic $d
    done
    grep -A8 "^| shape" "$out/q8bf16.log" "$out/q8_dyn.log" "$out/q8_base.log"
    ;;
  prefill-q8)  # issue 15: the Mosaic prefill over 8-bit caches (its memory warpgroup
    # converting) vs bf16's Mosaic prefill and the Triton kernel 8-bit caches ran before;
    # then the 8B at batch 256 per KV dtype (kv-dtype-8b; SKIP_8B=1: not)
    run prefill_q8 240 python3 -m benchmarks.mosaic_probe --out "$out" --write-table \
      --variants "${PREFILL_VARIANTS:-default,bkv64-st3,triton}" --job_timeout_s 90 \
      --shapes ${PREFILL_SHAPES:-4096,4096+2048,4096@int8,4096+2048@int8,4096@float8_e4m3,4096+2048@float8_e4m3,odd-bs16@int8,odd-bs256@float8_e4m3}
    grep -A30 "^| shape" "$out/prefill_q8.log"
    cp pallas_kernels/tuning/*.json "$out/"  # with the prefill_mosaic_q8 entries
    [ "${SKIP_8B:-0}" = 1 ] && exit 0
    mkdir -p "$out/kv"
    run throughput_kv 300 python3 -m benchmarks.throughput --out "$out/kv" --skip-check \
      --models llama3-8b --batches 256 --prompt-len 1024 --new-tokens 256 \
      --kv-cache-dtype bfloat16,int8,float8_e4m3
    grep -A5 "^| model" "$out/throughput_kv.log"
    ;;
  decode-q8-f16)  # issue 15: e4m3 with K, V, q and P in f16 (one cvt per two values) now
    # vs BASELINE's bf16 (three more through f32), static and dynamic tickets, at the
    # table's tilings (DYNAMIC=0: static only); then both under the profiler at 64 x 1024
    # (PROFILE=0: not)
    bf16_kernel
    for dir in . .baseline; do
      v=$([ "$dir" = . ] && echo now || echo base)
      [ -d "$dir" ] || continue
      (cd "$dir" && run "e4m3_$v" 170 python3 -m benchmarks.decode_mosaic_probe \
        --out "$out/$v" --kv-dtype float8_e4m3 --block-kv 64 --splits 1 --v-converters 1 \
        --streams 2 --ctas sm --issuers 2 --stages 3 --qk-8bit 0 --dynamic "${DYNAMIC:-0,1}" \
        --job_timeout_s 80 --shapes 64x4096/16,256x1024/16)
      [ "${PROFILE:-1}" = 0 ] || (cd "$dir" && run "prof_$v" 60 python3 -m benchmarks.decode_mosaic_inside \
        --out "$out/prof_$v" --profile --profile-space 320 --shape 64x1024/16 \
        --kv-dtype float8_e4m3 --qk-8bit 0 --block-kv 64 --stages 3 --streams 2 \
        --ctas 132 --issuers 2)
    done
    grep -A6 "^| shape" "$out/q8bf16.log" "$out"/e4m3_*.log
    ;;
  decode-q8-profile)  # issue 15: the 8-bit decode's phases under Mosaic GPU's profiler per
    # warpgroup (decode_mosaic_inside --profile) at the table's tilings (3 stages, which
    # leaves room for 320 ranges a warpgroup), rows of 256 and 1,024 tokens on 64 rows (2
    # items a CTA): where an int8 item costs twice an e4m3 one
    for a in "e4m3 --kv-dtype float8_e4m3 --qk-8bit 0" "int8 --kv-dtype int8 --qk-8bit 0" \
        "int8_qk8 --kv-dtype int8 --qk-8bit 1"; do
      set -- $a
      for shape in 64x256/16 64x1024/16; do
        name="prof_$1_${shape%%/*}"
        run "$name" 90 python3 -m benchmarks.decode_mosaic_inside --out "$out/$name" \
          --profile --profile-space 320 --shape "$shape" "${@:2}" --block-kv 64 \
          --stages 3 --streams 2 --ctas 132 --issuers 2
      done
    done
    ;;
  decode-q8-bs64)  # issue 15: the 8-bit decode over 64-token cache blocks (3 or 4 stages,
    # both Sᵀ ways, one or two issuers) vs bf16's kernel there; the best into the table
    run q8bf16_bs64 100 python3 -m benchmarks.decode_mosaic_probe --out "$out/bf16_bs64" \
      --kv-dtype bfloat16 --block-kv 128 --stages 2 --splits 1 --job_timeout_s 60 \
      --shapes 64x4096/64,256x1024/64
    run q8_bs64 200 python3 -m benchmarks.decode_mosaic_probe --out "$out/bs64" \
      --write-table --kv-dtype int8,float8_e4m3 --block-kv 64 --stages 3,4 --splits 1 \
      --qk-8bit 0,1 --v-converters 1 --streams 2 --ctas sm --issuers 1,2 \
      --job_timeout_s 100 --shapes 64x4096/64,256x1024/64
    grep -A6 "^| shape" "$out/q8bf16_bs64.log" "$out/q8_bs64.log"
    ;;
  decode-q8-ncu)  # issue 15: ncu (full set, PC sampling) on one launch of the decode at
    # 64 x 4096 per cache dtype (the H100's best tilings, 2026-12-07), its pages exported as
    # CSV (details: the sections, warp states included; source: the SASS with its stall
    # samples), all in OUT/ncu.tgz (a device call brings back few files). NOTE: without
    # XLA_PYTHON_CLIENT_PREALLOCATE=false JAX's allocation fails under ncu, and the process
    # segfaults on exit after the report is written (H100, 2026-12-07).
    NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n 1)
    export XLA_PYTHON_CLIENT_PREALLOCATE=false
    mkdir -p "$out/ncu"
    for a in "int8 --kv-dtype int8 --qk-8bit 1 --block-kv 64 --stages 4 --streams 2" \
        "e4m3 --kv-dtype float8_e4m3 --qk-8bit 0 --block-kv 64 --stages 3 --streams 2" \
        "bf16 --kv-dtype bfloat16 --stages 2 --qk-8bit 0"; do
      set -- $a
      run "ncu/$1" 150 "$NCU" --clock-control none -k regex:paged_decode --launch-count 1 \
        --set full --import-source no -f -o "$out/ncu/$1" \
        python3 -m benchmarks.decode_mosaic_inside --out "$out/ncu/in_$1" "${@:2}"
      for page in details source; do
        "$NCU" -i "$out/ncu/$1.ncu-rep" --page $page --csv --print-source sass \
          > "$out/ncu/$1_$page.csv" 2>&1
      done
      rm -f "$out/ncu/$1.ncu-rep"
    done
    tar -czf "$out/ncu.tgz" -C "$out" ncu && rm -rf "$out/ncu"
    ;;
  decode-q8-occupancy)  # issue 15: the 8-bit decode without setmaxnreg (a copy of this tree,
    # .noreg): its registers a thread (<= 85 lets two CTAs of 384 threads share an SM), then
    # both trees' times at block_kv 64 and 128
    rm -rf .noreg && mkdir .noreg
    tar -c engine models pallas_kernels serving benchmarks configs | tar -x -C .noreg
    sed -i '/plgpu.set_max_registers/d' .noreg/pallas_kernels/decode_mosaic_q8.py \
      .noreg/pallas_kernels/decode_mosaic_q8_compute.py
    for bkv in 64 128; do
      (cd .noreg && run "regs_$bkv" 90 python3 -m benchmarks.decode_mosaic_inside --asm \
        --out "$out/regs_$bkv" --kv-dtype int8 --qk-8bit 1 --block-kv $bkv --stages 3)
      grep -h "Used\|spill" "$out/regs_$bkv"/*.ptxas
    done
    for dir in . .noreg; do
      mkdir -p "$out/occ${dir#.}"
      (cd "$dir" && run "occ${dir#.}" 150 python3 -m benchmarks.decode_mosaic_probe \
        --out "$out/occ${dir#.}" --kv-dtype int8,float8_e4m3 --block-kv 64,128 --stages 3 \
        --splits 1 --qk-8bit 0,1 --v-converters 1 --job_timeout_s 70 \
        --shapes 64x4096/16,256x1024/16)
    done
    grep -A6 "^| shape" "$out"/occ*.log
    ;;
  kv-dtype-8b)  # issue 15: the 8B engine's decode step and tokens/s at batch 256 per KV dtype
    mkdir -p "$out/kv"
    run throughput_kv 540 python3 -m benchmarks.throughput --out "$out/kv" --skip-check \
      --models llama3-8b --batches 256 --prompt-len 1024 --new-tokens 256 \
      --kv-cache-dtype bfloat16,int8,float8_e4m3
    grep -A5 "^| model" "$out/throughput_kv.log"
    ;;
  tune-blocks)  # issue 14: the decode tiling of 64- and 128-token blocks, merged into the table
    run tune 300 python3 -m benchmarks.tune_kernels --out "$out" --budget_s 240 --write-table \
      --block-sizes 64,128
    grep -A6 "^| class" "$out/tune.log"
    ;;
  step256)
    run warmup 150 python3 -m benchmarks.warmup --out "$out/warmup.json" --num-decode-steps 4 -- -v
    grep -h -E "warmup:|SERVING|loaded|KV blocks" "$out"/warmup_serve_*.log | cut -c1-220
    mkdir -p "$out/now" "$out/nocond" "$out/base" "$out/base_cublas"
    run prof_now 150 python3 -m benchmarks.profile_step --model llama3-8b --batch 256 --out "$out/now"
    PAGEDJAX_XLA_OPTIONS='{"xla_gpu_enable_command_buffer": "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,DYNAMIC_SLICE_FUSION"}' \
      run prof_nocond 150 python3 -m benchmarks.profile_step --model llama3-8b --batch 256 --out "$out/nocond"
    (cd .baseline && run prof_base 200 python3 -m benchmarks.profile_step --model llama3-8b \
      --batch 256 --out "$out/base")
    (cd .baseline && XLA_FLAGS=--xla_gpu_enable_triton_gemm=false run prof_base_cublas 200 \
      python3 -m benchmarks.profile_step --model llama3-8b --batch 256 --out "$out/base_cublas")
    for f in "$out"/*/profile_*.json; do
      python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[1].split("/")[-2],
        "wall %.2f busy %.2f ms/step" % (r["wall_ms_per_step"], r["gpu_busy_ms_per_step"]));
        [print("   %7.3f ms %5.1fx %s" % (t["ms_per_step"], t["calls_per_step"], t["name"][:90]))
         for t in r["top"][:12]]' "$f"
    done
    ;;
  tune)
    run tune 300 python3 -m benchmarks.tune_kernels --out "$out" --budget_s 230 --write-table
    grep -A20 "^| class" "$out/tune.log"
    mkdir -p "$out/now" "$out/base"
    run throughput_now 150 python3 -m benchmarks.throughput --out "$out/now" \
      --models llama3-8b --batches 64,256 --decode-steps 1
    (cd .baseline && run throughput_base 110 python3 -m benchmarks.throughput --skip-check \
      --out "$out/base" --models llama3-8b --batches 256 --decode-steps 1)
    ;;
  serve|serve-fixed)
    cache=$(mktemp -d)
    runs=2; [ "$part" = serve-fixed ] && runs=1
    run warmup 150 python3 -m benchmarks.warmup --out "$out/warmup.json" --num-decode-steps 4 \
      --cache-dir "$cache" --runs $runs -- -v
    grep -h -E "warmup:|SERVING" "$out"/warmup_serve_*.log | cut -c1-260
    python3 -m serving.cli serve --model random:llama3-8b --dtype bfloat16 --host 127.0.0.1 \
      --port 50051 --http-port 8000 --metrics-port 9090 --max-num-seqs 256 \
      --max-model-len 4096 --max-batch-tokens 2048 --num-decode-steps 4 \
      --compilation-cache-dir "$cache" >"$out/server.log" 2>&1 &
    server=$!
    for _ in $(seq 120); do
      curl -sf http://127.0.0.1:8000/health >/dev/null 2>&1 && break; sleep 1
    done
    echo "server ready after $SECONDS s of this part"
    b="python3 -m serving.cli bench serve --base-url http://127.0.0.1:8000"
    run c64 120 $b --workload fixed --input-len 128 --output-len 256 --concurrency 64 \
      --num-requests 256 --out "$out/c64"
    run c256 120 $b --workload fixed --input-len 128 --output-len 256 --concurrency 256 \
      --num-requests 512 --out "$out/c256"
    if [ "$part" = serve ]; then
      run incident_r4 150 $b --workload incident --rate 4 --num-requests 100 --out "$out/inc_r4"
      run incident_r16 150 $b --workload incident --rate 16 --num-requests 100 --out "$out/inc_r16"
    fi
    curl -s http://127.0.0.1:9090/metrics | grep -E "^pagedjax_(compil|requests|generation)" \
      | head -20
    grep -h -E "warmup:|SERVING" "$out/server.log" | cut -c1-260
    kill $server
    if [ "$part" = serve-fixed ]; then      # the second process loads its steps from the store
      store=$(mktemp -d)
      for i in 1 2; do
        PAGEDJAX_COMPILATION_CACHE_DIR=$store run store_$i 120 python3 -m benchmarks.throughput \
          --out "$out" --models llama3.2-1b --batches 8 --decode-steps 1
      done
      ls "$store/executables" | wc -l
    fi
    ;;
  *) echo "unknown part $part"; exit 2 ;;
esac
