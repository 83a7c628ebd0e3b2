//! Opening backends once per process, the skip/require rules, and the per-case context
//! (test name, device, seed) that failure messages print.
//!
//! Rules (see README.md):
//! - A backend whose provider answers `Probe::NotFound` is *absent*: its tests print
//!   `skipped: <backend> not present (<reason>)` and pass, unless `KILN_REQUIRE` (a comma list
//!   such as `cuda,wgpu`) names it, in which case they fail.
//! - A backend that is found but cannot be opened is *broken*: its tests fail.
//! - A present backend whose `supports(op, dtype)` is false for a case prints
//!   `skipped: <op> <dtype> unsupported on <device>`; under `KILN_REQUIRE` that is a failure,
//!   except for cases that mark the op/dtype optional ([`optional_op`]).

use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, OnceLock};

use kiln_core::devices::discover;
use kiln_core::{
    Backend, BackendKind, BackendProvider, Collective, DType, DeviceInfo, HostStagedAllReduce,
    OpKind, Probe, ReferenceProvider,
};

use crate::data::Rng;

/// Devices in an all-reduce group (fewer if the backend has fewer; at least 2).
pub const GROUP_MAX: usize = 3;

/// What opening a backend kind gave.
pub enum Slot {
    Present {
        backend: Arc<dyn Backend>,
        devices: Vec<DeviceInfo>,
        provider: Box<dyn BackendProvider>,
    },
    /// Not found by its provider: the reason it gave.
    Absent(String),
    /// Found, but `open` failed or panicked.
    Broken(String),
}

/// The provider of each backend kind. A new backend plugs in here (and in `BackendKind`).
// `default()` rather than a unit-struct literal: keeps working when a provider gains fields.
#[allow(clippy::default_constructed_unit_structs)]
pub fn provider(kind: BackendKind) -> Box<dyn BackendProvider> {
    match kind {
        // Lists GROUP_MAX host devices so all-reduce groups of reference devices can be built.
        BackendKind::Reference => Box::new(ReferenceProvider {
            count: GROUP_MAX as u32,
        }),
        BackendKind::Cuda => Box::new(kiln_cuda::CudaProvider::default()),
        BackendKind::Wgpu => Box::new(kiln_wgpu::WgpuProvider::default()),
    }
}

fn open_slot(kind: BackendKind) -> Slot {
    let provider = provider(kind);
    // `discover` turns a panicking probe into NotFound.
    let report = discover(&[provider.as_ref()]).remove(0);
    let devices = match report.probe {
        Probe::NotFound(why) => return Slot::Absent(why),
        Probe::Found(list) if list.is_empty() => {
            return Slot::Absent("the provider lists no devices".into());
        }
        Probe::Found(list) => list,
    };
    let index = devices[0].id.index;
    match catch_unwind(AssertUnwindSafe(|| provider.open(index))) {
        Ok(Ok(backend)) => Slot::Present {
            backend,
            devices,
            provider,
        },
        Ok(Err(e)) => Slot::Broken(format!("{kind}:{index} was found but open failed: {e}")),
        Err(_) => Slot::Broken(format!("{kind}:{index} was found but open panicked")),
    }
}

fn slot_cell(kind: BackendKind) -> &'static OnceLock<Slot> {
    static SLOTS: [OnceLock<Slot>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    &SLOTS[kind_index(kind)]
}

fn kind_index(kind: BackendKind) -> usize {
    match kind {
        BackendKind::Reference => 0,
        BackendKind::Cuda => 1,
        BackendKind::Wgpu => 2,
    }
}

/// The backend kind's slot, opened on first use (device 0, once per process).
pub fn slot(kind: BackendKind) -> &'static Slot {
    slot_cell(kind).get_or_init(|| open_slot(kind))
}

/// Backends named in `KILN_REQUIRE` (comma list; an unknown name fails loudly).
pub fn required_kinds() -> &'static [BackendKind] {
    static REQ: OnceLock<Vec<BackendKind>> = OnceLock::new();
    REQ.get_or_init(|| {
        let Ok(s) = std::env::var("KILN_REQUIRE") else {
            return Vec::new();
        };
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.parse::<BackendKind>()
                    .unwrap_or_else(|e| panic!("KILN_REQUIRE={s}: {e}"))
            })
            .collect()
    })
}

pub fn is_required(kind: BackendKind) -> bool {
    required_kinds().contains(&kind)
}

/// The op family's name as test names spell it (`kv_append`, `rms_norm`, ...).
pub fn op_name(op: OpKind) -> &'static str {
    match op {
        OpKind::Matmul => "matmul",
        OpKind::Attention => "attention",
        OpKind::KvAppend => "kv_append",
        OpKind::RmsNorm => "rms_norm",
        OpKind::Rope => "rope",
        OpKind::Glu => "glu",
        OpKind::Add => "add",
        OpKind::Embed => "embed",
        OpKind::Moe => "moe",
        OpKind::Copy => "copy",
        OpKind::AllReduce => "all_reduce",
        OpKind::AddBias => "add_bias",
        OpKind::Gather => "gather",
    }
}

// ---- per-case context ----

struct Ctx {
    test: String,
    device: String,
    seed: u64,
    streams: u64,
}

thread_local! {
    static CTX: RefCell<Option<Ctx>> = const { RefCell::new(None) };
}

/// The fixed seed of a case: FNV-1a of its name (the same on every backend, so every backend
/// sees the same inputs), or `KILN_SEED` if set (to explore other inputs).
pub fn seed_for(case: &str) -> u64 {
    if let Some(s) = std::env::var("KILN_SEED").ok().and_then(|s| parse_seed(&s)) {
        return s;
    }
    case.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

fn parse_seed(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// `<test> on <device>, seed 0x…`: appended to every failure message.
pub fn context() -> String {
    CTX.with(|c| match &*c.borrow() {
        Some(c) => format!(
            "{} on {} (seed {:#x}; rerun with KILN_SEED={:#x})",
            c.test, c.device, c.seed, c.seed
        ),
        None => "outside a conformance case".into(),
    })
}

/// A random stream for the current case. Successive calls in one case give different
/// streams derived from the case seed.
pub fn rng() -> Rng {
    CTX.with(|c| {
        let mut c = c.borrow_mut();
        match c.as_mut() {
            Some(c) => {
                c.streams += 1;
                Rng::new(
                    c.seed
                        .wrapping_add(c.streams.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                )
            }
            None => Rng::new(1),
        }
    })
}

/// Run `case` on device 0 of `kind` (the body of every generated test).
pub fn run(kind: BackendKind, case: &str, f: impl FnOnce(&dyn Backend)) {
    match slot(kind) {
        Slot::Absent(why) => {
            if is_required(kind) {
                panic!("{case}: {kind} is required by KILN_REQUIRE but not present ({why})");
            }
            println!("skipped: {kind} not present ({why})");
        }
        Slot::Broken(e) => panic!("{case}: {e}"),
        Slot::Present { backend, .. } => {
            CTX.with(|c| {
                *c.borrow_mut() = Some(Ctx {
                    test: case.to_string(),
                    device: backend.id().to_string(),
                    seed: seed_for(case),
                    streams: 0,
                })
            });
            f(backend.as_ref());
            CTX.with(|c| *c.borrow_mut() = None);
        }
    }
}

fn unsupported(b: &dyn Backend, op: OpKind, dt: DType, optional: bool) -> bool {
    if b.supports(op, dt) {
        return true;
    }
    let kind = b.id().kind;
    if !optional && is_required(kind) {
        panic!(
            "{} {dt} unsupported on {}, and KILN_REQUIRE requires {kind} to cover it ({})",
            op_name(op),
            b.id(),
            context()
        );
    }
    let tag = if optional { " (optional)" } else { "" };
    println!(
        "skipped: {} {dt} unsupported on {}{tag}",
        op_name(op),
        b.id()
    );
    false
}

/// True if `b` supports (op, dtype); otherwise prints a skip, or fails if `b`'s kind is in
/// `KILN_REQUIRE`. The dtype is the one `Backend::supports` keys on (weight dtype for
/// matmul/embed/moe, KV dtype for attention/kv_append, activation dtype otherwise).
pub fn require_op(b: &dyn Backend, op: OpKind, dt: DType) -> bool {
    unsupported(b, op, dt, false)
}

/// Like [`require_op`], but an unsupported (op, dtype) is only a skip even under
/// `KILN_REQUIRE` (e.g. f16 activations, which a backend may or may not take).
pub fn optional_op(b: &dyn Backend, op: OpKind, dt: DType) -> bool {
    unsupported(b, op, dt, true)
}

// ---- multi-device groups ----

type Group = Result<Vec<Arc<dyn Backend>>, String>;

fn open_group(kind: BackendKind) -> Group {
    let Slot::Present {
        backend,
        devices,
        provider,
    } = slot(kind)
    else {
        return Err(format!("{kind} not present"));
    };
    if devices.len() < 2 {
        return Err(format!(
            "an all-reduce group needs 2 devices, {kind} has {}",
            devices.len()
        ));
    }
    let mut members = vec![backend.clone()];
    for d in devices.iter().skip(1).take(GROUP_MAX - 1) {
        match catch_unwind(AssertUnwindSafe(|| provider.open(d.id.index))) {
            Ok(Ok(b)) => members.push(b),
            Ok(Err(e)) => return Err(format!("opening {} failed: {e}", d.id)),
            Err(_) => return Err(format!("opening {} panicked", d.id)),
        }
    }
    Ok(members)
}

/// Devices 0..n (n = min(GROUP_MAX, device count), n ≥ 2) of `kind`, opened once per process;
/// `Err(reason)` when the backend has fewer than two devices. Device 0 is the one [`run`] uses.
pub fn group(kind: BackendKind) -> &'static Group {
    static GROUPS: [OnceLock<Group>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    GROUPS[kind_index(kind)].get_or_init(|| open_group(kind))
}

/// The collective a backend brings for a group of its own devices: the hook where a backend's
/// native all-reduce plugs in (the `all_reduce_native_*` cases check it against the oracle).
/// CUDA: NCCL (`kiln_cuda::CudaComm`). Backends without one use the host-staged collective,
/// which the `all_reduce_host_staged_*` cases check on every backend.
pub fn native_collective(
    kind: BackendKind,
    members: Vec<Arc<dyn Backend>>,
) -> kiln_core::Result<Box<dyn Collective>> {
    match kind {
        BackendKind::Cuda => Ok(Box::new(kiln_cuda::CudaComm::new(members)?)),
        BackendKind::Reference | BackendKind::Wgpu => {
            Ok(Box::new(HostStagedAllReduce::new(members)?))
        }
    }
}

/// Instantiate case functions for every backend.
///
/// ```ignore
/// conformance! {
///     rope_neox_hd128 => rope_case(RopeStyle::Neox, 128, 128);
/// }
/// ```
/// expands to `#[test] fn rope_neox_hd128_reference()`, `..._cuda()` and `..._wgpu()`, each
/// calling `rope_case(b, RopeStyle::Neox, 128, 128)` with that backend's device 0 (or
/// skipping, see the module docs). The case's seed is derived from `rope_neox_hd128`.
#[macro_export]
macro_rules! conformance {
    ($($name:ident => $case:ident ( $($arg:expr),* $(,)? );)*) => {
        $(
            $crate::paste::paste! {
                #[test]
                fn [<$name _reference>]() {
                    $crate::harness::run(
                        $crate::kiln_core::BackendKind::Reference,
                        stringify!($name),
                        |b| $case(b $(, $arg)*),
                    );
                }
                #[test]
                fn [<$name _cuda>]() {
                    $crate::harness::run(
                        $crate::kiln_core::BackendKind::Cuda,
                        stringify!($name),
                        |b| $case(b $(, $arg)*),
                    );
                }
                #[test]
                fn [<$name _wgpu>]() {
                    $crate::harness::run(
                        $crate::kiln_core::BackendKind::Wgpu,
                        stringify!($name),
                        |b| $case(b $(, $arg)*),
                    );
                }
            }
        )*
    };
}
