#!/usr/bin/env bash
# Multi-GPU check (issue 7) on the GPU machine: `kiln logits` of every zoo model with a layer
# split and tensor parallelism over two CUDA GPUs (and a CUDA + Vulkan layer split) against the
# one-GPU run; the decode bench (Llama-3-8B shape, random weights) at TP1 and TP2; `kiln plan`
# next to the memory measured while the model runs (if the build has `kiln plan`).
#
# 1. Here:  tests/scripts/gpu_multi.sh build      (→ .gpu/multi.tar.xz, git-ignored)
# 2. GPU:   run(kind="nvidia-h200-x2", carry=[".gpu/multi.tar.xz", ".gl"],
#               command="bash tests/scripts/gpu_multi.sh run")
#    (env SKIP_ZOO / SKIP_DECODE skip parts; DECODE_AB=1 and PIPE_AB=1 add the A/B runs below)
set -uo pipefail
cd "$(dirname "$0")/../.."
B=.gpu/multi

build() {
    set -e
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target-tests}"
    local NV="${KILN_NVRTC_DIR:-$HOME/.cache/kiln-ci/venv/lib/python3.11/site-packages/nvidia/cu13}"
    rm -rf "$B"; mkdir -p "$B"
    cargo build --release -p kiln-examples --bin kiln
    cargo build --release -p kiln-benches --bin decode
    cp "$CARGO_TARGET_DIR/release/kiln" "$CARGO_TARGET_DIR/release/decode" "$B/"
    # The engine test (32 batched greedy streams vs each alone, every backend present).
    local eng; eng=$(cargo test --release -p kiln-models --test engine --no-run --message-format=json 2>/dev/null \
        | python3 -c "import json,sys
for l in sys.stdin:
    try: m=json.loads(l)
    except ValueError: continue
    if m.get('reason')=='compiler-artifact' and m.get('executable') and m['target']['name']=='engine': print(m['executable'])")
    cp "$eng" "$B/engine_test"
    # The P2P all-reduce tests (plain and fused with the residual + norm).
    local t
    for t in p2p p2p_norm; do
        cargo test --release -p kiln-cuda --test $t --no-run --message-format=json 2>/dev/null \
            | python3 -c "import json,sys
for l in sys.stdin:
    try: m=json.loads(l)
    except ValueError: continue
    if m.get('reason')=='compiler-artifact' and m.get('executable') and m['target']['name']=='$t': print(m['executable'])" \
            | xargs -I{} cp {} "$B/${t}_test"
    done
    strip "$B"/*
    # Kernels precompiled for sm_90 (the NVRTC compile of matmul_q.cu takes minutes).
    local list; list=$(mktemp)
    cargo test --release -p kiln-cuda --test nvrtc_compile --no-run --message-format=json \
        2>/dev/null >"$list"
    local exe; exe=$(python3 -c "import json,sys
for l in open(sys.argv[1]):
    try: m=json.loads(l)
    except ValueError: continue
    if m.get('reason')=='compiler-artifact' and m.get('executable') and m['target']['name']=='nvrtc_compile': print(m['executable'])" "$list")
    KILN_CACHE_DIR="$PWD/$B/cache" LD_LIBRARY_PATH="$NV/lib" KILN_CUDA_INCLUDE="$NV/include" \
        "$exe" --ignored precompile_sm90_into_cache --nocapture >/dev/null
    rm -f "$list"
    mkdir -p "$B/zoo"
    cp ../shared/testdata/zoo/README.md "$B/zoo/"
    for m in llama3 qwen3 mistral gemma3 mixtral qwen3moe qwen2; do
        mkdir -p "$B/zoo/$m"
        cp ../shared/testdata/zoo/$m/{config.json,tokenizer.json,tokenizer_config.json,model.safetensors,reference.json} "$B/zoo/$m/" 2>/dev/null || true
        cp ../shared/testdata/zoo/$m/*.f32 "$B/zoo/$m/" 2>/dev/null || true
        cp ../shared/testdata/zoo/$m/model-q8_0.gguf "$B/zoo/$m/" 2>/dev/null || true
    done
    tar -C "$B" -cf - . | xz -T2 -6 >"$B.tar.xz"
    rm -rf "$B"
    du -sh "$B.tar.xz"
}

run() {
    local OUTD="${OUT:-$PWD/gpu-results}"
    mkdir -p "$OUTD" "$B"
    tar -C "$B" -xJf "$B.tar.xz"
    export NCCL_NVLS_ENABLE=0
    export KILN_CACHE_DIR=/tmp/kiln-cache
    mkdir -p "$KILN_CACHE_DIR"; cp -r "$B/cache/." "$KILN_CACHE_DIR/" 2>/dev/null || true
    for f in .gl/*.deb; do dpkg -x "$f" / ; done; ldconfig
    export XDG_RUNTIME_DIR=/tmp
    nvidia-smi -L | tee "$OUTD/devices.txt"
    "$B/kiln" devices >>"$OUTD/devices.txt" 2>&1

    echo "== kiln logits: zoo on cuda:0 vs two GPUs (tensor, layer) and cuda:0 + wgpu:0 (layer)"
    [ -n "${SKIP_ZOO:-}" ] || python3 - "$B" >"$OUTD/logits.log" 2>&1 <<'PY'
import json, os, struct, subprocess, sys
B = sys.argv[1]
def logits(path, ids, devices, parallel=None):
    out = "/tmp/kiln-logits.f32"
    args = [f"{B}/kiln", "logits", path, "--ids", ids, "--out", out, "--devices", devices,
            "--kv-type", "f32"]
    if parallel: args += ["--parallel", parallel]
    p = subprocess.run(args, capture_output=True, text=True)
    if p.returncode: return None, p.stderr.strip().splitlines()[-1]
    b = open(out, "rb").read()
    return struct.unpack(f"<{len(b)//4}f", b), None
def diff(a, b): return max(abs(x - y) for x, y in zip(a, b))
for m in sorted(os.listdir(f"{B}/zoo")):
    if not os.path.isdir(f"{B}/zoo/{m}"): continue
    d = f"{B}/zoo/{m}"; r = json.load(open(f"{d}/reference.json")); c = r["cases"][1]
    ids = ",".join(str(i) for i in c["input_ids"])
    ref = struct.unpack(f"<{os.path.getsize(d+'/'+c['logits_file'])//4}f", open(d+"/"+c["logits_file"], "rb").read())
    for fmt, path in [("safetensors", d), ("q8_0", f"{d}/model-q8_0.gguf")]:
        if not os.path.exists(path): continue
        one, err = logits(path, ids, "cuda:0")
        if one is None: print(f"{m} {fmt} cuda:0 FAILED {err}"); continue
        print(f"{m:<9} {fmt:<11} cuda:0 alone                vs transformers {diff(one, ref):.2e}")
        for devs, par in [("cuda:0,cuda:1", "tensor"), ("cuda:0,cuda:1", "layer"), ("cuda:0,wgpu:0", "layer"), ("cuda:0,wgpu:0", "tensor")]:
            got, err = logits(path, ids, devs, par)
            if got is None: print(f"{m:<9} {fmt:<11} {devs} {par}: {err}"); continue
            print(f"{m:<9} {fmt:<11} {devs:<14} {par:<6} |Δ| vs cuda:0 {diff(got, one):.2e}  vs transformers {diff(got, ref):.2e}")
PY
    [ -n "${SKIP_ZOO:-}" ] || cat "$OUTD/logits.log"

    echo "== qwen3moe safetensors: which device / rank goes wrong"
    python3 - "$B" >>"$OUTD/logits.log" 2>&1 <<'PY'
import json, os, struct, subprocess, sys
B = sys.argv[1]; d = f"{B}/zoo/qwen3moe"; c = json.load(open(f"{d}/reference.json"))["cases"][1]
ids = ",".join(str(i) for i in c["input_ids"])
def logits(devices, parallel=None):
    args = [f"{B}/kiln", "logits", d, "--ids", ids, "--out", "/tmp/q.f32", "--devices", devices, "--kv-type", "f32"]
    if parallel: args += ["--parallel", parallel]
    p = subprocess.run(args, capture_output=True, text=True)
    if p.returncode: return p.stderr.strip().splitlines()[-1]
    b = open("/tmp/q.f32", "rb").read(); return struct.unpack(f"<{len(b)//4}f", b)
one = logits("cuda:0")
for devs, par in [("cuda:1", None), ("cuda:1,cuda:0", "tensor"), ("wgpu:0,cuda:0", "tensor"), ("wgpu:0,cuda:1", "tensor"), ("reference:0,cuda:1", "tensor"), ("cuda:0,cuda:1", "tensor")]:
    got = logits(devs, par)
    print(f"qwen3moe diag {devs:<20} {par or '':<6}", got if isinstance(got, str) else f"|Δ| vs cuda:0 {max(abs(x-y) for x,y in zip(got, one)):.2e}")
PY
    grep "diag" "$OUTD/logits.log"

    echo "== engine: 32 batched greedy streams vs each alone on CUDA and Vulkan"
    KILN_ZOO="$PWD/$B/zoo" KILN_TEST_BACKENDS=cuda,wgpu timeout 300 "$B/engine_test" \
        batched_greedy_streams_match_alone_on_every_backend --nocapture >"$OUTD/engine.log" 2>&1
    grep -E "streams|test result|panicked|bound" "$OUTD/engine.log" | head -20

    echo "== P2P all-reduce tests (plain; fused with the residual add + rms_norm)"
    for t in p2p p2p_norm; do
        [ -x "$B/${t}_test" ] || continue
        KILN_REQUIRE_P2P=1 KILN_REQUIRE_NCCL=1 timeout 240 "$B/${t}_test" --test-threads=1 \
            --nocapture >"$OUTD/${t}.log" 2>&1
        grep -E "^test |test result|panicked|fused|interleaved|KiB|MiB" "$OUTD/${t}.log" | head -40
    done

    [ -n "${SKIP_DECODE:-}" ] && return 0
    echo "== decode bench: Llama-3-8B shape, TP1 vs TP2, graphs on and off"
    for w in bf16 q4_k; do
        for tp in 1 2; do
            timeout 280 "$B/decode" --backend cuda --model llama3-8b --wtype $w --batch 1,32 \
                --ctx 512 --steps 32 --graph both --tp $tp >"$OUTD/decode_${w}_tp$tp.log" 2>&1
            tail -n 7 "$OUTD/decode_${w}_tp$tp.log"
        done
    done
    # DECODE_AB=1: the same, graphs on, batch 1, without the grouped q/k/v and gate/up GEMVs
    # (KILN_GEMV_GROUP=0: what one launch per group gains).
    if [ -n "${DECODE_AB:-}" ]; then
        echo "== decode bench A/B: KILN_GEMV_GROUP=0"
        for w in bf16 q4_k; do
            for tp in 1 2; do
                KILN_GEMV_GROUP=0 timeout 280 "$B/decode" --backend cuda --model llama3-8b \
                    --wtype $w --batch 1 --ctx 512 --steps 32 --graph on --tp $tp \
                    >"$OUTD/decode_${w}_tp${tp}_nogroup.log" 2>&1
                tail -n 4 "$OUTD/decode_${w}_tp${tp}_nogroup.log"
            done
        done
    fi
    # PIPE_AB=1: Q4_K TP2 at batch 1, 2, 4, graphs on, with the pipelined GEMV kept off the
    # grouped devices (the default) and on them (KILN_GEMV_PIPE_GROUPED=1), alternating twice.
    if [ -n "${PIPE_AB:-}" ]; then
        echo "== decode bench A/B: pipelined GEMV on TP ranks (KILN_GEMV_PIPE_GROUPED)"
        for r in 1 2; do
            for v in 0 1; do
                KILN_GEMV_PIPE_GROUPED=$v timeout 280 "$B/decode" --backend cuda --model llama3-8b \
                    --wtype q4_k --batch 1,2,4 --ctx 512 --steps 32 --graph on --tp 2 \
                    >"$OUTD/decode_q4_k_tp2_pipe${v}_r$r.log" 2>&1
                echo "KILN_GEMV_PIPE_GROUPED=$v run $r:"
                grep -E "^\s+[0-9]+\s+512" "$OUTD/decode_q4_k_tp2_pipe${v}_r$r.log" | awk '{print "  batch", $1, $4, "ms", $NF}'
            done
        done
    fi
    # Planned vs measured peak memory: the decode bench prints both per run (its "memory on"
    # lines in decode_*.log).
}

case "${1:-}" in
    build) build ;;
    run) run ;;
    *) echo "usage: $0 build|run" >&2; exit 2 ;;
esac
