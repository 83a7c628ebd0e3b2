//! Kernel sources, NVRTC compilation and the on-disk module cache.
//!
//! Every `kernels/*.cu` file is embedded in the binary (`include_str!`). On first use a file is
//! compiled by NVRTC for the device's exact architecture (`--gpu-architecture=sm_XY`, giving a
//! CUBIN the driver loads without JIT), and the CUBIN is cached under
//! `kiln_core::tune::cache_root()/kernels/`, keyed by a SHA-256 of the expanded source (headers
//! included), the architecture, the defines, the compiler options and the NVRTC version. A
//! compile failure is an error carrying NVRTC's log and the kernel file name.
//!
//! NVRTC finds no headers by itself: our own headers (`common.cuh`, `quant.cuh`, `gemv_segs.cuh`,
//! `gemv_pipe.cuh`, `mma_ring.cuh`, `attn_merge.cuh`, `attn_cluster.cuh`, `bulk.cuh`,
//! `matmul_mp.cuh`, `matmul_mqk.cuh`) are expanded textually before compiling; the CUDA include directory is
//! added with `--include-path` from env `KILN_CUDA_INCLUDE`, else `/usr/local/cuda/include` when
//! it exists (the kernels themselves need no CUDA header). libnvrtc is found through the loader path (`LD_LIBRARY_PATH`).

use std::collections::{HashMap, HashSet};
use std::ffi::{CString, c_char};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::{Ptx, result as nvrtc, sys as nvrtc_sys};
use sha2::{Digest, Sha256};

use crate::error::{CudaError, guard};

/// One embedded kernel file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KernelFile {
    pub name: &'static str,
    pub source: &'static str,
}

macro_rules! kernel_file {
    ($name:literal) => {
        KernelFile {
            name: $name,
            source: include_str!(concat!("../kernels/", $name)),
        }
    };
}

/// Headers that `#include "..."` may name (expanded before compiling).
pub const HEADERS: [(&str, &str); 10] = [
    ("common.cuh", include_str!("../kernels/common.cuh")),
    ("quant.cuh", include_str!("../kernels/quant.cuh")),
    ("gemv_segs.cuh", include_str!("../kernels/gemv_segs.cuh")),
    ("gemv_pipe.cuh", include_str!("../kernels/gemv_pipe.cuh")),
    ("mma_ring.cuh", include_str!("../kernels/mma_ring.cuh")),
    ("attn_merge.cuh", include_str!("../kernels/attn_merge.cuh")),
    (
        "attn_cluster.cuh",
        include_str!("../kernels/attn_cluster.cuh"),
    ),
    ("bulk.cuh", include_str!("../kernels/bulk.cuh")),
    ("matmul_mp.cuh", include_str!("../kernels/matmul_mp.cuh")),
    ("matmul_mqk.cuh", include_str!("../kernels/matmul_mqk.cuh")),
];

pub const NORM: KernelFile = kernel_file!("norm.cu");
pub const ROPE: KernelFile = kernel_file!("rope.cu");
pub const ACT: KernelFile = kernel_file!("act.cu");
pub const ADD: KernelFile = kernel_file!("add.cu");
pub const COPY: KernelFile = kernel_file!("copy.cu");
pub const EMBED: KernelFile = kernel_file!("embed.cu");
pub const KV_APPEND: KernelFile = kernel_file!("kv_append.cu");
pub const MATMUL_Q: KernelFile = kernel_file!("matmul_q.cu");
pub const MATMUL_MMA: KernelFile = kernel_file!("matmul_mma.cu");
pub const MATMUL_MH: KernelFile = kernel_file!("matmul_mh.cu");
pub const ATTENTION: KernelFile = kernel_file!("attention.cu");
pub const MOE: KernelFile = kernel_file!("moe.cu");
pub const ALLREDUCE: KernelFile = kernel_file!("allreduce.cu");

/// Every kernel file (the CI compile check walks this list and the directory).
pub const ALL: [KernelFile; 13] = [
    NORM, ROPE, ACT, ADD, COPY, EMBED, KV_APPEND, MATMUL_Q, MATMUL_MMA, MATMUL_MH, ATTENTION, MOE,
    ALLREDUCE,
];

/// The NVRTC options every compile uses. No fast math: dequantization must be exact and f16
/// subnormal scales must survive (no flush-to-zero).
fn base_options(arch: &str) -> Vec<String> {
    let mut o = vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
        "--ftz=false".to_string(),
        "--prec-div=true".to_string(),
        "--prec-sqrt=true".to_string(),
        "-lineinfo".to_string(),
    ];
    if let Some(inc) = cuda_include_dir() {
        o.push(format!("--include-path={}", inc.display()));
    }
    o
}

/// `KILN_CUDA_INCLUDE`, else `/usr/local/cuda/include` if it exists.
pub fn cuda_include_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("KILN_CUDA_INCLUDE") {
        return Some(PathBuf::from(d));
    }
    let d = PathBuf::from("/usr/local/cuda/include");
    d.is_dir().then_some(d)
}

/// Whether libnvrtc can be loaded (no panic when it cannot).
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to dlopen the candidate library names; no symbol is called.
    guard("nvrtc probe", || unsafe { nvrtc_sys::is_culib_present() }).unwrap_or(false)
}

/// NVRTC's version as `major.minor`.
pub fn nvrtc_version() -> Result<String, CudaError> {
    guard("nvrtcVersion", || {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: out-pointers to locals.
        let rc = unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) };
        (rc, major, minor)
    })
    .and_then(|(rc, major, minor)| match rc {
        nvrtc_sys::nvrtcResult::NVRTC_SUCCESS => Ok(format!("{major}.{minor}")),
        e => Err(CudaError::LibraryMissing {
            lib: "libnvrtc",
            why: format!("nvrtcVersion returned {e:?}"),
        }),
    })
}

/// Expand `#include "header"` lines naming our headers (each header once).
pub fn expand_source(file: &KernelFile) -> Result<String, CudaError> {
    fn expand(
        name: &str,
        src: &str,
        seen: &mut HashSet<String>,
        out: &mut String,
    ) -> Result<(), CudaError> {
        for line in src.lines() {
            let t = line.trim_start();
            if let Some(rest) = t.strip_prefix("#include \"") {
                let inc = rest.trim_end().trim_end_matches('"');
                let Some((_, body)) = HEADERS.iter().find(|(h, _)| *h == inc) else {
                    return Err(CudaError::Compile {
                        kernel: name.to_string(),
                        arch: "-".into(),
                        status: "unknown include".into(),
                        log: format!("{name}: #include \"{inc}\" is not an embedded header"),
                    });
                };
                if seen.insert(inc.to_string()) {
                    expand(inc, body, seen, out)?;
                }
                continue;
            }
            out.push_str(line);
            out.push('\n');
        }
        Ok(())
    }
    let mut out = String::new();
    expand(file.name, file.source, &mut HashSet::new(), &mut out)?;
    Ok(out)
}

/// The result of one NVRTC compile: the CUBIN (real arch) and the compiler log.
pub struct Compiled {
    pub cubin: Vec<u8>,
    pub log: String,
}

/// Compile one kernel file for `arch` (`sm_90`) with `-D` defines. Needs only libnvrtc.
pub fn compile(
    file: &KernelFile,
    arch: &str,
    defines: &[(&str, &str)],
) -> Result<Compiled, CudaError> {
    let src = expand_source(file)?;
    let mut opts = base_options(arch);
    opts.extend(defines.iter().map(|(k, v)| format!("-D{k}={v}")));
    let fail = |status: String, log: String| CudaError::Compile {
        kernel: file.name.to_string(),
        arch: arch.to_string(),
        status,
        log,
    };
    let c_src = CString::new(src).map_err(|_| fail("NUL byte in source".into(), String::new()))?;
    let c_name =
        CString::new(file.name).map_err(|_| fail("NUL byte in name".into(), String::new()))?;
    guard(&format!("NVRTC compile of {}", file.name), || {
        let prog = nvrtc::create_program(&c_src, Some(&c_name))
            .map_err(|e| fail(format!("nvrtcCreateProgram: {e:?}"), String::new()))?;
        // SAFETY: `prog` was just created and is destroyed exactly once below; the source and
        // name CStrings outlive it.
        let res = unsafe { nvrtc::compile_program(prog, &opts) };
        // SAFETY: as above.
        let log = unsafe { nvrtc::get_program_log(prog) }
            .map(|l| c_chars_to_string(&l))
            .unwrap_or_default();
        let out = match res {
            Err(e) => Err(fail(format!("{e:?}"), log)),
            // SAFETY: as above; the CUBIN buffer is sized by nvrtcGetCUBINSize.
            Ok(()) => unsafe { get_cubin(prog) }
                .map(|cubin| Compiled {
                    cubin,
                    log: log.clone(),
                })
                .map_err(|e| fail(e, log)),
        };
        // SAFETY: destroyed once; nothing uses `prog` afterwards.
        let _ = unsafe { nvrtc::destroy_program(prog) };
        out
    })?
}

/// # Safety
/// `prog` must be a live, successfully compiled NVRTC program.
unsafe fn get_cubin(prog: nvrtc_sys::nvrtcProgram) -> Result<Vec<u8>, String> {
    let mut size = 0usize;
    // SAFETY: forwarded: `prog` is live; out-pointer to a local.
    let rc = unsafe { nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size) };
    if rc != nvrtc_sys::nvrtcResult::NVRTC_SUCCESS || size == 0 {
        return Err(format!("nvrtcGetCUBINSize: {rc:?} (size {size})"));
    }
    let mut buf = vec![0u8; size];
    // SAFETY: `buf` holds `size` bytes as NVRTC asked.
    let rc = unsafe { nvrtc_sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut c_char) };
    if rc != nvrtc_sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(format!("nvrtcGetCUBIN: {rc:?}"));
    }
    Ok(buf)
}

fn c_chars_to_string(v: &[c_char]) -> String {
    let bytes: Vec<u8> = v.iter().map(|c| *c as u8).take_while(|b| *b != 0).collect();
    String::from_utf8_lossy(&bytes).trim().to_string()
}

/// The CUBIN of `file` for `arch` from the disk cache under `cache_root()/kernels/`, or compiled
/// and stored there (atomically: temporary file + rename). Needs only libnvrtc, so a cache can be
/// filled ahead of time on a machine without a GPU.
pub fn cached_cubin(file: &KernelFile, arch: &str) -> Result<Vec<u8>, CudaError> {
    let nv = nvrtc_version()?;
    let key = cache_key(file, arch, &[], &nv)?;
    let dir = kiln_core::tune::cache_root().join("kernels");
    let path = dir.join(format!("{key}.cubin"));
    if let Ok(bytes) = std::fs::read(&path)
        && !bytes.is_empty()
    {
        return Ok(bytes);
    }
    let c = compile(file, arch, &[])?;
    // A cache that cannot be written only costs a compile next time.
    if std::fs::create_dir_all(&dir).is_ok() {
        let tmp = dir.join(format!("{key}.cubin.tmp{}", std::process::id()));
        if std::fs::write(&tmp, &c.cubin).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
    Ok(c.cubin)
}

/// The cache key of a compile: hash of everything that changes the CUBIN. The CUDA include
/// directory's path is left out (the kernels include no CUDA header; only our embedded headers,
/// which are hashed as part of the expanded source).
pub fn cache_key(
    file: &KernelFile,
    arch: &str,
    defines: &[(&str, &str)],
    nvrtc: &str,
) -> Result<String, CudaError> {
    let mut h = Sha256::new();
    h.update(expand_source(file)?.as_bytes());
    for o in base_options(arch)
        .iter()
        .filter(|o| !o.starts_with("--include-path="))
    {
        h.update(b"\0opt:");
        h.update(o.as_bytes());
    }
    for (k, v) in defines {
        h.update(format!("\0def:{k}={v}").as_bytes());
    }
    h.update(b"\0nvrtc:");
    h.update(nvrtc.as_bytes());
    let digest = h.finalize();
    let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    Ok(format!(
        "{}-{arch}-{hex}",
        file.name.trim_end_matches(".cu")
    ))
}

/// (kernel file, function, threads per block, dynamic shared memory bytes).
type OccKey = (&'static str, &'static str, u32, usize);

/// Loaded modules and functions of one device, compiled (or read from disk) on first use.
pub struct ModuleCache {
    ctx: Arc<CudaContext>,
    device: String,
    arch: String,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<(&'static str, &'static str), CudaFunction>>,
    /// Resident blocks per SM of (file, function, threads, dynamic shared bytes): fixed for a
    /// device, so asked of the driver once, not on every launch that sizes its grid by it.
    occupancy: Mutex<HashMap<OccKey, usize>>,
}

impl ModuleCache {
    pub fn new(ctx: Arc<CudaContext>, device: String, arch: String) -> ModuleCache {
        ModuleCache {
            ctx,
            device,
            arch,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            occupancy: Mutex::new(HashMap::new()),
        }
    }

    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// The function `name` of kernel file `file`, loading the module on first use.
    pub fn function(
        &self,
        file: &KernelFile,
        name: &'static str,
    ) -> Result<CudaFunction, CudaError> {
        let mut fns = self.functions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = fns.get(&(file.name, name)) {
            return Ok(f.clone());
        }
        let module = self.module(file)?;
        let f = module
            .load_function(name)
            .map_err(|e| CudaError::MissingFunction {
                device: self.device.clone(),
                kernel: file.name.to_string(),
                function: name.to_string(),
                msg: format!("{e:?}"),
            })?;
        fns.insert((file.name, name), f.clone());
        Ok(f)
    }

    /// Resident blocks per SM (at least 1) of `name` launched with `threads` threads and `smem`
    /// bytes of dynamic shared memory; memoized.
    pub fn occupancy(
        &self,
        file: &KernelFile,
        name: &'static str,
        threads: u32,
        smem: usize,
    ) -> Result<usize, CudaError> {
        let key = (file.name, name, threads, smem);
        if let Some(&n) = self
            .occupancy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(n);
        }
        let n = self
            .function(file, name)?
            .occupancy_max_active_blocks_per_multiprocessor(threads, smem, None)
            .map_err(|e| {
                CudaError::driver(
                    self.device.clone(),
                    "cuOccupancyMaxActiveBlocksPerMultiprocessor",
                    e,
                )
            })?
            .max(1) as usize;
        self.occupancy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, n);
        Ok(n)
    }

    fn module(&self, file: &KernelFile) -> Result<Arc<CudaModule>, CudaError> {
        let mut mods = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = mods.get(file.name) {
            return Ok(m.clone());
        }
        let cubin = self.cubin(file)?;
        let m = self
            .ctx
            .load_module(Ptx::from_binary(cubin))
            .map_err(|e| CudaError::driver(self.device.clone(), "cuModuleLoadData", e))?;
        mods.insert(file.name, m.clone());
        Ok(m)
    }

    fn cubin(&self, file: &KernelFile) -> Result<Vec<u8>, CudaError> {
        cached_cubin(file, &self.arch)
    }
}
