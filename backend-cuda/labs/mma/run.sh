#!/usr/bin/env bash
# Build (unless a prebuilt binary is given) and run the Q4_K mma lab on the GPU machine, from the
# repository root; logs go to $OUT.
#   bash backend-cuda/labs/mma/run.sh [--quick]        # nvcc -O3 -arch=sm_90 -std=c++17, then the sweep
#   LAB_BIN=.gpu/mma2/mma_lab bash backend-cuda/labs/mma/run.sh   # a binary built elsewhere
#   NCU=1 ...  adds ncu at 14336x4096 of NCU_SPECS "m:cfg:S ..." (cfg indexes lab.cu CFGS)
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
  # m:cfg:S — cfg indexes lab.cu CFGS (0-3 mq b8/b16/b32/b64; 4-10 mh b16, 11-17 mh b32, 18-24 mh b64,
  # each (WT,NW,ST) = (1,4,2) (1,4,3) (1,8,2) (1,8,3) (2,4,2) (2,4,3) (2,8,2))
  for spec in ${NCU_SPECS:-64:21:2 32:14:2}; do
    IFS=: read -r m cfg S <<<"$spec"
    LAB_NO_TIME=1 LAB_SHAPE=1 LAB_M=$m LAB_CFG=$cfg LAB_S=$S timeout 120 ncu --clock-control none -k "regex:mq4k|mh4k" -c 2 \
      --section SpeedOfLight --section Occupancy --section LaunchStats --section SchedulerStats --section WarpStateStats --section MemoryWorkloadAnalysis --section InstructionStats \
      $BIN >"$O/ncu_m${m}_c$cfg.log" 2>&1
    grep -E "^\s+(mq4k|mh4k)|Duration|DRAM Throughput|Achieved Occupancy|Registers Per|Grid Size|Issued Warp|No Eligible|Warp Cycles Per Issued|L2 Hit|Executed Instructions  " "$O/ncu_m${m}_c$cfg.log" | head -40
  done
fi
