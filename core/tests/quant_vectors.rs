//! kiln-core `quant` against independent data in `tests/data/quant/` (see README.md and
//! EXTRA.md there):
//! - dequantization of all 14 weight types vs gguf-py's `dequantize`, compared with float `==`,
//!   plus the README's GEMV check;
//! - Q8_0 / Q4_0 quantization of the vectors' source matrices vs gguf-py's `.bin` bytes;
//! - Q8_0 / Q4_0 / Q4_K / Q5_K / Q6_K quantization vs the bytes of ggml's own C reference
//!   quantizers (`*.ggml.bin`), and the round-trip RMSE vs ggml's (`ggml_rmse.json`).

use std::path::PathBuf;

use kiln_core::{DType, quant};
use serde_json::Value;

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/quant")
}

fn read(name: &str) -> Vec<u8> {
    let p = data_dir().join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn read_f32(name: &str) -> Vec<f32> {
    let b = read(name);
    assert_eq!(b.len() % 4, 0, "{name}");
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn json(name: &str) -> Value {
    serde_json::from_slice(&read(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn manifest_entries() -> Vec<Value> {
    let m = json("manifest.json");
    let e = m["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("manifest.json: no entries"))
        .clone();
    assert_eq!(e.len(), 14, "manifest should list 14 types");
    e
}

fn dtype_of(entry: &Value) -> DType {
    let name = entry["type"]
        .as_str()
        .unwrap_or_else(|| panic!("manifest entry without type: {entry}"));
    DType::parse(name).unwrap_or_else(|| panic!("unknown type {name}"))
}

fn as_usize(v: &Value) -> usize {
    v.as_u64().unwrap_or_else(|| panic!("not an integer: {v}")) as usize
}

/// Every type's `.bin` dequantizes to exactly the `.f32` values (float `==`, so −0 == +0).
#[test]
fn dequantize_matches_gguf_py_bit_exactly() {
    let mut checked = Vec::new();
    for e in manifest_entries() {
        let dt = dtype_of(&e);
        assert_eq!(
            dt.ggml_id(),
            Some(e["ggml_type_id"].as_u64().unwrap() as u32)
        );
        assert_eq!(
            dt.block_size(),
            as_usize(&e["block_size"]),
            "{dt} block size"
        );
        assert_eq!(
            dt.block_bytes(),
            as_usize(&e["type_size"]),
            "{dt} type size"
        );
        let (rows, cols) = (as_usize(&e["rows"]), as_usize(&e["cols"]));
        let bin = read(e["bin"].as_str().unwrap());
        let want = read_f32(e["f32"].as_str().unwrap());
        assert_eq!(bin.len(), as_usize(&e["bin_bytes"]));
        assert_eq!(want.len(), rows * cols);

        // whole tensor at once
        let mut got = vec![f32::NAN; rows * cols];
        quant::dequantize(dt, &bin, &mut got).unwrap();
        let bad: Vec<usize> = (0..got.len()).filter(|&i| got[i] != want[i]).collect();
        assert!(
            bad.is_empty(),
            "{dt}: {} of {} values differ, first at {}: got {:e}, want {:e}",
            bad.len(),
            got.len(),
            bad[0],
            got[bad[0]],
            want[bad[0]]
        );

        // row by row, as the reference matmul calls it
        let row_bytes = dt.bytes_for(cols).unwrap();
        for r in 0..rows {
            let mut row = vec![f32::NAN; cols];
            quant::dequantize(dt, &bin[r * row_bytes..(r + 1) * row_bytes], &mut row).unwrap();
            assert!(
                row.iter().zip(&want[r * cols..]).all(|(a, b)| a == b),
                "{dt} row {r}"
            );
        }
        let negzero = got
            .iter()
            .filter(|v| **v == 0.0 && v.is_sign_negative())
            .count();
        println!(
            "{:6}: {} values equal (f16-subnormal-scale blocks: {}, -0.0 here: {negzero}, in gguf-py: {})",
            dt.name(),
            got.len(),
            e["blocks_with_subnormal_f16_scale"]
                .as_array()
                .unwrap()
                .len(),
            e["negative_zeros_in_f32"]
        );
        checked.push(dt);
    }
    // every weight type but F32 (which is stored as is) has vectors
    for dt in DType::WEIGHT_TYPES.into_iter().filter(|d| *d != DType::F32) {
        assert!(checked.contains(&dt), "{dt} has no test vector");
    }
}

/// y = W·x with our dequantized W against the exactly rounded reference, with the README's
/// tolerance |y − y_ref| ≤ 1e-4·|y_ref| + 1e-6·Σ|W·x| (f32 accumulation).
#[test]
fn gemv_matches_reference_within_readme_tolerance() {
    for e in manifest_entries() {
        let dt = dtype_of(&e);
        let (rows, cols) = (as_usize(&e["rows"]), as_usize(&e["cols"]));
        let w = quant::dequantize_vec(dt, &read(e["bin"].as_str().unwrap())).unwrap();
        let x = read_f32(e["gemv_x"].as_str().unwrap());
        let y_ref = read_f32(e["gemv_y"].as_str().unwrap());
        let abs_dot: Vec<f64> = e["gemv_row_abs_dot"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!((x.len(), y_ref.len(), abs_dot.len()), (cols, rows, rows));
        let mut worst = 0.0f64;
        for r in 0..rows {
            let y: f32 = w[r * cols..(r + 1) * cols]
                .iter()
                .zip(&x)
                .fold(0.0f32, |acc, (a, b)| acc + a * b);
            let err = (y as f64 - y_ref[r] as f64).abs();
            let tol = 1e-4 * (y_ref[r] as f64).abs() + 1e-6 * abs_dot[r];
            assert!(
                err <= tol,
                "{dt} row {r}: y = {y:e}, y_ref = {:e}, |err| = {err:e} > tol {tol:e}",
                y_ref[r]
            );
            worst = worst.max(err / tol);
        }
        println!("{:6}: GEMV worst |err|/tol = {worst:.3e}", dt.name());
    }
}

/// Q8_0 / Q4_0 (and F16 / BF16): quantizing the vectors' own source matrix W reproduces gguf-py's
/// `.bin` byte for byte (make_inputs.py proved that gguf-py's quantize(W) gives those bytes).
#[test]
fn quantize_reproduces_gguf_py_bytes() {
    for dt in [DType::Q8_0, DType::Q4_0, DType::F16, DType::BF16] {
        let w = read_f32(&format!("{dt}.w.f32"));
        let want = read(&format!("{dt}.bin"));
        let mut got = vec![0u8; dt.bytes_for(w.len()).unwrap()];
        quant::quantize(dt, &w, &mut got).unwrap();
        assert_eq!(got.len(), want.len(), "{dt}");
        let bb = dt.block_bytes();
        let bad = (0..want.len() / bb)
            .filter(|&b| got[b * bb..(b + 1) * bb] != want[b * bb..(b + 1) * bb])
            .count();
        assert_eq!(bad, 0, "{dt}: {bad} blocks differ from gguf-py");
        println!("{:6}: {} bytes identical to gguf-py", dt.name(), got.len());
    }
}

/// The inputs the C reference quantizers were run on: (input file stem, tag in `<T>.<tag>.ggml.bin`).
fn ggml_inputs(dt: DType) -> [(String, String); 3] {
    [
        ("realistic.w".into(), "realistic".into()),
        ("edge.w".into(), "edge".into()),
        (format!("{dt}.w"), "w".into()),
    ]
}

fn rmse(a: &[f32], b: &[f32]) -> f64 {
    let se: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| {
            let d = *x as f64 - *y as f64;
            d * d
        })
        .sum();
    (se / a.len() as f64).sqrt()
}

/// Our encoders write the same bytes as ggml's `quantize_row_*_ref` on every input
/// (realistic k = 4096 rows, edge cases, the vectors' W), and therefore the same RMSE.
#[test]
fn quantize_matches_ggml_reference_bytes_and_rmse() {
    let table = json("ggml_rmse.json");
    let entries = table["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("ggml_rmse.json: no entries"));
    for dt in quant::QUANTIZE_BLOCK_TYPES {
        for (stem, tag) in ggml_inputs(dt) {
            let x = read_f32(&format!("{stem}.f32"));
            let want = read(&format!("{dt}.{tag}.ggml.bin"));
            let mut got = vec![0u8; dt.bytes_for(x.len()).unwrap()];
            quant::quantize(dt, &x, &mut got).unwrap();
            assert_eq!(got.len(), want.len(), "{dt} {stem}");
            let bb = dt.block_bytes();
            let nblk = want.len() / bb;
            let bad: Vec<usize> = (0..nblk)
                .filter(|&b| got[b * bb..(b + 1) * bb] != want[b * bb..(b + 1) * bb])
                .collect();
            assert!(
                bad.is_empty(),
                "{dt} on {stem}: {} of {nblk} blocks differ from ggml, first block {}",
                bad.len(),
                bad[0]
            );

            let ours = rmse(&quant::dequantize_vec(dt, &got).unwrap(), &x);
            let theirs = entries
                .iter()
                .find(|e| e["type"] == dt.name() && e["input"] == format!("{stem}.f32"))
                .and_then(|e| e["rmse"].as_f64())
                .unwrap_or_else(|| panic!("no ggml RMSE for {dt} on {stem}"));
            // Identical bytes give identical values; the margin is for the report's sake.
            assert!(
                ours <= theirs * 1.02 + 1e-12,
                "{dt} on {stem}: RMSE {ours:e} > 1.02 × ggml {theirs:e}"
            );
            println!(
                "{:5} {stem:12} {nblk:4} blocks identical to ggml; RMSE kiln {ours:.6e}, ggml {theirs:.6e}",
                dt.name()
            );
        }
    }
}
