//! What the memory planner asks of the CUDA backend, checked against what it really allocates
//! (needs a GPU; skipped without one, a failure under KILN_REQUIRE=cuda):
//! - `weight_bytes(dtype, shape)` equals `prepare_weight(..).bytes()` for every weight type,
//!   2-D and 3-D, including float rows that are not whole 16-element groups (kept unrepacked);
//! - after `reserve_workspace(uses)`, running every use at every row count through the Auto
//!   dispatch (which tunes an untuned shape first) grows no GEMM scratch, and the
//!   reserved bytes are what `workspace_bytes` counts apart from the tuner's transient buffers;
//! - a larger reserve retires the scratch it outgrew: freed at once unless a captured graph
//!   holds it, and then freed with the graph (a second runtime in one process must not carry the
//!   first one's scratch past its plan).
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

/// First-use tuning of an untuned shape runs every path at every rung of the ladder (up to 512
/// rows) on one transient scratch that it frees afterwards: the scratch held after it is the
/// reserve of the plan's rows (not the ladder's), and the most held at once stays within the
/// plan, which counts the transient. With the old rung-by-rung growth every smaller scratch
/// stayed alive: the peak was several times the largest request.
#[test]
fn first_use_tuning_frees_its_transient_scratch() {
    let Some(be) = gpu() else { return };
    // A shape no other test uses, so it is untuned in a fresh cache directory (the GPU scripts
    // start from one); where a persisted cache knows it, the tuned plan is checked instead.
    let (dt, n, k) = (DType::Q4_K, 4104, 4096);
    let uses = [MatmulUse {
        dtype: dt,
        shape: Shape::d2(n, k),
        max_rows: 1,
    }];
    let untuned = be.crossover(dt, n, k).is_none();
    let planned = be.workspace_bytes(&uses);
    be.reserve_workspace(&uses).unwrap();
    let reserved = be.workspace_allocated();
    let data = random_weight(dt, n, k, 23);
    let w = be
        .prepare_weight(&HostTensor::new(dt, Shape::d2(n, k), &data).unwrap())
        .unwrap();
    let x = upload(be.as_ref(), &f32_bytes(&Rng(5).vec(k)));
    let out = poisoned(be.as_ref(), n);
    be.matmul(
        x.view(0, Shape::d2(1, k), DType::F32).unwrap(),
        &w,
        out.view_mut(0, Shape::d2(1, n), DType::F32).unwrap(),
    )
    .unwrap();
    be.synchronize().unwrap();
    assert!(
        be.crossover(dt, n, k).is_some(),
        "the matmul tuned the shape"
    );
    let (after, peak) = (be.workspace_allocated(), be.workspace_peak());
    println!(
        "{dt} [{n}, {k}] {}: planned {planned}, reserved {reserved}, held after {after}, peak {peak}",
        if untuned { "untuned" } else { "tuned" }
    );
    assert_eq!(after, reserved, "the tuner's scratch was freed");
    assert!(peak <= planned, "peak {peak} within the plan {planned}");
    if untuned {
        // The transient held the dense path's 512-row tiles: far above the 1-row reserve.
        assert!(
            peak > reserved,
            "the tuner ran on its own transient scratch"
        );
    }
}

/// Runs the larger reserve retires the smaller scratch: a graph captured on the small scratch
/// keeps it alive (and replays the same result after the growth); dropping the graph frees it;
/// with no graph holding it, an outgrown scratch is freed at once. Before, every outgrown
/// scratch stayed for the process: a later runtime measured 0.2–0.25 GB above its plan.
#[test]
fn outgrown_scratch_lives_as_long_as_its_graphs() {
    const MIB: i64 = 1 << 20;
    let Some(be) = gpu() else { return };
    // Dense-path reserves of 512 rows: the scratch holds the weight's bf16 image (≥ 2·n·k bytes).
    let reserve = |n: usize| {
        let u = MatmulUse {
            dtype: DType::Q4_K,
            shape: Shape::d2(n, 8192),
            max_rows: 512,
        };
        be.reserve_workspace(&[u]).unwrap();
        be.synchronize().unwrap();
        (
            be.workspace_allocated() as i64,
            be.memory_in_use().unwrap() as i64,
        )
    };
    let (a1, _) = reserve(4096); // S1 ≥ 64 MiB
    // A one-row matmul on S1: eager first (tunes the shape), then captured.
    let (n, k) = (256, 4096);
    let data = random_weight(DType::Q4_K, n, k, 31);
    let w = be
        .prepare_weight(&HostTensor::new(DType::Q4_K, Shape::d2(n, k), &data).unwrap())
        .unwrap();
    let x = upload(be.as_ref(), &f32_bytes(&Rng(9).vec(k)));
    let (eager, graphed) = (poisoned(be.as_ref(), n), poisoned(be.as_ref(), n));
    let run = |out: &kiln_core::Buffer| {
        be.matmul(
            x.view(0, Shape::d2(1, k), DType::F32).unwrap(),
            &w,
            out.view_mut(0, Shape::d2(1, n), DType::F32).unwrap(),
        )
    };
    run(&eager).unwrap();
    be.synchronize().unwrap();
    assert_eq!(be.workspace_allocated() as i64, a1, "S1 is still current");
    let graph = be
        .capture(&mut || run(&graphed))
        .unwrap()
        .expect("CUDA captures graphs");
    be.synchronize().unwrap();
    let in0 = be.memory_in_use().unwrap() as i64;

    // Growth while the graph holds S1: S1 leaves the backend's count, not the device.
    let (a2, in1) = reserve(8192); // S2 ≥ 128 MiB
    let s1_kept = in1 - in0 - (a2 - a1);
    println!(
        "S2 − S1 = {} MiB, device +{} MiB",
        (a2 - a1) / MIB,
        (in1 - in0) / MIB
    );
    assert!(a2 > a1, "the larger reserve grew the scratch");
    graph.replay().unwrap();
    be.synchronize().unwrap();
    let (e, g) = (
        read_f32(be.as_ref(), view(&eager, &[1, n], DType::F32)),
        read_f32(be.as_ref(), view(&graphed, &[1, n], DType::F32)),
    );
    assert_eq!(e, g, "the graph replays on its retired scratch");

    // Dropping the graph frees S1 (≥ 64 MiB).
    drop(graph);
    be.synchronize().unwrap();
    let in2 = be.memory_in_use().unwrap() as i64;
    println!(
        "graph dropped: device −{} MiB (S1 kept by the graph: {} MiB)",
        (in1 - in2) / MIB,
        s1_kept / MIB
    );
    assert!(
        in1 - in2 >= 60 * MIB,
        "S1 freed with its graph: {} MiB",
        (in1 - in2) / MIB
    );

    // Growth with no graph: the device grows by S3 − S2 only (S2 freed at once).
    let (a3, in3) = reserve(16384); // S3 ≥ 256 MiB
    println!(
        "S3 − S2 = {} MiB, device +{} MiB",
        (a3 - a2) / MIB,
        (in3 - in2) / MIB
    );
    // (The pool rounds allocations up: allow half of S2, which is ≥ 128 MiB.)
    assert!(
        in3 - in2 < (a3 - a2) + 64 * MIB,
        "the outgrown S2 was freed: device +{} MiB for S3 − S2 = {} MiB",
        (in3 - in2) / MIB,
        (a3 - a2) / MIB
    );

    // A later, smaller runtime's plan counts the scratch the backend keeps (never shrunk).
    let small = MatmulUse {
        dtype: DType::Q4_K,
        shape: Shape::d2(n, k),
        max_rows: 1,
    };
    let planned = be.workspace_bytes(&[small]) as i64;
    assert!(planned >= a3, "a later plan {planned} counts the held {a3}");
}
