//! all_reduce: sum across a group of 2–3 devices of one backend (reference: `reference:0..2`
//! from `ReferenceProvider { count: 3 }`), with the host-staged collective (works for every
//! backend) and with the backend's native one (`harness::native_collective`: the hook where
//! `kiln_cuda::CudaComm` (NCCL) is plugged in).

use std::sync::Arc;

use kiln_core::{Backend, Collective, DType, HostStagedAllReduce, OpKind, Tensor};
use kiln_tests::{conformance, data, dev, harness, oracle, require_op, tolerance};

fn members(b: &dyn Backend) -> Option<&'static Vec<Arc<dyn Backend>>> {
    match harness::group(b.id().kind) {
        Ok(g) => Some(g),
        Err(why) => {
            println!("skipped: all_reduce needs a group ({why})");
            None
        }
    }
}

fn all_reduce_case(b: &dyn Backend, dt: DType, native: bool) {
    let Some(group) = members(b) else { return };
    if group
        .iter()
        .any(|m| !require_op(m.as_ref(), OpKind::AllReduce, dt))
    {
        return;
    }
    let coll: Box<dyn Collective> = if native {
        harness::native_collective(b.id().kind, group.clone()).unwrap()
    } else {
        Box::new(HostStagedAllReduce::new(group.clone()).unwrap())
    };
    assert_eq!(
        coll.devices(),
        group.iter().map(|m| m.id()).collect::<Vec<_>>()
    );
    check_sum(
        group,
        coll.as_ref(),
        dt,
        if native { "native" } else { "host-staged" },
    );
}

/// Sum random `[33, 4099]` parts (odd sizes: no whole-vector fast path) with `coll` over
/// `group` and check every member's result against the f64 oracle.
fn check_sum(group: &[Arc<dyn Backend>], coll: &dyn Collective, dt: DType, label: &str) {
    let mut rng = harness::rng();
    let shape = [33, 4099];
    let parts: Vec<Vec<f32>> = group
        .iter()
        .map(|_| data::round_to(dt, &rng.normals(33 * 4099, 1.0)))
        .collect();
    let ts: Vec<Tensor> = group
        .iter()
        .zip(&parts)
        .map(|(m, p)| dev::upload_floats(m.as_ref(), dt, &shape, p))
        .collect();
    let views: Vec<_> = ts.iter().map(|t| t.view_mut()).collect();
    dev::ok("all_reduce_sum", coll.all_reduce_sum(&views));
    let exp = oracle::all_reduce::sum(&parts);
    for (m, t) in group.iter().zip(&ts) {
        let got = dev::read_out(m.as_ref(), t, "all_reduce buffer");
        let what = format!(
            "all_reduce {label} {dt} on {} of {} devices",
            m.id(),
            group.len()
        );
        tolerance::check(m.as_ref(), OpKind::AllReduce, dt, &what, &shape, &got, &exp);
    }
}

/// The host-staged all-reduce over a group that mixes backends: device 0 of every backend
/// present (reference:0 always; wgpu:0 on lavapipe in CI; cuda:0 and wgpu:0 on a GPU machine),
/// so a CUDA device and a Vulkan adapter can share one tensor-parallel group.
#[test]
fn all_reduce_mixed_backends() {
    use kiln_core::BackendKind;
    use kiln_tests::harness::Slot;
    let mut group: Vec<Arc<dyn Backend>> = Vec::new();
    for kind in [BackendKind::Reference, BackendKind::Cuda, BackendKind::Wgpu] {
        match harness::slot(kind) {
            Slot::Present { backend, .. } => group.push(backend.clone()),
            Slot::Absent(why) if harness::is_required(kind) => {
                panic!("all_reduce_mixed_backends: {kind} is required but absent ({why})")
            }
            Slot::Absent(why) => println!("{kind} not in the mixed group: {why}"),
            Slot::Broken(e) => panic!("all_reduce_mixed_backends: {e}"),
        }
    }
    if group.len() < 2 {
        println!("skipped: a mixed group needs a second backend besides reference");
        return;
    }
    let names: Vec<String> = group.iter().map(|m| m.id().to_string()).collect();
    println!("mixed group: {}", names.join(" + "));
    let coll = HostStagedAllReduce::new(group.clone()).unwrap();
    for dt in [DType::F32, DType::F16, DType::BF16] {
        if group.iter().all(|m| m.supports(OpKind::AllReduce, dt)) {
            check_sum(&group, &coll, dt, "host-staged mixed");
        }
    }
}

fn all_reduce_errors_case(b: &dyn Backend) {
    let Some(group) = members(b) else { return };
    let coll = harness::native_collective(b.id().kind, group.clone()).unwrap();
    let ts: Vec<Tensor> = group
        .iter()
        .map(|m| dev::upload_f32(m.as_ref(), &[64], &[1.0; 64]))
        .collect();
    let views: Vec<_> = ts.iter().map(|t| t.view_mut()).collect();
    dev::expect_err("all_reduce with one buffer too few", || {
        coll.all_reduce_sum(&views[1..])
    });
    let mut swapped = views.clone();
    swapped.swap(0, 1);
    dev::expect_err("all_reduce buffers in the wrong device order", || {
        coll.all_reduce_sum(&swapped)
    });
    let odd = dev::upload_f32(group[1].as_ref(), &[65], &[1.0; 65]);
    let mut shapes = views.clone();
    shapes[1] = odd.view_mut();
    dev::expect_err("all_reduce buffers of different shapes", || {
        coll.all_reduce_sum(&shapes)
    });
    let ints: Vec<Tensor> = group
        .iter()
        .map(|m| dev::upload_i32(m.as_ref(), &[64], &[1; 64]))
        .collect();
    let iv: Vec<_> = ints.iter().map(|t| t.view_mut()).collect();
    dev::expect_err("all_reduce of i32", || coll.all_reduce_sum(&iv));
}

conformance! {
    all_reduce_host_staged_f32 => all_reduce_case(DType::F32, false);
    all_reduce_host_staged_f16 => all_reduce_case(DType::F16, false);
    all_reduce_host_staged_bf16 => all_reduce_case(DType::BF16, false);
    all_reduce_native_f32 => all_reduce_case(DType::F32, true);
    all_reduce_native_f16 => all_reduce_case(DType::F16, true);
    all_reduce_native_bf16 => all_reduce_case(DType::BF16, true);
    all_reduce_errors => all_reduce_errors_case();
}
