#!/usr/bin/env bash
# Build (unless a prebuilt binary is given) and run the Q4_K mma lab on the GPU machine, from the
# repository root; logs go to $OUT.
#   bash backend-cuda/labs/mma/run.sh [--quick]        # nvcc -O3 -arch=sm_90 -std=c++17, then the sweep
#   LAB_BIN=.gpu/mma2/mma_lab bash backend-cuda/labs/mma/run.sh   # a binary built elsewhere
#   NCU=1 ...  adds ncu of the mq4k kernels at 14336x4096 (NCU_M rows, default 16 and 64)
set -uo pipefail
O=${OUT:-/tmp/mma-lab}; mkdir -p "$O"
D=backend-cuda/labs/mma
BIN=${LAB_BIN:-}
if [ -z "$BIN" ]; then
  BIN=/tmp/mma_lab
  nvcc -O3 -arch=sm_90 -std=c++17 -Xptxas -v -o $BIN $D/lab.cu -ldl >"$O/ptxas.log" 2>&1 || { tail -30 "$O/ptxas.log"; exit 1; }
fi
$BIN "$@" 2>&1 | tee "$O/lab.log" | grep -E "^device|^==|BEST|FAIL|valid|cuBLAS bf16" 
if [ "${NCU:-0}" = 1 ]; then
  # m:cfg:bm:S — cfg indexes lab.cu MQ (0 w1n4s3, 1 w2n4s3, 2 w1n8s3, 3 w2n8s3, 4 w1n4s4, 5 w2n4s4)
  for spec in ${NCU_SPECS:-16:1:16:2 64:2:32:1}; do
    IFS=: read -r m cfg bm S <<<"$spec"
    LAB_NO_TIME=1 LAB_SHAPE=1 LAB_M=$m LAB_CFG=$cfg LAB_BM=$bm LAB_S=$S timeout 120 ncu --clock-control none -k "regex:mq4k|mma_q4_k" -c 3 \
      --section SpeedOfLight --section Occupancy --section LaunchStats --section SchedulerStats --section WarpStateStats --section MemoryWorkloadAnalysis --section InstructionStats \
      $BIN >"$O/ncu_m$m.log" 2>&1
    grep -E "^\s+(mq4k|mma_q4)|Duration|DRAM Throughput|Achieved Occupancy|Registers Per|Grid Size|Issued Warp|No Eligible|Warp Cycles Per Issued|L2 Hit|Executed Instructions  " "$O/ncu_m$m.log" | head -40
  done
fi
