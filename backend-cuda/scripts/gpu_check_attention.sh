#!/usr/bin/env bash
# GPU check of kiln-cuda's attention, MoE and NCCL all-reduce, in two steps.
#
# 1. On the development machine (needs cargo, and NVRTC to fill the sm_90 kernel cache):
#      backend-cuda/scripts/gpu_check_attention.sh build
#    builds the release binaries (kiln-cuda unit tests, tests/nccl.rs, the conformance suite,
#    the `attention` bench for CUDA only), strips them into .gpu/attn/ (git-ignored), and
#    compiles every kernel for sm_90 into .gpu/attn/cache (so the GPU run does not spend device
#    time in NVRTC). NVRTC comes from the nvidia-cuda-nvrtc wheel: set KILN_NVRTC_DIR to its
#    `nvidia/cu13` folder (default: /tmp/nv/lib/python3.11/site-packages/nvidia/cu13).
#
# 2. On the GPU machine, from the repository root, in ONE call (use the 2-GPU kind
#    nvidia-h200-x2 so the NCCL test runs; on one GPU it prints "skipped"):
#      run(kind="nvidia-h200-x2", carry=[".gpu/attn"],
#          command="bash backend-cuda/scripts/gpu_check_attention.sh run")
#    (carry only .gpu/attn, ~28 MiB: the whole .gpu folder holds other bundles too and exceeds
#    the 64 MiB carry limit).
#    Logs go to $OUT (or ./gpu-results): conformance_attn_moe.log (attention_*, moe_*,
#    all_reduce_* on cuda with KILN_REQUIRE=cuda), unit.log, nccl.log (sums 4 KiB..256 MiB,
#    16 KiB latency, 256 MiB bus bandwidth), attention_bench.log + attention.jsonl (decode
#    1k/4k/16k × batch 1/32 in GB/s and % of copy bandwidth, prefill 4k in TFLOP/s), and a
#    summary printed last. Expected wall time: ~3–6 minutes warm.
set -uo pipefail
cd "$(dirname "$0")/../.."
B=.gpu/attn

build() {
    set -e
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target-cuda}"
    local NV="${KILN_NVRTC_DIR:-/tmp/nv/lib/python3.11/site-packages/nvidia/cu13}"
    mkdir -p "$B"
    rm -f "$B"/* 2>/dev/null || true
    local list
    list=$(mktemp)
    # Test executables (kiln-cuda lib + integration tests, the conformance suite).
    cargo test --release -p kiln-cuda -p kiln-tests --no-run --message-format=json 2>/dev/null >"$list"
    python3 - "$list" "$B" <<'EOF'
import json, shutil, sys
want = {("kiln_cuda", "lib"): "kiln_cuda_unit", ("nccl", "test"): "nccl",
        ("nvrtc_compile", "test"): "nvrtc_compile", ("conformance", "test"): "conformance"}
found = {}
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    key = (m["target"]["name"], m["target"]["kind"][0])
    if key in want:
        found[want[key]] = m["executable"]
for name, exe in found.items():
    shutil.copy(exe, f"{sys.argv[2]}/{name}")
missing = set(want.values()) - set(found)
if missing:
    sys.exit(f"missing test executables: {sorted(missing)}")
EOF
    cargo build --release -p kiln-benches --no-default-features --features cuda --bin attention
    cp "$CARGO_TARGET_DIR/release/attention" "$B/attention_bench"
    strip "$B"/* || true
    # sm_90 CUBINs of every kernel file into the carried cache (the compile-test binary is only
    # needed for this, not on the GPU machine).
    KILN_CACHE_DIR="$PWD/$B/cache" LD_LIBRARY_PATH="$NV/lib" KILN_CUDA_INCLUDE="$NV/include" \
        "$B/nvrtc_compile" --ignored precompile_sm90_into_cache --nocapture
    rm -f "$B/nvrtc_compile" "$list"
    du -sh "$B"
    ls -la "$B" "$B/cache/kernels"
}

run() {
    local OUTD="${OUT:-$PWD/gpu-results}"
    mkdir -p "$OUTD"
    export NCCL_NVLS_ENABLE=0
    # A writable copy of the precompiled kernels (the tuning cache lands there too).
    export KILN_CACHE_DIR=/tmp/kiln-cache
    mkdir -p "$KILN_CACHE_DIR"
    cp -r "$B/cache/." "$KILN_CACHE_DIR/" 2>/dev/null || true
    nvidia-smi -L | tee "$OUTD/devices.txt"
    local ngpu
    ngpu=$(nvidia-smi -L | grep -c '^GPU')

    echo "== kiln-cuda unit tests (CPU emulation of the attention kernels, plan, layouts)"
    "$B/kiln_cuda_unit" 2>&1 | tee "$OUTD/unit.log" | tail -3

    echo "== conformance: attention_*, moe_*, all_reduce_* on cuda (KILN_REQUIRE=cuda)"
    KILN_REQUIRE=cuda timeout 900 "$B/conformance" attention_ moe_ all_reduce_ \
        --skip _reference --skip _wgpu --test-threads 4 2>&1 | tee "$OUTD/conformance_attn_moe.log" | tail -5

    echo "== NCCL all-reduce on $ngpu GPU(s)"
    if [ "$ngpu" -ge 2 ]; then export KILN_REQUIRE_NCCL=1; fi
    timeout 600 "$B/nccl" --nocapture --test-threads 1 2>&1 | tee "$OUTD/nccl.log" | grep -E "NCCL|ok:|skipped|panicked|test result"

    echo "== attention bench (cuda:0)"
    rm -f "$OUTD/attention.jsonl"
    timeout 900 "$B/attention_bench" --backend cuda --json "$OUTD/attention.jsonl" 2>&1 | tee "$OUTD/attention_bench.log"

    echo "== summary"
    grep -h "test result" "$OUTD/unit.log" "$OUTD/conformance_attn_moe.log" "$OUTD/nccl.log"
    grep -hE "^test .*(FAILED|panicked)" "$OUTD/conformance_attn_moe.log" | head -40
    grep -h "NCCL all-reduce f32" "$OUTD/nccl.log"
    grep -hE "^(attn-dec|attn-pre|copy|dense)" "$OUTD/attention_bench.log"
}

case "${1:-}" in
    build) build ;;
    run) run ;;
    *) echo "usage: $0 build|run" >&2; exit 2 ;;
esac
