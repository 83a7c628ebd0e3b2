#!/usr/bin/env python3
"""Extra f32 inputs for kiln's quantizer tests (core/tests/quant_vectors.rs).

Reproduce (same pinned versions as generate.py, which this script imports from this folder):

    python3 -m venv venv && venv/bin/pip install gguf==0.19.0 numpy==2.4.6
    venv/bin/python make_inputs.py           # (re)writes the files below next to this script
    venv/bin/python make_inputs.py --check   # regenerates in memory and compares with the files

Files written (all little-endian float32, row-major):

* `<T>.w.f32` for T in Q8_0, Q4_0, F16, BF16, Q4_K, Q5_K, Q6_K: the source matrix W[8, 512] of the test
  vectors `<T>.bin`, rebuilt with generate.py's own `make_matrix(1000 + ggml_type_id)`.
  Proof that it is the right matrix: for Q8_0, Q4_0, F16 and BF16 the script asserts that gguf-py's
  `quants.quantize(W)` reproduces `<T>.bin` byte for byte; for the k-quants (whose `.bin` blocks are
  constructed, not quantized) it asserts that generate.py's `construct_blocks(T, W, seed)` reproduces
  `<T>.bin` (the f16 super-scales of those blocks are derived from max|W| per block).
* `realistic.w.f32`: W[4, 4096] ~ N(0, 0.02^2) from `default_rng(4096)`, 1 % of the entries
  (chosen with `rng.choice` from the same generator) multiplied by 8: the shape of a real
  transformer row (k = 4096), used for the RMSE comparison with llama.cpp.
* `edge.w.f32`: W[14, 256], one edge case per 256-element row (see EDGE_ROWS below): all zero,
  constants, a single spike, tiny values whose f16 scales are subnormal or underflow to 0, huge
  values, one-signed rows, sparse rows, a ramp, half-zero rows, ties for the max magnitude.

The `*.ggml.bin` files and `ggml_rmse.json` next to them were made from these inputs by ggml's own
C reference quantizers; EXTRA.md says how.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys

import numpy as np
from gguf import GGMLQuantizationType

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import generate  # noqa: E402  (the test vectors' own recipe, copied from shared/testdata/quant)

QUANTIZED_BY_GGUF = ["Q8_0", "Q4_0", "F16", "BF16"]
CONSTRUCTED = ["Q4_K", "Q5_K", "Q6_K"]

REALISTIC_SEED = 4096
REALISTIC_ROWS, REALISTIC_COLS = 4, 4096

EDGE_SEED = 77
EDGE_ROWS = [
    "all zero",
    "constant +0.5",
    "constant -0.25",
    "single spike 3.0 at element 37, zeros elsewhere",
    "tiny: N(0,1) * 1e-6 (f16 scales subnormal or zero)",
    "very tiny: N(0,1) * 1e-9 (f16 scales underflow to 0)",
    "huge: N(0,1) * 3000",
    "all positive: |N(0,1)| * 0.02",
    "all negative: -|N(0,1)| * 0.02",
    "sparse: 90 % zeros, the rest N(0,1) * 0.02",
    "ramp: linspace(-1, 1, 256)",
    "half zero: elements 0..127 zero, 128..255 N(0,1) * 0.02",
    "ties: N(0,1) * 0.1 with -0.5 at element 3 and +0.5 at element 10 (first max magnitude wins)",
    "mixed magnitudes: N(0,1) * 0.02 with element 200 = 40.0",
]


def vector_matrix(name: str) -> np.ndarray:
    seed = generate.seed_for(name)
    w = generate.make_matrix(seed)
    want = open(os.path.join(HERE, f"{name}.bin"), "rb").read()
    if name in QUANTIZED_BY_GGUF:
        got = generate.quantize_with_gguf(name, w).tobytes()
        how = "gguf-py quants.quantize(W)"
    else:
        got = generate.construct_blocks(name, w, seed).tobytes()
        how = "generate.construct_blocks(W)"
    if got != want:
        raise SystemExit(f"{name}: {how} does not reproduce {name}.bin: W is not the vectors' matrix")
    print(f"{name}: {how} == {name}.bin ({len(want)} bytes)")
    return w


def realistic_matrix() -> np.ndarray:
    rng = np.random.default_rng(REALISTIC_SEED)
    w = rng.standard_normal((REALISTIC_ROWS, REALISTIC_COLS), dtype=np.float32) * np.float32(0.02)
    n_out = int(round(REALISTIC_ROWS * REALISTIC_COLS * 0.01))
    idx = rng.choice(REALISTIC_ROWS * REALISTIC_COLS, size=n_out, replace=False)
    flat = w.reshape(-1)
    flat[idx] *= np.float32(8.0)
    return w


def edge_matrix() -> np.ndarray:
    rng = np.random.default_rng(EDGE_SEED)
    n = 256

    def normal(scale: float) -> np.ndarray:
        return rng.standard_normal(n, dtype=np.float32) * np.float32(scale)

    rows = []
    rows.append(np.zeros(n, np.float32))
    rows.append(np.full(n, 0.5, np.float32))
    rows.append(np.full(n, -0.25, np.float32))
    r = np.zeros(n, np.float32)
    r[37] = 3.0
    rows.append(r)
    rows.append(normal(1e-6))
    rows.append(normal(1e-9))
    rows.append(normal(3000.0))
    rows.append(np.abs(normal(0.02)))
    rows.append(-np.abs(normal(0.02)))
    r = normal(0.02)
    r[rng.random(n) < 0.9] = 0.0
    rows.append(r)
    rows.append(np.linspace(-1.0, 1.0, n, dtype=np.float32))
    r = normal(0.02)
    r[:128] = 0.0
    rows.append(r)
    r = np.clip(normal(0.1), -0.45, 0.45)
    r[3], r[10] = -0.5, 0.5
    rows.append(r)
    r = normal(0.02)
    r[200] = 40.0
    rows.append(r)
    assert len(rows) == len(EDGE_ROWS)
    return np.stack(rows).astype(np.float32)


def outputs() -> dict[str, bytes]:
    files = {}
    for name in QUANTIZED_BY_GGUF + CONSTRUCTED:
        assert name in GGMLQuantizationType.__members__
        files[f"{name}.w.f32"] = vector_matrix(name).astype("<f4").tobytes()
    files["realistic.w.f32"] = realistic_matrix().astype("<f4").tobytes()
    files["edge.w.f32"] = edge_matrix().astype("<f4").tobytes()
    return files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare with the files instead of writing them")
    args = ap.parse_args()
    for k, v in generate.PINNED.items():
        if importlib.metadata.version(k) != v:
            print(f"warning: {k} {importlib.metadata.version(k)} installed, {v} pinned", file=sys.stderr)
    files = outputs()
    bad = 0
    for fn, data in files.items():
        p = os.path.join(HERE, fn)
        if args.check:
            if not os.path.exists(p) or open(p, "rb").read() != data:
                print(f"MISMATCH {fn}")
                bad += 1
        else:
            with open(p, "wb") as f:
                f.write(data)
            print(f"wrote {fn} ({len(data)} bytes)")
    if args.check:
        print("check:", "OK" if bad == 0 else f"{bad} mismatches")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
