//! Speed check of `kiln_core::quant` on one thread, the way the reference matmul uses it: one
//! weight row of k = 4096 elements at a time, dequantized into a reused f32 buffer.
//!
//!     cargo run --release -p kiln-core --example quant_speed
//!
//! Prints, per type, the best of 9 passes: the dequantization rate (elements/s and input GB/s) and, for the types
//! `quantize` writes, the quantization rate.

use std::hint::black_box;
use std::time::Instant;

use kiln_core::{DType, quant};

const K: usize = 4096;
const ROWS: usize = 256;
const PASSES: usize = 9;

fn main() -> kiln_core::Result<()> {
    // deterministic pseudo-random weights ~ U(-0.05, 0.05)
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let w: Vec<f32> = (0..K * ROWS)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
        })
        .collect();
    println!("one thread, rows of k = {K}, {ROWS} rows per pass");
    for dt in DType::WEIGHT_TYPES {
        // block bytes of every type: quantize where we can, else random bytes with small scales
        let bytes = match quant::can_quantize(dt) {
            true => {
                let mut q = vec![0u8; dt.bytes_for(w.len())?];
                quant::quantize(dt, &w, &mut q)?;
                q
            }
            false => random_blocks(dt, w.len())?,
        };
        let row_bytes = dt.bytes_for(K)?;
        let mut out = vec![0.0f32; K];
        // best of PASSES passes over ROWS rows (the machine may be shared)
        let secs = best_of(|| {
            for r in 0..ROWS {
                quant::dequantize(dt, &bytes[r * row_bytes..(r + 1) * row_bytes], &mut out)?;
                black_box(&out);
            }
            Ok(())
        })?;
        let elems = (ROWS * K) as f64;
        let line = format!(
            "{:6} dequantize {:7.0} Melem/s  {:5.2} GB/s in  {:5.2} GB/s out",
            dt.name(),
            elems / secs / 1e6,
            (ROWS * row_bytes) as f64 / secs / 1e9,
            elems * 4.0 / secs / 1e9
        );
        if quant::can_quantize(dt) && dt.is_quantized() {
            let mut q = vec![0u8; row_bytes];
            let secs = best_of(|| {
                for r in 0..ROWS {
                    quant::quantize(dt, &w[r * K..(r + 1) * K], &mut q)?;
                    black_box(&q);
                }
                Ok(())
            })?;
            println!("{line}   quantize {:6.1} Melem/s", elems / secs / 1e6);
        } else {
            println!("{line}");
        }
    }
    Ok(())
}

/// The shortest of `PASSES` runs of `f`, in seconds.
fn best_of(mut f: impl FnMut() -> kiln_core::Result<()>) -> kiln_core::Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..PASSES {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// Random block bytes whose f16 fields hold a small positive scale (0.001).
fn random_blocks(dt: DType, n: usize) -> kiln_core::Result<Vec<u8>> {
    let mut b = vec![0u8; dt.bytes_for(n)?];
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    for v in b.iter_mut() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        *v = (s >> 56) as u8;
    }
    // offsets of the f16 scale fields per block (see the block structs in core/src/quant)
    let fields: &[usize] = match dt {
        DType::Q4_1 | DType::Q5_1 | DType::Q4_K | DType::Q5_K => &[0, 2],
        DType::Q4_0 | DType::Q5_0 | DType::Q8_0 | DType::IQ4_NL | DType::IQ4_XS => &[0],
        DType::Q2_K => &[80, 82],
        DType::Q3_K => &[108],
        DType::Q6_K => &[208],
        _ => &[],
    };
    let h = half::f16::from_f32(0.001).to_le_bytes();
    for blk in b.chunks_exact_mut(dt.block_bytes()) {
        for &o in fields {
            blk[o..o + 2].copy_from_slice(&h);
        }
    }
    Ok(b)
}
