#!/usr/bin/env bash
# Build and run the GEMV lab on the GPU machine (from the repository root); logs go to $OUT.
# `bash backend-cuda/labs/gemv/run.sh [--quick]`; NCU=1 adds an ncu profile of Q4_K kernels.
set -uo pipefail
O=${OUT:-/tmp/gemv-lab}; mkdir -p "$O"
D=backend-cuda/labs/gemv
nvcc -O3 -arch=sm_90 -std=c++17 -Xptxas -v -o /tmp/gemv_lab $D/gemv_lab.cu >"$O/ptxas.log" 2>&1 || { tail -30 "$O/ptxas.log"; exit 1; }
awk "/Compiling entry function/ {f=\$7} /Used [0-9]+ registers/ && f ~ /lab_|labp_|gemv1_q(4_k|6_k|8_0)|gemv8_q4_k_m1/ {print f, \$5, \"regs\"}" "$O/ptxas.log" | tr -d "'" | paste - - - - | head -20
/tmp/gemv_lab "$@" 2>&1 | tee "$O/lab.log"
if [ "${NCU:-0}" = 1 ]; then
  LAB_NO_TIME=1 LAB_TYPES=${NCU_TYPES:-q4_k} LAB_SHAPE=${NCU_SHAPE:-0} timeout 150 ncu --clock-control none -k "regex:${NCU_K:-lab_q4_k|gemv8_q4_k_m1}" -c "${NCU_C:-12}" \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section SchedulerStats --section WarpStateStats \
    /tmp/gemv_lab --quick >"$O/ncu.log" 2>&1
  grep -E "^\s+(lab_|gemv8|quant_x)|Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Registers Per|Theoretical Occ|Grid Size|Block Size|Issued Warp|No Eligible|Stall|Warp Cycles Per Issued" "$O/ncu.log" | head -80
fi
