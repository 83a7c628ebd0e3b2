//! Weights larger than the binding cap are split into row chunks transparently. The cap is
//! lowered with KILN_WGPU_MAX_BINDING (this file is its own process, so the setting does not
//! leak into other tests).
// Tests may unwrap (project convention); index loops keep the oracles close to the math.
#![allow(clippy::unwrap_used, clippy::needless_range_loop)]

mod common;

use common::*;
use kiln_core::{Backend, DType, HostTensor, Shape};

#[test]
fn split_weights_give_the_same_results() {
    // Q8_0 [40, 512]: 16 blocks of 34 bytes = 544 bytes a row; a 2000-byte cap → 3 rows a chunk.
    // SAFETY: this test binary has this one test, so no other thread reads the environment.
    unsafe { std::env::set_var("KILN_WGPU_MAX_BINDING", "2000") };
    let Some(be) = open() else { return };
    let c = quant_case(DType::Q8_0).expect("shared quant data");
    // 40 rows: the 8 test rows five times.
    let mut bin = Vec::new();
    let mut deq = Vec::new();
    for _ in 0..5 {
        bin.extend_from_slice(&c.bin);
        deq.extend_from_slice(&c.deq);
    }
    let w = be
        .prepare_weight(&HostTensor::new(DType::Q8_0, Shape::d2(40, 512), &bin).unwrap())
        .unwrap();
    assert_eq!(be.weight_chunks(&w).unwrap(), 14);
    let mut r = rng(21);
    let m = 5;
    let x = randn(&mut r, m * 512, 1.0);
    let xb = upload(&be, &f32_bytes(&x));
    for path in [kiln_wgpu::MatmulPath::Gemv, kiln_wgpu::MatmulPath::Gemm] {
        let o = poisoned(&be, m * 40);
        be.matmul_with(
            xb.view(0, Shape::d2(m, 512), DType::F32).unwrap(),
            &w,
            o.view_mut(0, Shape::d2(m, 40), DType::F32).unwrap(),
            path,
        )
        .unwrap();
        let got = read_f32(&be, &o, 0, m * 40);
        let oracle = |x: &[f32]| {
            let mut want = vec![0f32; m * 40];
            for i in 0..m {
                for j in 0..40 {
                    want[i * 40 + j] = (0..512)
                        .map(|t| f64::from(x[i * 512 + t]) * f64::from(deq[j * 512 + t]))
                        .sum::<f64>() as f32;
                }
            }
            want
        };
        // The GEMV path at m = 5 is gemv_x8m (x rounded to int8 per 16) where the adapter has
        // dot4I8Packed, else the exact-x GEMV: either oracle (they differ by ~4e-5 nmse, so a
        // wrong chunk row or output stride fails both).
        let e = nmse(&got, &oracle(&x));
        let e8 = if path == kiln_wgpu::MatmulPath::Gemv {
            nmse(&got, &oracle(&round_x8(&x).0))
        } else {
            e
        };
        assert!(
            e.min(e8) < 2e-6,
            "{path:?}: nmse {e} (rounded-x oracle {e8})"
        );
    }
    // embed across chunks
    let ids = [39, 0, 20, 3];
    let ib = upload(&be, &i32_bytes(&ids));
    let o = poisoned(&be, 4 * 512);
    be.embed(
        ib.view(0, Shape::d1(4), DType::I32).unwrap(),
        &w,
        1.0,
        o.view_mut(0, Shape::d2(4, 512), DType::F32).unwrap(),
    )
    .unwrap();
    let got = read_f32(&be, &o, 0, 4 * 512);
    for (i, &id) in ids.iter().enumerate() {
        assert_eq!(
            &got[i * 512..(i + 1) * 512],
            &deq[id as usize * 512..(id as usize + 1) * 512]
        );
    }
    // A single row over the cap is an error naming the limit.
    let big = vec![0u8; 4 * 1024];
    let e = be
        .prepare_weight(&HostTensor::new(DType::F32, Shape::d2(1, 1024), &big).unwrap())
        .unwrap_err();
    assert!(e.to_string().contains("limit"), "{e}");
}
