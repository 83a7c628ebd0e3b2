//! Each tensor-parallel rank's share of a zoo MoE model, run op by op on every backend present
//! against the reference backend holding the same share: the rank's q/k/v/o and expert
//! matmuls and its MoE, with the same random inputs. A whole-model comparison only says that a
//! group is off; this says which rank's which op on which backend. Measured: lavapipe ≤ 3.3e-7
//! relative; CUDA on an H200 (both ranks of qwen3moe and mixtral, safetensors and q8_0) ≤ 2.4e-7
//! for bf16 and ≤ 4.9e-3 for q8_0 (int8 activations), so qwen3moe's 0.71 TP difference on CUDA
//! is not a wrong share op (BENCHMARKS.md, 2026-11-22).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod zoo_util;

use std::sync::Arc;

use kiln_core::{Backend, DType, MoeExperts, MoeRouting, ReferenceBackend, Shape, Weight};
use kiln_models::runtime::weights::Ffn;
use kiln_models::runtime::{Parallel, Placement};
use kiln_models::{LoadOptions, Model};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use zoo_util::*;

fn upload(b: &dyn Backend, v: &[f32]) -> kiln_core::Buffer {
    let buf = b.alloc(v.len() * 4).unwrap();
    b.write(&buf, 0, bytemuck::cast_slice(v)).unwrap();
    buf
}

fn read(b: &dyn Backend, buf: &kiln_core::Buffer, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    b.read(buf, 0, bytemuck::cast_slice_mut(&mut out)).unwrap();
    out
}

/// y = x·Wᵀ on `b` for x `[m, k]`.
fn matmul(b: &dyn Backend, w: &Weight, x: &[f32], m: usize) -> Vec<f32> {
    let (n, k) = (w.shape().dim(0), w.shape().dim(1));
    let xb = upload(b, x);
    let yb = b.alloc(m * n * 4).unwrap();
    b.matmul(
        xb.view(0, Shape::d2(m, k), DType::F32).unwrap(),
        w,
        yb.view_mut(0, Shape::d2(m, n), DType::F32).unwrap(),
    )
    .unwrap();
    read(b, &yb, m * n)
}

fn moe(
    b: &dyn Backend,
    (gate, up, down): (&Weight, &Weight, &Weight),
    act: kiln_core::Activation,
    r: &MoeRouting,
    x: &[f32],
    logits: &[f32],
    m: usize,
) -> Vec<f32> {
    let (e, dim) = (gate.shape().dim(0), gate.shape().dim(2));
    let ex = MoeExperts {
        gate,
        up,
        down,
        act,
    };
    let (xb, lb) = (upload(b, x), upload(b, logits));
    let out = b.alloc(m * dim * 4).unwrap();
    let xv = xb.view(0, Shape::d2(m, dim), DType::F32).unwrap();
    let lv = lb.view(0, Shape::d2(m, e), DType::F32).unwrap();
    let sb = b.moe_scratch_bytes(m, &ex, r);
    let scratch = (sb > 0).then(|| b.alloc(sb).unwrap());
    b.moe(
        xv,
        lv,
        &ex,
        r,
        scratch
            .as_ref()
            .map(|s| s.view_mut(0, Shape::d1(sb), DType::U8).unwrap()),
        out.view_mut(0, Shape::d2(m, dim), DType::F32).unwrap(),
    )
    .unwrap();
    read(b, &out, m * dim)
}

fn rel(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().map(|v| v.abs()).fold(0f32, f32::max).max(1e-6);
    max_diff(a, b) / scale
}

#[test]
fn every_rank_share_computes_alike_on_every_backend() {
    let Some(z) = zoo() else {
        println!("skipped: zoo not found");
        return;
    };
    let reference: Arc<dyn Backend> = Arc::new(ReferenceBackend::new(0));
    let others: Vec<_> = backends()
        .into_iter()
        .filter(|(_, b)| b.id().kind != kiln_core::BackendKind::Reference)
        .collect();
    let mut failures = Vec::new();
    for m in ["qwen3moe", "mixtral"] {
        let dir = z.join(m);
        for (label, path) in formats(&dir) {
            let p = path.to_str().unwrap();
            let load = |devs: Vec<Arc<dyn Backend>>| {
                let place = Placement {
                    devices: devs,
                    parallel: Some(Parallel::Tensor),
                    collective: None,
                };
                Model::load_on(p, place, &LoadOptions::default(), &mut |_| {}).unwrap()
            };
            let want = load(vec![reference.clone(), Arc::new(ReferenceBackend::new(1))]);
            for (bname, b) in &others {
                for rank in 0..2 {
                    // The backend under test holds rank `rank`, the reference the other one.
                    let mut devs = vec![reference.clone(), reference.clone()];
                    devs[1 - rank] = Arc::new(ReferenceBackend::new(1));
                    devs[rank] = b.clone();
                    let got = load(devs);
                    let (ws, wg) = (&want.shards()[rank].weights, &got.shards()[rank].weights);
                    let cfg = got.shards()[rank].config.clone();
                    let refb = want.shards()[rank].backend.clone();
                    let mut rng = StdRng::seed_from_u64(7);
                    let rows = 8;
                    for (l, (lw, lg)) in ws.layers.iter().zip(&wg.layers).enumerate() {
                        let mut check = |what: &str, a: Vec<f32>, w: Vec<f32>, tol: f32| {
                            let e = rel(&a, &w);
                            println!(
                                "{m:<9} {label:<11} {bname} rank {rank} layer {l} {what:<6} rel |Δ| {e:.2e}"
                            );
                            if e > tol {
                                failures.push(format!(
                                    "{m} {label} {bname} rank {rank} layer {l} {what}: {e:.2e} > {tol:e}"
                                ));
                            }
                        };
                        for (what, a, w) in [
                            ("q", &lg.q, &lw.q),
                            ("k", &lg.k, &lw.k),
                            ("v", &lg.v, &lw.v),
                            ("o", &lg.o, &lw.o),
                        ] {
                            let k = w.shape().dim(1);
                            let x: Vec<f32> =
                                (0..rows * k).map(|_| rng.random_range(-1.0..1.0)).collect();
                            check(
                                what,
                                matmul(b.as_ref(), a, &x, rows),
                                matmul(refb.as_ref(), w, &x, rows),
                                3e-2,
                            );
                        }
                        if let (
                            Ffn::Moe {
                                gate: g1,
                                up: u1,
                                down: d1,
                                ..
                            },
                            Ffn::Moe {
                                gate: g2,
                                up: u2,
                                down: d2,
                                ..
                            },
                        ) = (&lg.ffn, &lw.ffn)
                        {
                            let mc = cfg.moe.as_ref().unwrap();
                            let r = MoeRouting {
                                top_k: mc.top_k,
                                gating: mc.gating,
                            };
                            let (e, dim) = (g1.shape().dim(0), g1.shape().dim(2));
                            let x: Vec<f32> = (0..rows * dim)
                                .map(|_| rng.random_range(-1.0..1.0))
                                .collect();
                            let lg_: Vec<f32> =
                                (0..rows * e).map(|_| rng.random_range(-3.0..3.0)).collect();
                            check(
                                "moe",
                                moe(b.as_ref(), (g1, u1, d1), cfg.act, &r, &x, &lg_, rows),
                                moe(refb.as_ref(), (g2, u2, d2), cfg.act, &r, &x, &lg_, rows),
                                3e-2,
                            );
                        }
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
