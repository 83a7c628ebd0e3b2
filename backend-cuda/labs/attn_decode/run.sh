#!/usr/bin/env bash
# Build and run the decode-attention lab (see README.md). On the GPU machine:
#   bash backend-cuda/labs/attn_decode/run.sh          (logs under $OUT, or ./out)
# BASE_RAW: the baseline attention.cu, default .gpu/attn3/base_attention_raw.cu, written from
# git (BASE_REV, default 33ed371: the kernel before round 4; round 3 used 6e3b99c) if missing; the GPU machine has no
# .git, so write it on the development machine and carry it.
# NCU=0 skips the ncu pass; LAB_BIN: a prebuilt binary (skips nvcc); LAB_FLAGS: extra nvcc
# flags; TAG: suffix of the logs.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(cd ../../.. && pwd)
OUTD=${OUT:-$PWD/out}
mkdir -p "$OUTD"
W=$(mktemp -d)
RAW=${BASE_RAW:-$ROOT/.gpu/attn3/base_attention_raw.cu}
[ -f "$RAW" ] || git -C "$ROOT" show "${BASE_REV:-33ed371}":backend-cuda/kernels/attention.cu >"$RAW"
# The baseline goes into `namespace base`: no common.cuh (already included), no extern "C", no
# instantiations (the lab instantiates what it times).
sed -e '/#include "common.cuh"/d' -e 's/extern "C" //' -e '/^ATTN_/d' "$RAW" >"$W/base_attention.cu"
BIN=${LAB_BIN:-$W/attn_lab}
if [ -z "${LAB_BIN:-}" ]; then
    nvcc -O3 -arch=sm_90 -std=c++17 -lineinfo -Xptxas -v -I../../kernels -I"$W" \
        -DBASE_FILE='"base_attention.cu"' ${LAB_FLAGS:-} lab.cu -o "$BIN" 2>"$OUTD/ptxas${TAG:-}.txt"
fi
"$BIN" | tee "$OUTD/lab${TAG:-}.txt" || echo "lab: checks failed or crashed (see lab${TAG:-}.txt)"
if [ "${NCU:-1}" = 1 ]; then
    ncu --clock-control none -k 'regex:new_decode|base_decode|combine' \
        --metrics gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,dram__bytes_read.sum,launch__grid_size,launch__registers_per_thread,sm__warps_active.avg.pct_of_peak_sustained_active \
        "$BIN" ncu >"$OUTD/ncu${TAG:-}.txt" 2>&1 || echo "ncu failed (see ncu${TAG:-}.txt)"
    timeout 120 compute-sanitizer --tool memcheck "$BIN" ncu >"$OUTD/memcheck${TAG:-}.txt" 2>&1 || echo "memcheck: rc $?"
    tail -3 "$OUTD/memcheck${TAG:-}.txt"
    grep -E "attn|base_decode|combine|duration|dram__|grid_size|registers|warps_active" "$OUTD/ncu${TAG:-}.txt" | head -400 >"$OUTD/ncu_short${TAG:-}.txt" || true
fi
