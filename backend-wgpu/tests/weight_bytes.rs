//! `Backend::weight_bytes` (what the memory planner counts) equals `prepare_weight(..).bytes()`
//! for every weight type, 2-D and 3-D, with the weight split into several row chunks (the
//! binding cap is lowered with KILN_WGPU_MAX_BINDING; this file is its own process), and a
//! weight `prepare_weight` refuses is refused by `weight_bytes` too.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use kiln_core::{Backend, DType, HostTensor, Shape};

#[test]
fn weight_bytes_match_prepared_weights() {
    // 4000 bytes a binding: a 256-wide f32 row is 1024 bytes, so 3 rows a chunk.
    // SAFETY: this test binary has this one test, so no other thread reads the environment.
    unsafe { std::env::set_var("KILN_WGPU_MAX_BINDING", "4000") };
    let Some(be) = open() else { return };
    let mut checked = 0;
    for dt in DType::WEIGHT_TYPES {
        for shape in [Shape::d2(7, 256), Shape::d2(1, 512), Shape::d3(3, 5, 256)] {
            let data = vec![0u8; dt.bytes_for(shape.numel()).unwrap()];
            let w = be
                .prepare_weight(&HostTensor::new(dt, shape, &data).unwrap())
                .unwrap();
            let planned = be.weight_bytes(dt, &shape).unwrap();
            assert_eq!(planned, w.bytes(), "{dt} {shape}");
            assert!(be.weight_chunks(&w).unwrap() >= 1);
            checked += 1;
        }
    }
    println!("{checked} weights: weight_bytes == prepare_weight(..).bytes()");
    // One f32 row of 1024 elements (4096 bytes) exceeds the cap: both refuse.
    let shape = Shape::d2(2, 1024);
    let data = vec![0u8; 2 * 1024 * 4];
    let prepared = be.prepare_weight(&HostTensor::new(DType::F32, shape, &data).unwrap());
    let planned = be.weight_bytes(DType::F32, &shape);
    assert!(prepared.is_err() && planned.is_err());
    assert_eq!(
        prepared.err().map(|e| e.to_string()),
        planned.err().map(|e| e.to_string())
    );
}
