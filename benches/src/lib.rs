//! kiln-benches: a backend-generic kernel benchmark harness. Every bench takes
//! `--backend cuda|wgpu|reference` and works on `&dyn Backend`, so the same binary measures
//! every backend:
//! - timing: the op sequence is recorded once with `Backend::capture` (CUDA graphs) when the
//!   backend can, so launch overhead is not measured; otherwise it runs eagerly and
//!   `synchronize` closes the measurement. The reported time is the median of several runs.
//! - weight rotation: a weight is prepared in enough copies that the copies together exceed
//!   the working-set floor (default 512 MiB, far above any L2), and consecutive calls use
//!   consecutive copies, so every call streams its weight from device memory as in decode.
//! - roofline: results are printed with the fraction of a measured ceiling (device-to-device
//!   copy bandwidth for memory-bound kernels, a large dense bf16 GEMM for compute-bound ones).
//!
//! Each bench prints a table and, with `--json FILE`, appends one JSON object per result.

pub mod synth;
pub mod weights;

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use kiln_core::{Backend, BackendKind, BackendProvider, DType, Error, Result, Shape};

pub use weights::random_weight;

/// Command-line options shared by every bench.
#[derive(Clone, Debug)]
pub struct Args {
    pub backend: BackendKind,
    pub device: u32,
    /// Fewer repetitions and shapes (smoke runs).
    pub quick: bool,
    pub json: Option<std::path::PathBuf>,
    /// Working-set floor for weight rotation, bytes.
    pub rotate_bytes: usize,
    /// Restrict to these weight types (empty = the bench's default list).
    pub types: Vec<DType>,
}

impl Args {
    /// Parse `--backend B [--device N] [--quick] [--json FILE] [--rotate-mib N] [--types a,b]`.
    pub fn parse() -> Result<Args> {
        let mut a = Args {
            backend: BackendKind::Cuda,
            device: 0,
            quick: false,
            json: None,
            rotate_bytes: 512 << 20,
            types: Vec::new(),
        };
        let argv: Vec<String> = std::env::args().skip(1).collect();
        let mut i = 0;
        let val = |i: usize| -> Result<&String> {
            argv.get(i + 1)
                .ok_or_else(|| Error::Invalid(format!("{} needs a value", argv[i])))
        };
        while i < argv.len() {
            match argv[i].as_str() {
                "--backend" => a.backend = val(i)?.parse()?,
                "--device" => {
                    a.device = val(i)?
                        .parse()
                        .map_err(|_| Error::Invalid("--device takes an index".into()))?
                }
                "--json" => a.json = Some(val(i)?.into()),
                "--rotate-mib" => {
                    let mib: usize = val(i)?
                        .parse()
                        .map_err(|_| Error::Invalid("--rotate-mib takes MiB".into()))?;
                    a.rotate_bytes = mib << 20;
                }
                "--types" => {
                    a.types = val(i)?
                        .split(',')
                        .map(|s| {
                            DType::parse(s.trim())
                                .ok_or_else(|| Error::Invalid(format!("unknown type {s}")))
                        })
                        .collect::<Result<_>>()?
                }
                "--quick" => {
                    a.quick = true;
                    i += 1;
                    continue;
                }
                "--help" | "-h" => {
                    println!(
                        "options: --backend cuda|wgpu|reference  --device N  --quick  --json FILE  --rotate-mib N  --types q4_k,bf16"
                    );
                    std::process::exit(0);
                }
                other => return Err(Error::Invalid(format!("unknown option {other}"))),
            }
            i += 2;
        }
        Ok(a)
    }

    /// The types to run: `--types` or `default`.
    pub fn types_or(&self, default: &[DType]) -> Vec<DType> {
        if self.types.is_empty() {
            default.to_vec()
        } else {
            self.types.clone()
        }
    }
}

#[cfg(feature = "cuda")]
static CUDA: std::sync::OnceLock<Arc<kiln_cuda::CudaBackend>> = std::sync::OnceLock::new();

/// The CUDA backend `open` returned, as its concrete type (for CUDA-only extras such as forcing
/// the fused or dense matmul path; the same device and stream as the `dyn Backend`).
#[cfg(feature = "cuda")]
pub fn opened_cuda() -> Option<Arc<kiln_cuda::CudaBackend>> {
    CUDA.get().cloned()
}

#[cfg(feature = "wgpu")]
static WGPU: std::sync::OnceLock<Arc<kiln_wgpu::WgpuBackend>> = std::sync::OnceLock::new();

/// The wgpu backend `open` returned, as its concrete type (for wgpu-only extras such as the
/// GPU span timer; the same device and queue as the `dyn Backend`).
#[cfg(feature = "wgpu")]
pub fn opened_wgpu() -> Option<Arc<kiln_wgpu::WgpuBackend>> {
    WGPU.get().cloned()
}

/// Open the requested backend device.
pub fn open(args: &Args) -> Result<Arc<dyn Backend>> {
    #[cfg(feature = "wgpu")]
    if args.backend == BackendKind::Wgpu {
        let b = Arc::new(kiln_wgpu::WgpuBackend::open(args.device)?);
        let _ = WGPU.set(b.clone());
        return Ok(b);
    }
    #[cfg(feature = "cuda")]
    if args.backend == BackendKind::Cuda {
        let b = kiln_cuda::CudaProvider.open_cuda(args.device)?;
        let _ = CUDA.set(b.clone());
        return Ok(b);
    }
    let reference = kiln_core::ReferenceProvider::default();
    #[cfg(feature = "cuda")]
    let cuda = kiln_cuda::CudaProvider;
    #[cfg(feature = "wgpu")]
    let wgpu = kiln_wgpu::WgpuProvider;
    let mut providers: Vec<&dyn BackendProvider> = vec![&reference];
    #[cfg(feature = "cuda")]
    providers.push(&cuda);
    #[cfg(feature = "wgpu")]
    providers.push(&wgpu);
    let id = kiln_core::DeviceId::new(args.backend, args.device);
    let mut v = kiln_core::devices::open_devices(&providers, &[id])?;
    v.pop()
        .ok_or_else(|| Error::Invalid(format!("{id}: not opened")))
}

/// Seconds per call of `f(i)` (i = call index, for rotating inputs), `calls` calls per
/// measurement, median of `reps` measurements. Captured into a graph when the backend can.
pub fn time_calls(
    be: &dyn Backend,
    calls: usize,
    reps: usize,
    f: &mut dyn FnMut(usize) -> Result<()>,
) -> Result<f64> {
    // Warm-up: module loads, tuning on first use, scratch allocation happen here.
    for i in 0..calls.min(3) {
        f(i)?;
    }
    be.synchronize()?;
    let graph = be.capture(&mut || {
        for i in 0..calls {
            f(i)?;
        }
        Ok(())
    })?;
    let mut times = Vec::with_capacity(reps);
    match graph {
        Some(g) => {
            g.replay()?;
            be.synchronize()?;
            for _ in 0..reps {
                let t = Instant::now();
                g.replay()?;
                be.synchronize()?;
                times.push(t.elapsed().as_secs_f64() / calls as f64);
            }
        }
        None => {
            for _ in 0..reps {
                let t = Instant::now();
                for i in 0..calls {
                    f(i)?;
                }
                be.synchronize()?;
                times.push(t.elapsed().as_secs_f64() / calls as f64);
            }
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times[times.len() / 2])
}

/// Device-to-device copy bandwidth (bytes read + written per second) with `mib` MiB buffers.
pub fn copy_bandwidth(be: &dyn Backend, mib: usize) -> Result<f64> {
    let bytes = mib << 20;
    let a = be.alloc(bytes)?;
    let b = be.alloc(bytes)?;
    be.write(&a, 0, &vec![0u8; bytes])?;
    let n = bytes / 4;
    let src = a.view(0, Shape::d1(n), DType::F32)?;
    let dst = b.view_mut(0, Shape::d1(n), DType::F32)?;
    let t = time_calls(be, 10, 5, &mut |_| be.copy(src, dst))?;
    Ok(2.0 * bytes as f64 / t)
}

/// How many copies of a `bytes`-sized weight make the working set exceed `floor`.
pub fn rotation_copies(bytes: usize, floor: usize) -> usize {
    floor.div_ceil(bytes.max(1)).clamp(1, 64)
}

/// One result row.
#[derive(Clone, Debug)]
pub struct Row {
    pub bench: String,
    pub case: String,
    pub us: f64,
    /// Achieved GB/s (bytes moved / time), if memory-bound.
    pub gbs: Option<f64>,
    /// Achieved TFLOP/s, if compute matters.
    pub tflops: Option<f64>,
    /// Fraction of the ceiling (copy bandwidth or dense GEMM), in percent.
    pub pct: Option<f64>,
    pub note: String,
}

/// Collects rows, prints them as a table, appends JSON lines.
pub struct Report {
    pub device: String,
    pub backend: String,
    rows: Vec<Row>,
    json: Option<std::path::PathBuf>,
}

impl Report {
    pub fn new(be: &dyn Backend, args: &Args) -> Report {
        let i = be.info();
        Report {
            device: format!("{} ({}, {})", i.name, i.driver, i.caps_summary()),
            backend: i.id.to_string(),
            rows: Vec::new(),
            json: args.json.clone(),
        }
    }

    pub fn push(&mut self, r: Row) -> Result<()> {
        let f = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |x| format!("{x:.p$}"));
        println!(
            "{:<10} {:<34} {:>10.2} µs {:>9} GB/s {:>8} TFLOP/s {:>6} %  {}",
            r.bench,
            r.case,
            r.us,
            f(r.gbs, 1),
            f(r.tflops, 2),
            f(r.pct, 1),
            r.note
        );
        if let Some(p) = &self.json {
            let o = serde_json::json!({
                "bench": r.bench, "case": r.case, "us": r.us, "gbs": r.gbs, "tflops": r.tflops,
                "pct": r.pct, "note": r.note, "device": self.device, "backend": self.backend,
            });
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| Error::Io {
                    path: p.display().to_string(),
                    source: e,
                })?;
            writeln!(file, "{o}").map_err(|e| Error::Io {
                path: p.display().to_string(),
                source: e,
            })?;
        }
        self.rows.push(r);
        Ok(())
    }

    pub fn header(&self, title: &str) {
        println!("\n== {title} on {} — {}", self.backend, self.device);
        println!(
            "{:<10} {:<34} {:>13} {:>14} {:>16} {:>8}  note",
            "bench", "case", "time", "bandwidth", "compute", "of ceil"
        );
    }

    pub fn rows(&self) -> &[Row] {
        &self.rows
    }
}

/// Print an error and exit non-zero (bench binaries' main).
pub fn run_main(f: impl FnOnce() -> Result<()>) {
    if let Err(e) = f() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// GPU seconds per call of `calls` calls `f(i)` (`passes` compute passes each) recorded
/// into one submission between two GPU timestamps (`WgpuBackend::gpu_span_start`), median
/// of `reps` windows after 0.3 s of them; `None` without timestamp queries.
#[cfg(feature = "wgpu")]
pub fn gpu_b2b(
    w: &kiln_wgpu::WgpuBackend,
    calls: usize,
    reps: usize,
    passes: usize,
    f: &mut dyn FnMut(usize) -> Result<()>,
) -> Result<Option<f64>> {
    // warm-up: windows until the GPU has been busy 0.3 s (clocks up after the CPU-side
    // weight preparation; without it one process measured BF16 14336x4096 13 % slower)
    let t0 = std::time::Instant::now();
    let mut r0 = 0;
    while t0.elapsed().as_secs_f64() < 0.3 {
        if !w.gpu_span_start(u32::try_from(calls * passes).unwrap_or(u32::MAX))? {
            return Ok(None);
        }
        for i in 0..calls {
            f(r0 * calls + i)?;
        }
        w.gpu_span_stop()?;
        r0 += 1;
    }
    let mut v = Vec::new();
    for r in 0..=reps {
        let n = u32::try_from(calls * passes).unwrap_or(u32::MAX);
        if !w.gpu_span_start(n)? {
            return Ok(None);
        }
        for i in 0..calls {
            f((r0 + r) * calls + i)?;
        }
        let Some(t) = w.gpu_span_stop()? else {
            return Ok(None);
        };
        if r > 0 {
            v.push(t / calls as f64);
        }
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Ok(v.get(v.len() / 2).copied())
}

/// The wgpu vec4 copy probe over `mib` MiB (read + write bytes per second), 8 calls back to
/// back in one submission on the GPU clock (`gpu_b2b`).
#[cfg(feature = "wgpu")]
pub fn probe_bandwidth(w: &kiln_wgpu::WgpuBackend, mib: usize) -> Result<Option<f64>> {
    let bytes = mib << 20;
    let a = kiln_core::Backend::alloc(w, bytes)?;
    let b = kiln_core::Backend::alloc(w, bytes)?;
    let secs = gpu_b2b(w, 8, 5, 1, &mut |_| w.copy_probe(&a, &b, bytes, 4))?;
    Ok(secs.map(|t| 2.0 * bytes as f64 / t))
}

/// The bandwidth ceiling of a bench: on wgpu the vec4 copy probe (the f32 copy op reaches only
/// 0.9–1.8 of ~3.9 TB/s on an H200's Vulkan), reported as its own row; `copy` elsewhere or
/// where the adapter cannot time it.
pub fn wgpu_ceiling(rep: &mut Report, copy: f64, quick: bool) -> Result<f64> {
    #[cfg(feature = "wgpu")]
    if let Some(w) = opened_wgpu()
        && let Some(p) = probe_bandwidth(&w, if quick { 64 } else { 256 })?
    {
        rep.push(Row {
            bench: "copy".into(),
            case: "vec4 copy probe b2b (ceiling)".into(),
            us: 0.0,
            gbs: Some(p / 1e9),
            tflops: None,
            pct: Some(100.0),
            note: "read+write bytes, GPU timestamps".into(),
        })?;
        return Ok(p);
    }
    let _ = (rep, quick);
    Ok(copy)
}

/// Seconds per call of the backend's read probe over `bytes` (rounded down to 16) of `copies`
/// rotated buffers, timed as the GEMV rows are (CUDA: a graph of `calls` back-to-back calls;
/// wgpu: GPU timestamps around `calls` calls in one submission): the least time a kernel that
/// streams that many bytes once can take under the same launch, i.e. the physical floor of a
/// case at its size (a 9 MB read reaches far less of the copy bandwidth than a 256 MiB one).
/// None on backends without a probe.
pub fn read_floor(
    be: &dyn Backend,
    bytes: usize,
    copies: usize,
    calls: usize,
    reps: usize,
) -> Result<Option<f64>> {
    let bytes = bytes / 16 * 16;
    if bytes == 0 {
        return Ok(None);
    }
    let id = be.info().id;
    let srcs = || {
        (0..copies.max(1))
            .map(|_| be.alloc(bytes))
            .collect::<Result<Vec<_>>>()
    };
    #[cfg(feature = "cuda")]
    if let Some(c) = opened_cuda().filter(|c| Backend::info(&**c).id == id) {
        let (srcs, dst) = (srcs()?, be.alloc(4 * bytes.div_ceil(16 * 1024))?);
        let secs = time_calls(be, calls, reps, &mut |i| {
            c.read_probe(&srcs[i % srcs.len()], &dst, bytes)
        })?;
        return Ok(Some(secs));
    }
    #[cfg(feature = "wgpu")]
    if let Some(w) = opened_wgpu().filter(|w| Backend::info(&**w).id == id) {
        let (srcs, dst) = (srcs()?, be.alloc(16)?);
        return gpu_b2b(&w, calls, reps, 1, &mut |i| {
            w.read_probe(&srcs[i % srcs.len()], &dst, bytes)
        });
    }
    let _ = (id, srcs, calls, reps);
    Ok(None)
}

/// The "read floor" row of a case: `secs` per call to read `bytes` (`read_floor`), as a
/// fraction of `copy`.
pub fn floor_row(
    bench: &str,
    case: String,
    secs: f64,
    bytes: usize,
    copy: f64,
    copies: usize,
) -> Row {
    let gbs = bytes as f64 / secs;
    Row {
        bench: bench.into(),
        case,
        us: secs * 1e6,
        gbs: Some(gbs / 1e9),
        tflops: None,
        pct: Some(100.0 * gbs / copy),
        note: format!(
            "read probe over {:.1} MB, {copies} copies rotated, same timing",
            bytes as f64 / 1e6
        ),
    }
}
