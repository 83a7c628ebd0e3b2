//! The dense path of `matmul`: cuBLASLt GEMM with bf16 (or f16 / f32) inputs and f32 output.
//!
//! out `[m, n]` (row-major f32) = x `[m, k]` · W `[n, k]`ᵀ. In cuBLAS's column-major terms this
//! is D (n × m, ld n) = op(A) · B with A = W seen as k × n (ld k) transposed and B = x seen as
//! k × m (ld k). Plans (descriptors, layouts and the heuristic's algorithm) are cached per shape,
//! so a repeated call (or a graph capture) only enqueues the GEMM.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublaslt::{result as lt, sys};
use cudarc::driver::CudaStream;

use crate::buffer::CudaMem;
use crate::error::CudaError;

/// Input element type of a GEMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum GemmInput {
    Bf16,
    F16,
    F32,
}

impl GemmInput {
    fn data_type(self) -> sys::cudaDataType {
        match self {
            GemmInput::Bf16 => sys::cudaDataType::CUDA_R_16BF,
            GemmInput::F16 => sys::cudaDataType::CUDA_R_16F,
            GemmInput::F32 => sys::cudaDataType::CUDA_R_32F,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PlanKey {
    input: GemmInput,
    m: u64,
    n: u64,
    k: u64,
    ldc: i64,
}

struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    c: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: each handle was created once by `Gemm::plan` and is destroyed once here.
        unsafe {
            let _ = lt::destroy_matrix_layout(self.a);
            let _ = lt::destroy_matrix_layout(self.b);
            let _ = lt::destroy_matrix_layout(self.c);
            let _ = lt::destroy_matmul_desc(self.desc);
        }
    }
}

/// One GEMM scratch allocation; shared with the graphs captured while it was current.
struct Scratch {
    mem: Arc<CudaMem>,
    /// First-use tuning's (removed by address afterwards); persistent otherwise.
    transient: bool,
}

/// cuBLASLt handle, its workspace, the cached plans and the backend's GEMM scratch
/// (dequantized weight tiles and converted activations).
pub(crate) struct Gemm {
    handle: sys::cublasLtHandle_t,
    workspace: CudaMem,
    workspace_bytes: usize,
    plans: HashMap<PlanKey, Plan>,
    /// The current scratch is the last. Growing it retires the older persistent one: it is
    /// freed then (stream-ordered) unless a captured graph holds it (`graph.rs` keeps the
    /// scratch a capture used alive as long as the graph). First-use tuning's transient scratch
    /// sits on top of the persistent one until `remove_scratch`.
    scratch: Vec<Scratch>,
    /// The most bytes `allocated_bytes` has reached (transient tuning scratch included).
    peak: usize,
    device: String,
}

// SAFETY: the cuBLASLt handle and descriptors are used only while the backend's `gemm` mutex is
// held, so no two threads touch them at once; cuBLASLt handles may move between threads.
unsafe impl Send for Gemm {}

impl Drop for Gemm {
    fn drop(&mut self) {
        self.plans.clear();
        // SAFETY: the handle was created once in `Gemm::new` and is destroyed once here.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}

impl Gemm {
    /// `workspace` is device memory for cuBLASLt (32 MiB on Hopper, 4 MiB before).
    pub(crate) fn new(device: String, workspace: CudaMem) -> Result<Gemm, CudaError> {
        // SAFETY: probing only dlopens candidate names.
        if !crate::error::guard("cuBLASLt probe", || unsafe { sys::is_culib_present() })
            .unwrap_or(false)
        {
            return Err(CudaError::LibraryMissing {
                lib: "libcublasLt",
                why: "not found on the loader path".into(),
            });
        }
        let handle = crate::error::guard("cublasLtCreate", lt::create_handle)?.map_err(|e| {
            CudaError::Cublas {
                device: device.clone(),
                call: "cublasLtCreate",
                msg: format!("{e:?}"),
            }
        })?;
        let workspace_bytes = workspace.slice.len();
        Ok(Gemm {
            handle,
            workspace,
            workspace_bytes,
            plans: HashMap::new(),
            scratch: Vec::new(),
            peak: workspace_bytes,
            device,
        })
    }

    /// The current scratch if it holds `bytes`, else `None` (the caller allocates and `push`es).
    pub(crate) fn scratch(&self, bytes: usize) -> Option<&Arc<CudaMem>> {
        self.scratch
            .last()
            .map(|s| &s.mem)
            .filter(|m| m.slice.len() >= bytes)
    }

    /// Device bytes held: the workspace and the scratch on the stack (a retired scratch that a
    /// captured graph still holds is the graph's, not counted here).
    pub(crate) fn allocated_bytes(&self) -> usize {
        self.workspace_bytes
            + self
                .scratch
                .iter()
                .map(|s| s.mem.slice.len())
                .sum::<usize>()
    }

    /// Bytes of the current persistent scratch (0 when none): what a new reserve keeps.
    pub(crate) fn persistent_scratch_bytes(&self) -> usize {
        self.scratch
            .iter()
            .rev()
            .find(|s| !s.transient)
            .map_or(0, |s| s.mem.slice.len())
    }

    /// Take the scratch at `ptr` off the stack (first-use tuning's transient one).
    pub(crate) fn remove_scratch(&mut self, ptr: u64) -> Option<Arc<CudaMem>> {
        let i = self.scratch.iter().position(|s| s.mem.ptr == ptr)?;
        Some(self.scratch.remove(i).mem)
    }

    /// Make `mem` the current scratch. A persistent one retires the persistent scratch it
    /// outgrew (freed once no captured graph holds it); a transient one stacks on top.
    pub(crate) fn push_scratch(&mut self, mem: CudaMem, transient: bool) -> &Arc<CudaMem> {
        if !transient {
            self.scratch.retain(|s| s.transient);
        }
        self.scratch.push(Scratch {
            mem: Arc::new(mem),
            transient,
        });
        self.peak = self.peak.max(self.allocated_bytes());
        &self.scratch[self.scratch.len() - 1].mem
    }

    /// The most bytes held at once so far.
    pub(crate) fn peak_bytes(&self) -> usize {
        self.peak
    }

    fn err(
        &self,
        call: &'static str,
    ) -> impl Fn(cudarc::cublaslt::result::CublasError) -> CudaError + '_ {
        move |e| CudaError::Cublas {
            device: self.device.clone(),
            call,
            msg: format!("{e:?}"),
        }
    }

    fn plan(&mut self, key: PlanKey) -> Result<&Plan, CudaError> {
        if !self.plans.contains_key(&key) {
            let p = self.make_plan(key)?;
            self.plans.insert(key, p);
        }
        self.plans.get(&key).ok_or_else(|| CudaError::Cublas {
            device: self.device.clone(),
            call: "plan cache",
            msg: "plan vanished".into(),
        })
    }

    fn make_plan(&self, key: PlanKey) -> Result<Plan, CudaError> {
        let dt = key.input.data_type();
        let f32t = sys::cudaDataType::CUDA_R_32F;
        let desc = lt::create_matmul_desc(sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, f32t)
            .map_err(self.err("cublasLtMatmulDescCreate"))?;
        let a = lt::create_matrix_layout(dt, key.k, key.n, key.k as i64)
            .map_err(self.err("cublasLtMatrixLayoutCreate A"))?;
        let b = lt::create_matrix_layout(dt, key.k, key.m, key.k as i64)
            .map_err(self.err("cublasLtMatrixLayoutCreate B"))?;
        let c = lt::create_matrix_layout(f32t, key.n, key.m, key.ldc)
            .map_err(self.err("cublasLtMatrixLayoutCreate C"))?;
        // Built before any `?` below so the handles are destroyed on every path.
        let mut plan = Plan {
            desc,
            a,
            b,
            c,
            // SAFETY: a plain C struct of integers; overwritten by the heuristic below.
            algo: unsafe { std::mem::zeroed() },
        };
        let trans_a: i32 = 1; // CUBLAS_OP_T
        // SAFETY: the attribute is an i32-sized cublasOperation_t, passed by pointer with its size.
        unsafe {
            lt::set_matmul_desc_attribute(
                desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                (&trans_a) as *const i32 as *const c_void,
                std::mem::size_of::<i32>(),
            )
        }
        .map_err(self.err("cublasLtMatmulDescSetAttribute TRANSA"))?;
        let pref = lt::create_matmul_pref().map_err(self.err("cublasLtMatmulPreferenceCreate"))?;
        let ws = self.workspace_bytes as u64;
        // SAFETY: a u64 attribute passed with its size; `pref` is destroyed once below.
        let res = unsafe {
            lt::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&ws) as *const u64 as *const c_void,
                std::mem::size_of::<u64>(),
            )
            .and_then(|_| lt::get_matmul_algo_heuristic(self.handle, desc, a, b, c, c, pref))
        };
        // SAFETY: created above, destroyed once.
        let _ = unsafe { lt::destroy_matmul_pref(pref) };
        plan.algo = res
            .map_err(self.err("cublasLtMatmulAlgoGetHeuristic"))?
            .algo;
        Ok(plan)
    }

    /// Enqueue out (f32, column-major n × m with ld `ldc`) = Wᵀ-op · x on `stream`.
    /// `w`: k × n elements (ld k), `x`: k × m (ld k), both of `input` type.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run(
        &mut self,
        stream: &CudaStream,
        input: GemmInput,
        m: usize,
        n: usize,
        k: usize,
        w: u64,
        x: u64,
        out: u64,
        ldc: usize,
    ) -> Result<(), CudaError> {
        let key = PlanKey {
            input,
            m: m as u64,
            n: n as u64,
            k: k as u64,
            ldc: ldc as i64,
        };
        let (handle, ws, ws_bytes) = (self.handle, self.workspace.ptr, self.workspace_bytes);
        let device = self.device.clone();
        // cuBLASLt works in the thread's current context, which another device's launch (a
        // tensor-parallel peer's kernel) may have left set: make it this stream's.
        stream
            .context()
            .bind_to_thread()
            .map_err(|e| CudaError::driver(&device, "cuCtxSetCurrent", e))?;
        let plan = self.plan(key)?;
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: the plan's layouts describe exactly the ranges the caller passes (w: n·k,
        // x: m·k elements of `input`, out: m rows of ld `ldc` ≥ n f32); the workspace holds
        // `ws_bytes`; everything is enqueued on the backend's stream.
        unsafe {
            lt::matmul(
                handle,
                plan.desc,
                (&alpha) as *const f32 as *const c_void,
                (&beta) as *const f32 as *const c_void,
                w as *const c_void,
                plan.a,
                x as *const c_void,
                plan.b,
                out as *const c_void,
                plan.c,
                out as *mut c_void,
                plan.c,
                &plan.algo,
                ws as *mut c_void,
                ws_bytes,
                stream.cu_stream() as sys::cudaStream_t,
            )
        }
        .map_err(|e| CudaError::Cublas {
            device,
            call: "cublasLtMatmul",
            msg: format!("{e:?}"),
        })
    }
}
