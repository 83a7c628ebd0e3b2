//! Routing by hand and the whole `moe` op against a naive per-token computation.

use super::*;
use crate::backend::{Activation, Backend};
use crate::convert::{from_f32, to_f32};
use crate::shape::Shape;
use crate::tensor::HostTensor;

fn pseudo(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f64 / (1u64 << 24) as f64 - 0.5) as f32
        })
        .collect()
}

#[test]
fn routing_ties_and_gatings() {
    let r = |top_k, gating| MoeRouting { top_k, gating };
    // experts 1 and 3 tie at the top; 0 and 2 tie below: lower index wins each tie.
    let l = [0.5f32, 2.0, 0.5, 2.0];
    let got = route(&l, &r(3, MoeGating::TopKSoftmax)).unwrap();
    assert_eq!(got.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 3, 0]);
    let z = 2.0 + (-1.5f64).exp();
    assert!((got[0].1 - 1.0 / z).abs() < 1e-15 && (got[2].1 - (-1.5f64).exp() / z).abs() < 1e-15);

    let l = [1.0f32, 3.0, 2.0];
    let e: Vec<f64> = l.iter().map(|x| (*x as f64).exp()).collect();
    let z: f64 = e.iter().sum();
    let plain = route(&l, &r(2, MoeGating::SoftmaxTopK { renormalize: false })).unwrap();
    assert_eq!(plain[0].0, 1);
    assert_eq!(plain[1].0, 2);
    assert!((plain[0].1 - e[1] / z).abs() < 1e-15 && (plain[1].1 - e[2] / z).abs() < 1e-15);
    let renorm = route(&l, &r(2, MoeGating::SoftmaxTopK { renormalize: true })).unwrap();
    let topk = route(&l, &r(2, MoeGating::TopKSoftmax)).unwrap();
    for (a, b) in renorm.iter().zip(&topk) {
        assert_eq!(a.0, b.0);
        assert!((a.1 - b.1).abs() < 1e-15); // renormalized softmax = softmax over the top k
    }
    assert!(route(&[0.0, f32::NAN], &r(1, MoeGating::TopKSoftmax)).is_err());
}

#[test]
fn moe_matches_naive_per_token_experts() {
    let b = ReferenceBackend::new(0);
    let (n_exp, ff, dim, n_tokens) = (4usize, 6usize, 5usize, 7usize);
    let gate = pseudo(n_exp * ff * dim, 1);
    let up = pseudo(n_exp * ff * dim, 2);
    let down = pseudo(n_exp * dim * ff, 3);
    let x = pseudo(n_tokens * dim, 4);
    let logits = pseudo(n_tokens * n_exp, 5);
    // gate f32, up bf16, down f16: the three may differ
    let prep = |v: &[f32], dt: DType, s: Shape| {
        let bytes = from_f32(dt, v).unwrap();
        let w = b
            .prepare_weight(&HostTensor::new(dt, s, &bytes).unwrap())
            .unwrap();
        (w, to_f32(dt, &bytes).unwrap())
    };
    let (gw, gq) = prep(&gate, DType::F32, Shape::d3(n_exp, ff, dim));
    let (uw, uq) = prep(&up, DType::BF16, Shape::d3(n_exp, ff, dim));
    let (dw, dq) = prep(&down, DType::F16, Shape::d3(n_exp, dim, ff));
    let buf = |v: &[f32]| {
        let bb = b.alloc(v.len() * 4).unwrap();
        b.write(&bb, 0, &from_f32(DType::F32, v).unwrap()).unwrap();
        bb
    };
    let (xb, lb, ob) = (buf(&x), buf(&logits), buf(&vec![f32::NAN; n_tokens * dim]));
    for (act, gating) in [
        (
            Activation::Silu,
            MoeGating::SoftmaxTopK { renormalize: false },
        ),
        (Activation::GeluTanh, MoeGating::TopKSoftmax),
    ] {
        let r = MoeRouting { top_k: 2, gating };
        let ex = MoeExperts {
            gate: &gw,
            up: &uw,
            down: &dw,
            act,
        };
        b.moe(
            xb.view(0, Shape::d2(n_tokens, dim), DType::F32).unwrap(),
            lb.view(0, Shape::d2(n_tokens, n_exp), DType::F32).unwrap(),
            &ex,
            &r,
            None,
            ob.view_mut(0, Shape::d2(n_tokens, dim), DType::F32)
                .unwrap(),
        )
        .unwrap();
        let mut raw = vec![0u8; n_tokens * dim * 4];
        b.read(&ob, 0, &mut raw).unwrap();
        let got = to_f32(DType::F32, &raw).unwrap();
        for t in 0..n_tokens {
            let xt = &x[t * dim..(t + 1) * dim];
            let mut want = vec![0f64; dim];
            for (e, w) in route(&logits[t * n_exp..(t + 1) * n_exp], &r).unwrap() {
                let h: Vec<f32> = (0..ff)
                    .map(|i| {
                        let row = |m: &[f32]| -> f64 {
                            (0..dim)
                                .map(|j| m[(e * ff + i) * dim + j] as f64 * xt[j] as f64)
                                .sum()
                        };
                        let g = row(&gq) as f32;
                        let a = match act {
                            Activation::Silu => g / (1.0 + (-g).exp()),
                            Activation::GeluTanh => super::super::act::gelu_tanh(g),
                        };
                        a * row(&uq) as f32
                    })
                    .collect();
                for d in 0..dim {
                    let y: f64 = (0..ff)
                        .map(|i| dq[(e * dim + d) * ff + i] as f64 * h[i] as f64)
                        .sum();
                    want[d] += w * y;
                }
            }
            for d in 0..dim {
                let (a, e) = (got[t * dim + d] as f64, want[d]);
                assert!(
                    (a - e).abs() <= 1e-5 * (1.0 + e.abs()),
                    "t{t} d{d}: {a} vs {e}"
                );
            }
        }
    }
}
