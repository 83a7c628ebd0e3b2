//! What the memory planner asks of the CUDA backend, checked against what it really allocates
//! (needs a GPU; skipped without one, a failure under KILN_REQUIRE=cuda):
//! - `weight_bytes(dtype, shape)` equals `prepare_weight(..).bytes()` for every weight type,
//!   2-D and 3-D, including float rows that are not whole 16-element groups (kept unrepacked);
//! - after `reserve_workspace(uses)`, running every use at every row count through the Auto
//!   dispatch (which tunes an untuned shape first) grows no GEMM scratch, and the
//!   reserved bytes are what `workspace_bytes` counts apart from the tuner's transient buffers.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use kiln_core::{Backend, DType, HostTensor, MatmulUse, Shape};

#[test]
fn weight_bytes_match_prepared_weights() {
    let Some(be) = gpu() else { return };
    let mut checked = 0;
    for dt in DType::WEIGHT_TYPES {
        let mut shapes = vec![Shape::d2(7, 256), Shape::d2(1, 4096), Shape::d3(3, 5, 512)];
        if dt.is_float() {
            shapes.push(Shape::d2(5, 40)); // rows of 40: not whole 16-element groups
        }
        for shape in shapes {
            let data = random_weight(dt, shape.rows(), shape.last(), 7);
            let w = be
                .prepare_weight(&HostTensor::new(dt, shape, &data).unwrap())
                .unwrap();
            assert_eq!(
                be.weight_bytes(dt, &shape).unwrap(),
                w.bytes(),
                "{dt} {shape}"
            );
            checked += 1;
        }
    }
    println!("{checked} weights: weight_bytes == prepare_weight(..).bytes()");
}

#[test]
fn reserved_workspace_is_not_outgrown() {
    let Some(be) = gpu() else { return };
    let max_rows = 48;
    let weights = [
        (DType::Q4_K, 512, 1024),
        (DType::Q8_0, 96, 2048),
        (DType::BF16, 256, 512),
        (DType::F32, 64, 256),
    ];
    let uses: Vec<MatmulUse> = weights
        .iter()
        .map(|&(dtype, n, k)| MatmulUse {
            dtype,
            shape: Shape::d2(n, k),
            max_rows,
        })
        .collect();
    let planned = be.workspace_bytes(&uses);
    be.reserve_workspace(&uses).unwrap();
    let reserved = be.workspace_allocated();
    assert!(
        reserved > 0 && reserved <= planned,
        "{reserved} of {planned}"
    );
    for (i, &(dt, n, k)) in weights.iter().enumerate() {
        let data = random_weight(dt, n, k, 11 + i as u64);
        let w = be
            .prepare_weight(&HostTensor::new(dt, Shape::d2(n, k), &data).unwrap())
            .unwrap();
        let x = upload(be.as_ref(), &f32_bytes(&Rng(3).vec(max_rows * k)));
        let out = poisoned(be.as_ref(), max_rows * n);
        for m in 1..=max_rows {
            let xv = x.view(0, Shape::d2(m, k), DType::F32).unwrap();
            let ov = out.view_mut(0, Shape::d2(m, n), DType::F32).unwrap();
            be.matmul(xv, &w, ov).unwrap();
        }
        be.synchronize().unwrap();
        assert_eq!(
            be.workspace_allocated(),
            reserved,
            "{dt} [{n}, {k}] grew the GEMM scratch"
        );
    }
    println!(
        "workspace: planned {planned} bytes (tuning transients included), reserved {reserved}"
    );
}
