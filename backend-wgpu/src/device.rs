//! Adapter discovery and the device: `WgpuBackend` owns one wgpu device + queue, the pending
//! command encoder (ops are recorded and submitted in batches, in order), the pipeline cache
//! and the error sink wgpu reports asynchronous validation errors into.

use std::sync::{Arc, Mutex};

use kiln_core::{BackendKind, Caps, DeviceId, DeviceInfo, Error, Result};

use crate::error::WgpuError;
use crate::pipeline_cache::PipelineCache;
use crate::timer::{GpuTimer, TIMER_QUERIES};

/// Ops recorded into one encoder before it is submitted (keeps the driver busy without
/// paying a submit per op; reads, writes and `synchronize` submit at once).
const MAX_PENDING_OPS: u32 = 48;

/// `MAX_PENDING_OPS`, or `KILN_WGPU_PENDING` (1..=RING_SLOTS, comparisons only).
fn max_pending_ops() -> u32 {
    static N: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *N.get_or_init(|| {
        std::env::var("KILN_WGPU_PENDING")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|n| (1..=RING_SLOTS).contains(n))
            .unwrap_or(MAX_PENDING_OPS)
    })
}

/// Slots of the params ring: `MAX_PENDING_OPS` for ordinary batches, more while a span timer
/// holds the submission (`gpu_span_start`: up to this many passes in one submission).
pub(crate) const RING_SLOTS: u32 = 256;

fn make_instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    // No validation/debug layers by default, whatever the build profile (wgpu turns them on
    // under debug_assertions, and the optimized test profile keeps those): they cost hundreds
    // of µs per op. WGPU_DEBUG=1 / WGPU_VALIDATION=1 turn them back on.
    desc.flags = wgpu::InstanceFlags::empty().with_env();
    // GL is not built (see Cargo.toml); the env (WGPU_BACKEND) may narrow this further.
    if std::env::var_os("WGPU_BACKEND").is_none() {
        desc.backends = wgpu::Backends::PRIMARY;
    }
    wgpu::Instance::new(desc)
}

fn type_rank(t: wgpu::DeviceType) -> u32 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

fn backend_rank(b: wgpu::Backend) -> u32 {
    match b {
        wgpu::Backend::Vulkan => 0,
        wgpu::Backend::Metal => 1,
        wgpu::Backend::Dx12 => 2,
        _ => 3,
    }
}

/// All usable adapters in a stable order: Vulkan first, GPUs before CPU adapters; an adapter
/// seen twice through two APIs (same vendor, device id and name) is listed once, through the
/// preferred API. Never panics: a missing driver yields an empty list.
pub(crate) fn adapters() -> std::result::Result<Vec<wgpu::Adapter>, String> {
    let found = std::panic::catch_unwind(|| {
        let inst = make_instance();
        pollster::block_on(inst.enumerate_adapters(wgpu::Backends::all()))
    })
    .map_err(|_| "wgpu panicked while enumerating adapters".to_string())?;
    let mut v: Vec<wgpu::Adapter> = found
        .into_iter()
        .filter(|a| {
            let f = a.get_info();
            matches!(
                f.backend,
                wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12
            )
        })
        .collect();
    v.sort_by_key(|a| {
        let i = a.get_info();
        (backend_rank(i.backend), type_rank(i.device_type))
    });
    let mut out: Vec<wgpu::Adapter> = Vec::new();
    for a in v {
        let i = a.get_info();
        let dup = out.iter().any(|b| {
            let j = b.get_info();
            j.vendor == i.vendor && j.device == i.device && j.name == i.name
        });
        if !dup {
            out.push(a);
        }
    }
    // KILN_VIRTUAL_DEVICES=N lists each adapter N times, each opened as its own device
    // (multi-device tests on one GPU or on lavapipe).
    let n = kiln_core::devices::virtual_devices() as usize;
    Ok(out
        .into_iter()
        .flat_map(|a| std::iter::repeat_n(a, n))
        .collect())
}

fn vendor_name(id: u32) -> String {
    match id {
        0x10de => "NVIDIA".into(),
        0x1002 | 0x1022 => "AMD".into(),
        0x8086 => "Intel".into(),
        0x106b => "Apple".into(),
        0x13b5 => "ARM".into(),
        0x5143 => "Qualcomm".into(),
        0x10005 => "Mesa".into(),
        0 => "unknown".into(),
        x => format!("0x{x:04x}"),
    }
}

/// One-pass recording (see `Pending`), on unless `KILN_WGPU_ONE_PASS=0` (comparison).
fn one_pass_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("KILN_WGPU_ONE_PASS").map_or(true, |v| v != "0"))
}

fn env_off(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// The features kiln asks for on this adapter (f16 and subgroups where offered; the
/// environment variables `KILN_WGPU_NO_F16=1` / `KILN_WGPU_NO_SUBGROUPS=1` turn them off to
/// exercise the fallback shaders).
fn wanted_features(a: &wgpu::Adapter) -> wgpu::Features {
    let have = a.features();
    let mut f = wgpu::Features::empty();
    if have.contains(wgpu::Features::SHADER_F16) && !env_off("KILN_WGPU_NO_F16") {
        f |= wgpu::Features::SHADER_F16;
    }
    if have.contains(wgpu::Features::SUBGROUP) && !env_off("KILN_WGPU_NO_SUBGROUPS") {
        f |= wgpu::Features::SUBGROUP;
    }
    // GPU timestamps around compute passes (the benchmarks' kernel timer; unused otherwise),
    // and between the dispatches of one pass where offered (the op profile, see `Pending`).
    if have.contains(wgpu::Features::TIMESTAMP_QUERY) {
        f |= wgpu::Features::TIMESTAMP_QUERY;
        if have.contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES) {
            f |= wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES;
        }
    }
    if coop_usable(a, f) {
        f |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
    }
    f
}

/// The adapter's cooperative-matrix configurations, as "MxNxK ab→cr" strings (empty without
/// the feature): logs and `WgpuBackend::coop_matrix_configs`.
pub(crate) fn coop_configs(a: &wgpu::Adapter) -> Vec<String> {
    if !a
        .features()
        .contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
    {
        return Vec::new();
    }
    a.cooperative_matrix_properties()
        .iter()
        .map(|p| {
            format!(
                "{}x{}x{} {:?}->{:?}",
                p.m_size, p.n_size, p.k_size, p.ab_type, p.cr_type
            )
        })
        .collect()
}

/// Whether `gemm_coop.wgsl` can run on this adapter: it offers cooperative matrices with a
/// 16×16×16 f16·f16→f32 configuration, f16 and subgroups are enabled (`others`), and every
/// subgroup has 32 invocations (the shader splits its 256 invocations into 8 subgroups).
/// `KILN_WGPU_NO_COOP=1` says no.
fn coop_usable(a: &wgpu::Adapter, others: wgpu::Features) -> bool {
    use wgpu::CooperativeScalarType as T;
    if env_off("KILN_WGPU_NO_COOP")
        || !a
            .features()
            .contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
        || !others.contains(wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP)
    {
        return false;
    }
    let i = a.get_info();
    if i.subgroup_min_size != 32 || i.subgroup_max_size != 32 {
        return false;
    }
    a.cooperative_matrix_properties().iter().any(|p| {
        (p.m_size, p.n_size, p.k_size) == (16, 16, 16) && p.ab_type == T::F16 && p.cr_type == T::F32
    })
}

pub(crate) fn device_info(index: u32, a: &wgpu::Adapter) -> DeviceInfo {
    let i = a.get_info();
    let l = a.limits();
    let f = wanted_features(a);
    DeviceInfo {
        id: DeviceId::new(BackendKind::Wgpu, index),
        name: i.name.clone(),
        vendor: vendor_name(i.vendor),
        // wgpu does not report device memory.
        memory_bytes: 0,
        driver: format!(
            "{:?} {:?} {} {}",
            i.backend, i.device_type, i.driver, i.driver_info
        )
        .trim()
        .to_string(),
        caps: Caps {
            f16: f.contains(wgpu::Features::SHADER_F16),
            // bf16 is read and written by bit manipulation; there is no bf16 arithmetic.
            bf16: false,
            subgroups: f.contains(wgpu::Features::SUBGROUP),
            max_buffer_bytes: l.max_buffer_size,
            max_binding_bytes: l.max_storage_buffer_binding_size.min(l.max_buffer_size),
            shared_memory_bytes: u64::from(l.max_compute_workgroup_storage_size),
            compute_capability: None,
            compute_units: 0,
            tensor_cores: f.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX),
        },
    }
}

/// Bytes of one op's slot in the params ring (≥ any params struct, a multiple of every
/// adapter's min_uniform_buffer_offset_alignment, which WebGPU caps at 256).
pub(crate) const PARAM_SLOT: usize = 256;

/// Batched command recording. The params of the batch's ops are gathered in `params` (one
/// `PARAM_SLOT` each) and written into the device's params ring with one `write_buffer` right
/// before the batch is submitted (queue writes land before the submission that follows them,
/// and wgpu orders them after the previous submission's reads).
///
/// One-pass recording (the default; `KILN_WGPU_ONE_PASS=0` records a pass per op, the old way):
/// consecutive dispatches go into ONE open compute pass, so wgpu puts each dispatch's barriers
/// inline in that pass's command buffer instead of giving every op its own pass (and its own
/// barrier command buffer before it). The pass is ended before any other encoder command
/// (`record`) and before a submit. The span timer times the one pass; the op timer (op
/// profile, `gpu_timer_start`) writes timestamps between the pass's dispatches where the
/// adapter has TIMESTAMP_QUERY_INSIDE_PASSES, else it records a timed pass per op.
#[derive(Default)]
pub(crate) struct Pending {
    /// The open compute pass (one-pass recording); declared before `encoder` so it ends first.
    pass: Option<wgpu::ComputePass<'static>>,
    pub(crate) encoder: Option<wgpu::CommandEncoder>,
    pub(crate) ops: u32,
    pub(crate) params: Vec<u8>,
    pub(crate) slots: u32,
    /// The kernel timer while it runs (see `gpu_timer_start`).
    pub(crate) timer: Option<GpuTimer>,
}

impl Pending {
    /// Whether a span timer holds the submission back (see `gpu_span_start`).
    fn holding(&self) -> bool {
        self.timer.as_ref().is_some_and(|t| t.span.is_some())
    }
}

/// One wgpu adapter opened as a kiln device.
pub struct WgpuBackend {
    pub(crate) info: DeviceInfo,
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) limits: wgpu::Limits,
    pub(crate) f16: bool,
    pub(crate) subgroups: bool,
    /// Largest subgroup size the adapter may use (0 when unknown).
    pub(crate) subgroup_max: u32,
    /// Smallest subgroup size the adapter may use (0 when unknown).
    pub(crate) subgroup_min: u32,
    /// The shader language has `dot4I8Packed` (WGSL `packed_4x8_integer_dot_product`: naga
    /// emits SPIR-V OpSDot where the Vulkan device has shaderIntegerDotProduct, a shift/mask
    /// polyfill elsewhere); the int8-x GEMV needs it.
    pub(crate) dot4_packed: bool,
    pub(crate) pipelines: PipelineCache,
    pub(crate) pending: Mutex<Pending>,
    /// Uniform params of the ops of one batch: `MAX_PENDING_OPS` slots of `PARAM_SLOT` bytes.
    pub(crate) params_ring: wgpu::Buffer,
    pub(crate) errors: Arc<Mutex<Vec<String>>>,
    pub(crate) tuning: Mutex<crate::tune::TuneState>,
    /// The GEMM's k-split partials (`ops/gemm.rs`), grown on demand or by
    /// `reserve_workspace`; counted by `workspace_bytes`.
    pub(crate) gemm_scratch: Mutex<Option<wgpu::Buffer>>,
    /// The host-visible read-back buffer of `read` (buffer.rs `read_words`), kept for the next
    /// read and replaced by a larger one when a read needs more: a decode step reads its logits
    /// (64 rows × a 128k vocabulary = 33 MB) every step, and a fresh mappable buffer per read
    /// cost an allocation and its first-touch faults each time. Host memory, not device memory.
    pub(crate) readback: Mutex<Option<wgpu::Buffer>>,
    /// EXPERIMENTAL_COOPERATIVE_MATRIX is enabled with a 16×16×16 f16→f32 configuration and
    /// 32-wide subgroups: the GEMM path may run gemm_coop.wgsl.
    pub(crate) coop_matrix: bool,
    /// The adapter's cooperative-matrix configurations ("MxNxK ab->cr"), for logs.
    pub(crate) coop_matrix_configs: Vec<String>,
    /// x rounded to int8 for the one-row GEMV (`ops/gemv_v.rs`, quant_x8.wgsl): quants at 0,
    /// (d, d·Σq) pairs at `XQ_D_OFF`; fixed size (`XQ_BYTES`), allocated when the device
    /// opens and counted by `workspace_bytes`.
    pub(crate) xq_buf: wgpu::Buffer,
}

impl WgpuBackend {
    /// Open adapter `index` of [`adapters`].
    pub fn open(index: u32) -> Result<WgpuBackend> {
        let list = adapters().map_err(WgpuError::NoAdapter)?;
        let n = list.len();
        let a = list.into_iter().nth(index as usize).ok_or_else(|| {
            WgpuError::NoAdapter(format!("wgpu:{index} does not exist ({n} adapter(s))"))
        })?;
        Self::from_adapter(index, a)
    }

    fn from_adapter(index: u32, a: wgpu::Adapter) -> Result<WgpuBackend> {
        let info = device_info(index, &a);
        let features = wanted_features(&a);
        let limits = a.limits();
        let coop_matrix = features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX);
        let coop_matrix_configs = coop_configs(&a);
        let experimental_features = if coop_matrix {
            // SAFETY: wgpu marks EXPERIMENTAL_* features as possibly unsound in its own
            // implementation. kiln asks for the one experimental feature,
            // EXPERIMENTAL_COOPERATIVE_MATRIX, only where the adapter reports it with a
            // 16×16×16 f16→f32 configuration, and uses it in one shader (gemm_coop.wgsl,
            // only those types, subgroup-uniform control flow, loads/stores inside
            // fixed-size workgroup arrays); the GEMM tests compare it with a CPU product.
            unsafe { wgpu::ExperimentalFeatures::enabled() }
        } else {
            wgpu::ExperimentalFeatures::disabled()
        };
        if !coop_matrix_configs.is_empty() {
            tracing::info!(
                "wgpu: {} cooperative matrix configs [{}]; coop GEMM {}",
                info.id,
                coop_matrix_configs.join(", "),
                if coop_matrix { "on" } else { "off" }
            );
        }
        let desc = wgpu::DeviceDescriptor {
            label: Some("kiln"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features,
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        let (device, queue) =
            pollster::block_on(a.request_device(&desc)).map_err(|e| WgpuError::RequestDevice {
                device: info.id.to_string(),
                msg: e.to_string(),
            })?;
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut v = sink.lock().unwrap_or_else(|p| p.into_inner());
            v.push(e.to_string());
        }));
        let tuning = crate::tune::TuneState::open(&info);
        let subgroup_max = a.get_info().subgroup_max_size;
        let subgroup_min = a.get_info().subgroup_min_size;
        let params_ring = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("kiln params"),
            size: (RING_SLOTS as usize * PARAM_SLOT) as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let xq_buf = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("kiln gemv x8 quants"),
            size: crate::ops::gemv_v::XQ_BYTES,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let dot4_packed = make_instance()
            .wgsl_language_features()
            .contains(wgpu::WgslLanguageFeatures::Packed4x8IntegerDotProduct);
        Ok(WgpuBackend {
            dot4_packed,
            params_ring,
            subgroup_max,
            subgroup_min,
            f16: info.caps.f16,
            subgroups: info.caps.subgroups,
            info,
            device,
            queue,
            limits,
            pipelines: PipelineCache::default(),
            pending: Mutex::new(Pending::default()),
            errors,
            tuning: Mutex::new(tuning),
            gemm_scratch: Mutex::new(None),
            readback: Mutex::new(None),
            coop_matrix,
            coop_matrix_configs,
            xq_buf,
        })
    }

    pub(crate) fn dev_name(&self) -> String {
        self.info.id.to_string()
    }

    /// Errors wgpu reported since the last check, as one error.
    pub(crate) fn check_errors(&self) -> Result<()> {
        let mut v = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if v.is_empty() {
            return Ok(());
        }
        let msg = v.join("; ");
        v.clear();
        Err(WgpuError::Uncaptured {
            device: self.dev_name(),
            msg,
        }
        .into())
    }

    /// Run `f` with the pending encoder (created on demand); submits when enough ops piled up.
    pub(crate) fn record(&self, f: impl FnOnce(&mut wgpu::CommandEncoder)) -> Result<()> {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        // The encoder is locked while a pass is open: end it.
        p.pass = None;
        let enc = p.encoder.get_or_insert_with(|| {
            self.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("kiln"),
                })
        });
        f(enc);
        p.ops += 1;
        if p.ops >= max_pending_ops() && !p.holding() {
            self.submit_locked(&mut p);
        }
        Ok(())
    }

    /// Record one compute pass whose params go to the next ring slot; `bind` makes the bind
    /// group(s) given the params binding (ring buffer, offset, size), `pass` records the
    /// pass's dispatch(es).
    pub(crate) fn record_dispatch<B>(
        &self,
        params: &[u8],
        label: &dyn Fn() -> Arc<str>,
        bind: impl FnOnce(wgpu::BindGroupEntry<'_>) -> B,
        pass: impl FnOnce(&mut wgpu::ComputePass<'_>, &B),
    ) -> Result<()> {
        if params.len() > PARAM_SLOT {
            return Err(kiln_core::Error::Invalid(format!(
                "op params of {} bytes exceed the {PARAM_SLOT}-byte slot",
                params.len()
            )));
        }
        let mut guard = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let p = &mut *guard;
        if p.slots >= RING_SLOTS || (p.ops >= max_pending_ops() && !p.holding()) {
            self.submit_locked(p);
        }
        let off = p.slots as usize * PARAM_SLOT;
        p.params.resize(off, 0);
        p.params.extend_from_slice(params);
        let size = params.len().max(16).div_ceil(16) * 16;
        p.params.resize(off + size, 0);
        let entry = wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &self.params_ring,
                offset: off as u64,
                size: wgpu::BufferSize::new(size as u64),
            }),
        };
        let bg = bind(entry);
        // The op profile (a per-pass timer) stays in one pass where timestamps may be written
        // between dispatches (TIMESTAMP_QUERY_INSIDE_PASSES): a timestamp before and after each
        // dispatch, so it times the recording that runs in production.
        // (asked of the device only while a timer runs: not on the plain recording path)
        let inside = || {
            self.device
                .features()
                .contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES)
        };
        let one_pass = one_pass_on()
            && p.timer
                .as_ref()
                .is_none_or(|t| t.span.is_some() || inside());
        let op_timer = p.timer.as_ref().is_some_and(|t| t.span.is_none());
        if !(one_pass && p.pass.is_some()) {
            p.pass = None;
            let ts = match p.timer.as_mut() {
                Some(_) if one_pass && op_timer => None,
                // The span over one open pass: both timestamps on it. A second pass inside
                // the span (the pass was ended by `record` or a full ring) is not timed, and
                // `gpu_span_stop` reports it.
                Some(t) if one_pass => {
                    if t.passes > 0 {
                        t.missed += 1;
                    }
                    (t.passes == 0).then_some(wgpu::ComputePassTimestampWrites {
                        query_set: &t.set,
                        beginning_of_pass_write_index: Some(0),
                        end_of_pass_write_index: Some(1),
                    })
                }
                Some(t) if t.span.is_some() => {
                    let last = t.span.unwrap_or(0);
                    let n = t.passes + 1;
                    (n == 1 || n == last).then(|| wgpu::ComputePassTimestampWrites {
                        query_set: &t.set,
                        beginning_of_pass_write_index: (n == 1).then_some(0),
                        end_of_pass_write_index: (n == last).then_some(1),
                    })
                }
                Some(t) if (t.passes + 1) * 2 <= TIMER_QUERIES => {
                    let n = t.passes + 1;
                    Some(wgpu::ComputePassTimestampWrites {
                        query_set: &t.set,
                        beginning_of_pass_write_index: Some(2 * n - 2),
                        end_of_pass_write_index: Some(2 * n - 1),
                    })
                }
                Some(_) | None => None,
            };
            let enc = p.encoder.get_or_insert_with(|| {
                self.device
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("kiln"),
                    })
            });
            let cp = enc
                .begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: None,
                    timestamp_writes: ts,
                })
                .forget_lifetime();
            p.pass = Some(cp);
        }
        let Pending {
            pass: cp, timer, ..
        } = &mut *p;
        let Some(cp) = cp.as_mut() else {
            return Err(kiln_core::Error::Invalid(
                "wgpu: no open compute pass".into(),
            ));
        };
        match timer.as_mut() {
            Some(t) if op_timer && (t.passes + 1) * 2 <= TIMER_QUERIES => {
                t.passes += 1;
                if let Some(l) = t.labels.as_mut() {
                    l.push(label());
                }
                if one_pass {
                    cp.write_timestamp(&t.set, 2 * t.passes - 2);
                    pass(cp, &bg);
                    cp.write_timestamp(&t.set, 2 * t.passes - 1);
                } else {
                    pass(cp, &bg);
                }
            }
            Some(t) => {
                t.passes += 1;
                if op_timer || t.span.is_some_and(|last| t.passes > last) {
                    t.missed += 1;
                }
                pass(cp, &bg);
            }
            None => pass(cp, &bg),
        }
        if !one_pass {
            p.pass = None;
        }
        p.slots += 1;
        p.ops += 1;
        Ok(())
    }

    pub(crate) fn submit_locked(&self, p: &mut Pending) {
        p.pass = None;
        if !p.params.is_empty() {
            self.queue.write_buffer(&self.params_ring, 0, &p.params);
        }
        if let Some(enc) = p.encoder.take() {
            self.queue.submit([enc.finish()]);
            if let Some(t) = p.timer.as_mut() {
                t.submits += 1;
            }
        }
        p.params.clear();
        p.slots = 0;
        p.ops = 0;
    }

    /// Submit everything recorded so far.
    pub(crate) fn flush(&self) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        self.submit_locked(&mut p);
    }

    /// Block until the queue is idle.
    pub(crate) fn wait_idle(&self) -> Result<()> {
        self.flush();
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| WgpuError::Poll {
                device: self.dev_name(),
                msg: e.to_string(),
            })?;
        self.check_errors()
    }

    /// Whether shaders may use f16 arithmetic / subgroup operations on this device.
    pub fn has_f16(&self) -> bool {
        self.f16
    }
    pub fn has_subgroups(&self) -> bool {
        self.subgroups
    }

    /// Whether the cooperative-matrix GEMM (tensor cores) can run on this device.
    pub fn has_coop_matrix(&self) -> bool {
        self.coop_matrix
    }

    /// The adapter's cooperative-matrix configurations ("MxNxK ab->cr"; empty without the
    /// feature).
    pub fn coop_matrix_configs(&self) -> &[String] {
        &self.coop_matrix_configs
    }

    /// Whether a reduction over `lanes` consecutive invocations can use subgroupAdd: the
    /// device has subgroups and none is wider than `lanes` (so none spans two such ranges).
    pub(crate) fn subgroup_reduce_ok(&self, lanes: u32) -> bool {
        self.subgroups
            && self.subgroup_max > 0
            && self.subgroup_max <= lanes
            && lanes.is_multiple_of(self.subgroup_max)
    }

    /// The GEMM's split scratch, at least `bytes` long (a larger buffer replaces a smaller
    /// one; ops already recorded keep the old one alive until they ran).
    pub(crate) fn gemm_scratch(&self, bytes: usize) -> Result<wgpu::Buffer> {
        let mut g = self.gemm_scratch.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = g.as_ref()
            && b.size() >= bytes as u64
        {
            return Ok(b.clone());
        }
        let b = self.alloc_mem(bytes, "kiln gemm split scratch")?;
        if g.replace(b.clone()).is_some() {
            // the bind-group cache drops its references to freed buffers on this signal
            crate::buffer::FREES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(b)
    }

    /// Bytes of the GEMM split scratch allocated now.
    pub(crate) fn gemm_scratch_bytes(&self) -> usize {
        let g = self.gemm_scratch.lock().unwrap_or_else(|e| e.into_inner());
        g.as_ref().map_or(0, |b| b.size() as usize)
    }

    pub(crate) fn limit_error(&self, what: impl Into<String>, requested: u64, limit: u64) -> Error {
        Error::Limit {
            device: self.dev_name(),
            what: what.into(),
            requested,
            limit,
        }
    }
}
