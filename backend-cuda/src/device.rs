//! `CudaBackend`: one CUDA context and one stream per device, implementing `kiln_core::Backend`.
//! Op bodies live in `ops/<op>.rs` (same names as `kernels/<op>.cu`); this file holds the
//! device plumbing: memory, copies, pointers of views, launches' shared helpers.

use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaFunction, CudaStream, LaunchConfig, result as drv};
use kiln_core::backend::check;
use kiln_core::{
    Activation, AttnParams, Backend, Buffer, DType, DeviceInfo, Error, HostTensor, MatmulUse,
    MoeExperts, MoeRouting, OpKind, PagedKv, Replay, Result, RopeParams, SeqBatch, Shape, View,
    ViewMut, Weight,
};

use crate::buffer::{CudaMem, CudaWeight};
use crate::error::{CudaError, guard};
use crate::gemm::Gemm;
use crate::module_cache::{KernelFile, ModuleCache};
use crate::tune::Crossovers;

pub struct CudaBackend {
    pub(crate) info: DeviceInfo,
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) modules: ModuleCache,
    /// cuBLASLt handle, workspace and the dequantize-to-bf16 scratch (created on first use).
    pub(crate) gemm: Mutex<Option<Gemm>>,
    /// Largest bf16 image (bytes) of a weight prepared so far: sizes the GEMM scratch.
    pub(crate) largest_weight_bf16: Mutex<usize>,
    /// Shared by every device with the same key (`tune::shared`).
    pub(crate) crossovers: Arc<Mutex<Crossovers>>,
    /// Highest `memory_in_use` seen at the transient peaks this backend knows of (the end of
    /// each first-use tuning, while its buffers are alive); 0 before any.
    pub(crate) memory_peak: std::sync::atomic::AtomicU64,
    /// Attention's split-merge counters (ops/attention.rs `attn_counters`), created zeroed on
    /// first use outside a graph capture.
    pub(crate) attn_counters: Mutex<Option<cudarc::driver::CudaSlice<i32>>>,
    /// While a graph is captured: the GEMM scratch its matmuls used, handed to the graph so a
    /// scratch retired by a later, larger one lives exactly as long as the graphs holding it.
    pub(crate) graph_keep: Mutex<Option<Vec<Arc<CudaMem>>>>,
}

impl CudaBackend {
    /// Open device `index` (after the probe found it).
    pub fn open(info: DeviceInfo) -> Result<CudaBackend> {
        let index = info.id.index as usize;
        let name = info.id.to_string();
        let cc = info.caps.compute_capability.unwrap_or((0, 0));
        if cc.0 < 8 {
            return Err(Error::backend(
                name,
                format!(
                    "compute capability {}.{} is below 8.0 (bf16 GEMM needs sm_80+)",
                    cc.0, cc.1
                ),
            ));
        }
        let (ctx, stream) = guard("CudaContext::new", || -> Result<_, CudaError> {
            let ctx =
                CudaContext::new(index).map_err(|e| CudaError::driver(&name, "cuCtxCreate", e))?;
            // SAFETY: every op of this backend runs on its one stream, so cudarc's per-buffer
            // events (for cross-stream sync) are not needed; without them launches record no
            // events, which also keeps graph capture clean.
            unsafe { ctx.disable_event_tracking() };
            let stream = ctx
                .new_stream()
                .map_err(|e| CudaError::driver(&name, "cuStreamCreate", e))?;
            Ok((ctx, stream))
        })??;
        let arch = format!("sm_{}{}", cc.0, cc.1);
        let device_key = crate::tune::device_key(&info);
        Ok(CudaBackend {
            modules: ModuleCache::new(ctx.clone(), name, arch),
            crossovers: crate::tune::shared(&device_key),
            info,
            ctx,
            stream,
            gemm: Mutex::new(None),
            largest_weight_bf16: Mutex::new(0),
            memory_peak: std::sync::atomic::AtomicU64::new(0),
            attn_counters: Mutex::new(None),
            graph_keep: Mutex::new(None),
        })
    }

    pub(crate) fn name(&self) -> String {
        self.info.id.to_string()
    }

    pub(crate) fn drv(
        &self,
        call: &'static str,
    ) -> impl Fn(cudarc::driver::DriverError) -> Error + '_ {
        move |e| CudaError::driver(self.name(), call, e).into()
    }

    pub(crate) fn function(&self, file: &KernelFile, name: &'static str) -> Result<CudaFunction> {
        Ok(self.modules.function(file, name)?)
    }

    /// Device address of a view (after checking it lives on this device).
    pub(crate) fn ptr(&self, op: OpKind, v: &View<'_>) -> Result<u64> {
        check::device(op, self.info.id, v.device())?;
        let mem = v.buffer().downcast::<CudaMem>().ok_or_else(|| {
            Error::Invalid(format!(
                "{op:?}: buffer was not allocated by {}",
                self.name()
            ))
        })?;
        Ok(mem.ptr + v.offset() as u64)
    }

    pub(crate) fn ptr_mut(&self, op: OpKind, v: &ViewMut<'_>) -> Result<u64> {
        self.ptr(op, &v.as_view())
    }

    pub(crate) fn weight<'w>(&self, op: OpKind, w: &'w Weight) -> Result<&'w CudaWeight> {
        check::device(op, self.info.id, w.device())?;
        w.downcast::<CudaWeight>()
            .ok_or_else(|| Error::Invalid(format!("{w:?} was not prepared by {}", self.name())))
    }

    /// A 1-D grid-stride launch over `count` items (256 threads, at most 64 blocks per SM).
    pub(crate) fn grid_1d(&self, count: usize) -> LaunchConfig {
        let sms = self.info.caps.compute_units.max(1) as usize;
        let blocks = count.div_ceil(256).clamp(1, sms * 64);
        LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// Allocate `bytes` of device memory (stream-ordered).
    pub(crate) fn alloc_mem(&self, bytes: usize) -> Result<CudaMem> {
        // SAFETY: u8 has no invalid bit patterns; the memory is written before it is read by
        // every op (outputs are written, inputs were written by the caller).
        let slice = unsafe { self.stream.alloc::<u8>(bytes.max(1)) }.map_err(|e| {
            if format!("{e:?}").contains("OUT_OF_MEMORY") {
                Error::OutOfMemory {
                    device: self.name(),
                    requested: bytes as u64,
                }
            } else {
                CudaError::driver(self.name(), "cuMemAllocAsync", e).into()
            }
        })?;
        let ptr = {
            let (p, _sync) = cudarc::driver::DevicePtr::device_ptr(&slice, &self.stream);
            p
        };
        Ok(CudaMem { ptr, slice })
    }

    fn check_range(&self, buf: &Buffer, offset: usize, len: usize) -> Result<u64> {
        if buf.device() != self.info.id {
            return Err(Error::Invalid(format!(
                "a buffer of {} was passed to {}",
                buf.device(),
                self.name()
            )));
        }
        if offset.checked_add(len).is_none_or(|e| e > buf.len()) {
            return Err(Error::View(format!(
                "{len} bytes at offset {offset} do not fit a buffer of {} bytes",
                buf.len()
            )));
        }
        let mem = buf.downcast::<CudaMem>().ok_or_else(|| {
            Error::Invalid(format!("buffer was not allocated by {}", self.name()))
        })?;
        Ok(mem.ptr + offset as u64)
    }

    /// Upload host bytes into a fresh allocation.
    pub(crate) fn upload(&self, data: &[u8]) -> Result<CudaMem> {
        let mem = self.alloc_mem(data.len())?;
        if !data.is_empty() {
            self.ctx
                .bind_to_thread()
                .map_err(self.drv("cuCtxSetCurrent"))?;
            // SAFETY: `mem` holds at least data.len() bytes; pageable-source async copies return
            // only after the source has been staged, so `data` may be freed afterwards.
            unsafe { drv::memcpy_htod_async(mem.ptr, data, self.stream.cu_stream()) }
                .map_err(self.drv("cuMemcpyHtoDAsync"))?;
        }
        Ok(mem)
    }

    /// Device-to-device copy of `bytes` on the stream.
    pub(crate) fn copy_dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.ctx
            .bind_to_thread()
            .map_err(self.drv("cuCtxSetCurrent"))?;
        // SAFETY: both ranges were validated by the views that produced the addresses.
        unsafe { drv::memcpy_dtod_async(dst, src, bytes, self.stream.cu_stream()) }
            .map_err(self.drv("cuMemcpyDtoDAsync"))
    }

    /// The tuning-cache key of this device (name, compute capability, driver).
    pub fn device_key(&self) -> String {
        crate::tune::device_key(&self.info)
    }
}

/// The smallest matmul scratch allocation (ops/matmul_q.rs `matmul_scratch`).
pub(crate) const MIN_MATMUL_SCRATCH: usize = 1 << 20;

/// What the matmul workspace of a set of uses needs (see `CudaBackend::matmul_workspace`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct MatmulWorkspace {
    /// Some use asks for the GEMM scratch (so the cuBLASLt state is created).
    used: bool,
    /// The largest scratch request.
    scratch: usize,
    /// The largest transient allocation of first-use tuning (freed after it).
    tuning: usize,
}

impl CudaBackend {
    /// cuBLASLt workspace: 32 MiB on Hopper and later, 4 MiB before.
    pub(crate) fn cublaslt_workspace_bytes(&self) -> usize {
        if self.info.caps.compute_capability.is_some_and(|c| c.0 >= 9) {
            32 << 20
        } else {
            4 << 20
        }
    }

    /// The device bytes `prepare_weight` allocates: the repacked image (body + head regions,
    /// ops/../buffer.rs `repack`), at least one byte. Same checks as `prepare_weight`.
    fn prepared_bytes(&self, dtype: DType, shape: &Shape) -> Result<usize> {
        let op = OpKind::Matmul;
        if !DType::WEIGHT_TYPES.contains(&dtype) {
            return Err(check::unsupported(op, dtype, &self.info));
        }
        if !(shape.rank() == 2 || shape.rank() == 3) {
            return Err(Error::shape(
                op,
                format!("weight {shape} must be [n, k] or [experts, n, k]"),
            ));
        }
        let k = shape.last();
        if !k.is_multiple_of(dtype.block_size()) {
            return Err(Error::Quant {
                dtype,
                msg: format!(
                    "rows of {k} elements are not whole blocks of {}",
                    dtype.block_size()
                ),
            });
        }
        let data = dtype.bytes_for(shape.numel())?;
        let Some(sp) = crate::buffer::split(dtype) else {
            return Err(check::unsupported(op, dtype, &self.info));
        };
        let (body, head) = (sp.body_bytes(), sp.head_bytes());
        let bytes = if head == 0 || (dtype.is_float() && !k.is_multiple_of(sp.qk)) {
            data
        } else {
            let nblocks = shape.rows() * (k / sp.qk);
            (nblocks * body).div_ceil(16) * 16 + nblocks * head
        };
        Ok(bytes.max(1))
    }

    /// The GEMM scratch a matmul of x `[m, k]` by a `dt` weight `[n, k]` asks for on `path`
    /// (what `matmul_fused` / `matmul_mma` / `matmul_dense` request), or None where the path
    /// cannot run it. Float weights run the fused path without scratch.
    pub(crate) fn path_scratch(
        &self,
        path: crate::ops::matmul_q::MatmulPath,
        dt: DType,
        m: usize,
        n: usize,
        k: usize,
    ) -> Option<usize> {
        use crate::ops::matmul_q::MatmulPath;
        let chunked = crate::buffer::chunked_ok(dt, k);
        match path {
            MatmulPath::Fused if dt.is_float() => Some(0),
            MatmulPath::Fused => {
                chunked.then(|| crate::ops::matmul_q::fused_scratch_bytes(dt, m, k))
            }
            MatmulPath::Mma => crate::ops::matmul_mma::mma_supported(dt, k)
                .then(|| self.mma_scratch_bytes(dt, m, n, k)),
            // Block types whose rows are not whole chunks are refused by the dense path.
            MatmulPath::Dense => (dt.is_float() || chunked).then(|| {
                let t = crate::ops::matmul_q::dense_tiles(dt, m, n, k);
                t.w_scratch + t.x_scratch
            }),
            // Not resolved yet: the most any concrete path that applies could take.
            MatmulPath::Auto => [MatmulPath::Fused, MatmulPath::Mma, MatmulPath::Dense]
                .into_iter()
                .filter_map(|p| self.path_scratch(p, dt, m, n, k))
                .max(),
        }
    }

    /// The largest GEMM scratch first-use tuning of a `dt` weight `[n, k]` asks for: every
    /// path at every rung of the ladder (tune.rs `tune_inner`). The tuner allocates it once,
    /// on top of the scratch stack, and frees it when the measurement is done.
    pub(crate) fn tuning_scratch(&self, dt: DType, n: usize, k: usize) -> usize {
        use crate::ops::matmul_q::MatmulPath;
        let mut most = 0;
        for &m in &crate::tune::LADDER {
            for path in [MatmulPath::Fused, MatmulPath::Mma, MatmulPath::Dense] {
                most = most.max(self.path_scratch(path, dt, m, n, k).unwrap_or(0));
            }
        }
        most
    }

    /// The matmul scratch, cuBLASLt and tuning needs of `uses` (ops/matmul_q.rs): a use with
    /// persisted crossovers (f, q) runs the fused path up to min(f, rows) rows, the mma path
    /// up to min(q, rows) and the dense path above q; the persistent scratch is the largest of
    /// those requests. An untuned use is first tuned, which runs every path at every `LADDER`
    /// rung on transient buffers (x, out, the L2 flush and its own scratch, all freed after
    /// it), and afterwards may take any path up to its rows.
    fn matmul_workspace(&self, uses: &[MatmulUse]) -> MatmulWorkspace {
        use crate::ops::matmul_q::MatmulPath;
        let ladder = crate::tune::LADDER[crate::tune::LADDER.len() - 1];
        let mut ws = MatmulWorkspace::default();
        for u in uses {
            if u.shape.rank() != 2 || u.max_rows == 0 || u.shape.numel() == 0 {
                continue;
            }
            let (n, k, dt, rows) = (u.shape.dim(0), u.shape.dim(1), u.dtype, u.max_rows);
            // (path, rows it runs at most) for this use.
            let runs: Vec<(MatmulPath, usize)> = match self.crossovers_of(dt, n, k) {
                Some(c) => {
                    let f = rows.min(c.max_fused_rows);
                    let q = rows.min(c.max_mma_rows.max(c.max_fused_rows));
                    let mut v = vec![(MatmulPath::Fused, f)];
                    if q > f {
                        v.push((MatmulPath::Mma, q));
                    }
                    if rows > q {
                        v.push((MatmulPath::Dense, rows));
                    }
                    v
                }
                None => {
                    // tune_inner: out [512, n] f32, the flush buffer, x [512, k] f32, scratch.
                    let t = ladder * n * 4
                        + crate::tune::FLUSH_BYTES
                        + ladder * k * 4
                        + self.tuning_scratch(dt, n, k);
                    ws.tuning = ws.tuning.max(t);
                    vec![
                        (MatmulPath::Fused, rows),
                        (MatmulPath::Mma, rows),
                        (MatmulPath::Dense, rows),
                    ]
                }
            };
            for (path, m) in runs {
                if m == 0 {
                    continue;
                }
                // Rows the mma path cannot take (k not whole chunks) go to the dense path.
                let b = self.path_scratch(path, dt, m, n, k).or_else(|| {
                    (path == MatmulPath::Mma)
                        .then(|| self.path_scratch(MatmulPath::Dense, dt, m, n, k))
                        .flatten()
                });
                if let Some(b) = b
                    && (b > 0 || path != MatmulPath::Fused)
                {
                    ws.used = true;
                    ws.scratch = ws.scratch.max(b);
                }
            }
        }
        ws
    }

    /// The most device bytes the cuBLASLt state has held at once (its workspace and GEMM
    /// scratch, the tuner's transient scratch included); 0 before the first matmul needing it.
    pub fn workspace_peak(&self) -> usize {
        let g = self.gemm.lock().unwrap_or_else(|e| e.into_inner());
        g.as_ref().map_or(0, |g| g.peak_bytes())
    }

    /// Make the GEMM scratch hold `bytes` for first-use tuning: a fresh allocation pushed on
    /// top of the stack (its address returned for `pop_tuning_scratch`), or None when the
    /// current scratch already holds that much.
    pub(crate) fn push_tuning_scratch(&self, bytes: usize) -> Result<Option<u64>> {
        let (mut guard, _) = self.matmul_scratch(0)?;
        let Some(gemm) = guard.as_mut() else {
            return Err(Error::backend(self.name(), "cuBLASLt state missing"));
        };
        if gemm.scratch(bytes).is_some() {
            return Ok(None);
        }
        let mem = self.alloc_mem(bytes.max(MIN_MATMUL_SCRATCH))?;
        Ok(Some(gemm.push_scratch(mem, true).ptr))
    }

    /// During a graph capture, hold `mem` for the graph (see `graph_keep`); otherwise nothing.
    pub(crate) fn keep_for_capture(&self, mem: &Arc<CudaMem>) {
        let mut keep = self.graph_keep.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = keep.as_mut()
            && !list.iter().any(|m| Arc::ptr_eq(m, mem))
        {
            list.push(Arc::clone(mem));
        }
    }

    /// Free the tuner's transient scratch once the kernels that used it are done.
    pub(crate) fn pop_tuning_scratch(&self, ptr: Option<u64>) -> Result<()> {
        let Some(ptr) = ptr else { return Ok(()) };
        self.stream
            .synchronize()
            .map_err(self.drv("cuStreamSynchronize"))?;
        let mut guard = self.gemm.lock().unwrap_or_else(|e| e.into_inner());
        let mem = guard.as_mut().and_then(|g| g.remove_scratch(ptr));
        drop(guard);
        drop(mem);
        Ok(())
    }

    /// Device bytes the cuBLASLt state holds now: its workspace and every GEMM scratch grown so
    /// far (0 before the first matmul that needs it). Equals the persistent part of
    /// `workspace_bytes` after `reserve_workspace`, unless later matmuls outgrew it.
    pub fn workspace_allocated(&self) -> usize {
        let g = self.gemm.lock().unwrap_or_else(|e| e.into_inner());
        g.as_ref().map_or(0, |g| g.allocated_bytes())
    }

    /// Record the memory in use now as a candidate peak (called where transient buffers are
    /// at their largest).
    pub(crate) fn note_memory_peak(&self) {
        if let Ok(m) = self.memory_in_use() {
            self.memory_peak
                .fetch_max(m, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The peak device memory in use: the largest of the transient peaks noted so far (first-
    /// use tuning) and the memory in use now. For comparing with a plan's peak.
    pub fn memory_peak(&self) -> Result<u64> {
        let now = self.memory_in_use()?;
        Ok(now.max(self.memory_peak.load(std::sync::atomic::Ordering::Relaxed)))
    }

    /// Forget the transient peaks noted so far (a benchmark starting its next run).
    pub fn reset_memory_peak(&self) {
        self.memory_peak
            .store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// Device memory in use on this GPU, `total − free` of `cuMemGetInfo` (every process and
    /// context on the device, the CUDA context itself included): for comparing a planned
    /// peak with the measured one.
    pub fn memory_in_use(&self) -> Result<u64> {
        self.ctx
            .bind_to_thread()
            .map_err(self.drv("cuCtxSetCurrent"))?;
        let (free, total) = drv::mem_get_info().map_err(self.drv("cuMemGetInfo"))?;
        Ok(total.saturating_sub(free) as u64)
    }
}

impl Backend for CudaBackend {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn supports(&self, op: OpKind, dtype: DType) -> bool {
        use OpKind::*;
        match op {
            Matmul | Embed => DType::WEIGHT_TYPES.contains(&dtype),
            KvAppend | Copy => dtype.is_float(),
            RmsNorm | Rope | Glu | Add | AddBias => dtype == DType::F32,
            Gather => dtype.is_float(),
            Attention | AllReduce => dtype.is_float(),
            Moe => DType::WEIGHT_TYPES.contains(&dtype),
        }
    }

    fn alloc(&self, bytes: usize) -> Result<Buffer> {
        let mem = self.alloc_mem(bytes)?;
        Ok(Buffer::new(Arc::new(mem), bytes, self.info.id))
    }

    fn write(&self, dst: &Buffer, offset: usize, src: &[u8]) -> Result<()> {
        let p = self.check_range(dst, offset, src.len())?;
        if src.is_empty() {
            return Ok(());
        }
        self.ctx
            .bind_to_thread()
            .map_err(self.drv("cuCtxSetCurrent"))?;
        // SAFETY: the destination range lies inside the buffer (checked above); the pageable
        // source is staged before the call returns.
        unsafe { drv::memcpy_htod_async(p, src, self.stream.cu_stream()) }
            .map_err(self.drv("cuMemcpyHtoDAsync"))
    }

    fn read(&self, src: &Buffer, offset: usize, dst: &mut [u8]) -> Result<()> {
        let p = self.check_range(src, offset, dst.len())?;
        if dst.is_empty() {
            return Ok(());
        }
        self.ctx
            .bind_to_thread()
            .map_err(self.drv("cuCtxSetCurrent"))?;
        // SAFETY: the source range lies inside the buffer; the stream is synchronized before
        // `dst` is handed back, so the copy has landed.
        unsafe { drv::memcpy_dtoh_async(dst, p, self.stream.cu_stream()) }
            .map_err(self.drv("cuMemcpyDtoHAsync"))?;
        self.stream
            .synchronize()
            .map_err(self.drv("cuStreamSynchronize"))
    }

    /// One pitched copy (cuMemcpy2DAsync) straight into the strided host rows.
    fn read_rows(
        &self,
        src: &Buffer,
        offset: usize,
        row_bytes: usize,
        rows: usize,
        dst: &mut [u8],
        dst_pitch: usize,
    ) -> Result<()> {
        kiln_core::backend::check::rows_fit(row_bytes, rows, dst.len(), dst_pitch)?;
        let p = self.check_range(src, offset, row_bytes * rows)?;
        if rows == 0 || row_bytes == 0 {
            return Ok(());
        }
        use cudarc::driver::sys;
        let c = sys::CUDA_MEMCPY2D {
            srcXInBytes: 0,
            srcY: 0,
            srcMemoryType: sys::CUmemorytype::CU_MEMORYTYPE_DEVICE,
            srcHost: std::ptr::null(),
            srcDevice: p,
            srcArray: std::ptr::null_mut(),
            srcPitch: row_bytes,
            dstXInBytes: 0,
            dstY: 0,
            dstMemoryType: sys::CUmemorytype::CU_MEMORYTYPE_HOST,
            dstHost: dst.as_mut_ptr().cast(),
            dstDevice: 0,
            dstArray: std::ptr::null_mut(),
            dstPitch: dst_pitch.max(row_bytes),
            WidthInBytes: row_bytes,
            Height: rows,
        };
        self.ctx
            .bind_to_thread()
            .map_err(self.drv("cuCtxSetCurrent"))?;
        // SAFETY: the source (rows · row_bytes contiguous bytes) lies inside the buffer
        // (check_range); the destination rows lie inside `dst` (rows_fit: (rows − 1) · pitch +
        // row_bytes ≤ dst.len()); the stream is synchronized before `dst` is handed back.
        unsafe { sys::cuMemcpy2DAsync_v2(&c, self.stream.cu_stream()) }
            .result()
            .map_err(self.drv("cuMemcpy2DAsync"))?;
        self.stream
            .synchronize()
            .map_err(self.drv("cuStreamSynchronize"))
    }

    fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(self.drv("cuStreamSynchronize"))
    }

    unsafe fn pin_host(&self, buf: &mut [u8]) -> Result<bool> {
        use cudarc::driver::sys;
        if buf.is_empty() {
            return Ok(false);
        }
        self.ctx
            .bind_to_thread()
            .map_err(self.drv("cuCtxSetCurrent"))?;
        // SAFETY: `buf` is a live host allocation of buf.len() bytes; the caller keeps it at
        // this address until unpin_host (trait contract). PORTABLE: pinned for every context,
        // so the ranks of a group may all read into it.
        let r = unsafe {
            sys::cuMemHostRegister_v2(
                buf.as_mut_ptr().cast(),
                buf.len(),
                sys::CU_MEMHOSTREGISTER_PORTABLE,
            )
        };
        match r {
            sys::CUresult::CUDA_SUCCESS => Ok(true),
            sys::CUresult::CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED => Ok(false),
            e => Err(CudaError::driver(
                self.name(),
                "cuMemHostRegister",
                cudarc::driver::DriverError(e),
            )
            .into()),
        }
    }

    unsafe fn unpin_host(&self, buf: &mut [u8]) -> Result<()> {
        use cudarc::driver::sys;
        if buf.is_empty() {
            return Ok(());
        }
        self.ctx
            .bind_to_thread()
            .map_err(self.drv("cuCtxSetCurrent"))?;
        // SAFETY: `buf` is the range this backend registered (trait contract); no copy into it
        // is in flight (reads synchronize before returning).
        unsafe { sys::cuMemHostUnregister(buf.as_mut_ptr().cast()) }
            .result()
            .map_err(self.drv("cuMemHostUnregister"))
    }

    fn prepare_weight(&self, w: &HostTensor<'_>) -> Result<Weight> {
        self.op_prepare_weight(w)
    }

    fn weight_bytes(&self, dtype: DType, shape: &Shape) -> Result<usize> {
        self.prepared_bytes(dtype, shape)
    }

    /// The cuBLASLt workspace, the GEMM scratch at its largest request (at least 1 MiB; or the
    /// persistent scratch the backend already holds, if larger: it is never shrunk, so a
    /// later runtime in the same process keeps it) and, when some use is not tuned yet, the
    /// tuner's transient buffers.
    fn workspace_bytes(&self, matmuls: &[MatmulUse]) -> usize {
        let ws = self.matmul_workspace(matmuls);
        let held = {
            let g = self.gemm.lock().unwrap_or_else(|e| e.into_inner());
            g.as_ref().map_or(0, |g| g.persistent_scratch_bytes())
        };
        if !ws.used && held == 0 {
            return 0;
        }
        self.cublaslt_workspace_bytes() + ws.scratch.max(MIN_MATMUL_SCRATCH).max(held) + ws.tuning
    }

    /// Create the cuBLASLt state and the GEMM scratch at its largest request now, so no matmul
    /// grows it (a grown scratch keeps the smaller ones alive for captured graphs).
    fn reserve_workspace(&self, matmuls: &[MatmulUse]) -> Result<()> {
        let ws = self.matmul_workspace(matmuls);
        if ws.used {
            drop(self.matmul_scratch(ws.scratch)?);
        }
        Ok(())
    }

    fn matmul(&self, x: View<'_>, w: &Weight, out: ViewMut<'_>) -> Result<()> {
        self.op_matmul(x, w, out)
    }

    fn matmul_many(&self, x: View<'_>, parts: &[(&Weight, ViewMut<'_>)]) -> Result<()> {
        self.op_matmul_many(x, parts)
    }

    fn matmul_glu(
        &self,
        x: View<'_>,
        gate: &Weight,
        up: &Weight,
        act: Activation,
        g_out: ViewMut<'_>,
        u_out: ViewMut<'_>,
        out: ViewMut<'_>,
    ) -> Result<()> {
        self.op_matmul_glu(x, gate, up, act, g_out, u_out, out)
    }

    fn attention_scratch_bytes(&self, p: &AttnParams, _n_tokens: usize, b: &SeqBatch<'_>) -> usize {
        self.op_attention_scratch_bytes(p, b)
    }

    fn attention(
        &self,
        q: View<'_>,
        kv: &PagedKv<'_>,
        batch: &SeqBatch<'_>,
        p: &AttnParams,
        scratch: Option<ViewMut<'_>>,
        out: ViewMut<'_>,
    ) -> Result<()> {
        self.op_attention(q, kv, batch, p, scratch, out)
    }

    fn kv_append(&self, k: View<'_>, v: View<'_>, kv: &PagedKv<'_>, slots: View<'_>) -> Result<()> {
        self.op_kv_append(k, v, kv, slots)
    }

    fn rms_norm(&self, x: View<'_>, w: View<'_>, eps: f32, out: ViewMut<'_>) -> Result<()> {
        self.op_rms_norm(x, w, eps, out)
    }

    fn add_rms_norm(
        &self,
        a: View<'_>,
        b: View<'_>,
        w: View<'_>,
        eps: f32,
        sum: ViewMut<'_>,
        out: ViewMut<'_>,
    ) -> Result<()> {
        self.op_add_rms_norm(a, b, w, eps, sum, out)
    }

    fn rope(
        &self,
        x: ViewMut<'_>,
        positions: View<'_>,
        inv_freq: View<'_>,
        p: &RopeParams,
    ) -> Result<()> {
        self.op_rope(x, positions, inv_freq, p)
    }

    fn rope_kv_append(
        &self,
        q: ViewMut<'_>,
        k: ViewMut<'_>,
        v: View<'_>,
        positions: View<'_>,
        inv_freq: View<'_>,
        p: &RopeParams,
        kv: &PagedKv<'_>,
        slots: View<'_>,
    ) -> Result<()> {
        self.op_rope_kv_append(q, k, v, positions, inv_freq, p, kv, slots)
    }

    fn glu(&self, gate: View<'_>, up: View<'_>, act: Activation, out: ViewMut<'_>) -> Result<()> {
        self.op_glu(gate, up, act, out)
    }

    fn add(&self, a: View<'_>, b: View<'_>, out: ViewMut<'_>) -> Result<()> {
        self.op_add(a, b, out)
    }

    fn add_bias(&self, x: View<'_>, bias: View<'_>, out: ViewMut<'_>) -> Result<()> {
        self.op_add_bias(x, bias, out)
    }

    fn gather(&self, x: View<'_>, ids: View<'_>, out: ViewMut<'_>) -> Result<()> {
        self.op_gather(x, ids, out)
    }

    fn embed(&self, ids: View<'_>, table: &Weight, scale: f32, out: ViewMut<'_>) -> Result<()> {
        self.op_embed(ids, table, scale, out)
    }

    fn moe_scratch_bytes(&self, n_tokens: usize, ex: &MoeExperts<'_>, r: &MoeRouting) -> usize {
        self.op_moe_scratch_bytes(n_tokens, ex, r)
    }

    fn moe(
        &self,
        x: View<'_>,
        router_logits: View<'_>,
        experts: &MoeExperts<'_>,
        r: &MoeRouting,
        scratch: Option<ViewMut<'_>>,
        out: ViewMut<'_>,
    ) -> Result<()> {
        self.op_moe(x, router_logits, experts, r, scratch, out)
    }

    fn copy(&self, src: View<'_>, dst: ViewMut<'_>) -> Result<()> {
        self.op_copy(src, dst)
    }

    fn capture(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<Option<Box<dyn Replay>>> {
        crate::graph::capture(self, f)
    }
}
