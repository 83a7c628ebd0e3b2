//! `CudaComm`: all-reduce (sum, in place) across a group of CUDA devices, implementing
//! `kiln_core::Collective`: a one-shot peer-to-peer kernel for small f32 messages
//! (`comm_p2p.rs`, kernels/allreduce.cu) when every pair of members has peer access, NCCL for
//! the rest.
//!
//! - Dispatch: f32 messages of at most `p2p_max_bytes()` take the P2P path (default
//!   `P2P_DEFAULT_MAX_BYTES`, the crossover measured against NCCL on the GPU machine; env
//!   `KILN_P2P_MAX_BYTES` at group creation overrides it, 0 turns P2P off); larger ones, f16/bf16,
//!   and groups without peer access use NCCL. Both are bit-identical on every rank.
//! - One communicator per device, created together by `ncclCommInitAll` over the devices'
//!   ordinals (one process drives the whole group).
//! - One stream per device: each member's `CudaBackend` stream. An all-reduce is one NCCL group
//!   call (`ncclGroupStart`, one in-place `ncclAllReduce` per device on its stream,
//!   `ncclGroupEnd`), so it is ordered after the ops that wrote the buffers and before the ops
//!   that read them, with no host synchronization; `read`/`synchronize` on a member wait for it.
//! - NVLink multicast stays off: `NCCL_NVLS_ENABLE=0` is put into the process environment before
//!   the first communicator is created unless the variable is already set (to anything).
//! - libnccl.so.2 is probed first (cudarc panics when a library is missing); every NCCL call runs
//!   under `guard`, so a missing symbol is an error, not a panic.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};

use cudarc::driver::{CudaStream, DevicePtr};
use cudarc::nccl::{result as nccl, sys as nccl_sys};
use kiln_core::backend::check;
use kiln_core::{
    Backend, BackendKind, Collective, DType, DeviceId, Error, OpKind, ResidualNorm, Result, View,
    ViewMut,
};

use crate::buffer::CudaMem;
use crate::comm_p2p::{NORM_MAX_DIM, P2P_STAGING_BYTES, P2p};
use crate::device::CudaBackend;
use crate::error::{CudaError, guard};

const OP: OpKind = OpKind::AllReduce;

/// The largest f32 message (bytes) the P2P path takes by default: all it can take. Measured on
/// 2× H200 (tests/p2p.rs, BENCHMARKS.md 2026-11-22 P2P entry): P2P is faster than NCCL at every
/// size from 4 KiB to 4 MiB, eager and in graphs, so the crossover lies above the staging size.
pub const P2P_DEFAULT_MAX_BYTES: usize = P2P_STAGING_BYTES;

struct Member {
    id: DeviceId,
    ordinal: usize,
    stream: Arc<CudaStream>,
    comm: nccl_sys::ncclComm_t,
}

/// An all-reduce group over CUDA devices: NCCL communicators plus, where peer access allows,
/// the P2P path (see the module docs).
pub struct CudaComm {
    members: Vec<Member>,
    /// The P2P all-reduce, or why there is none.
    p2p: std::result::Result<P2p, String>,
    /// Largest f32 message (bytes) sent through `p2p` (0: never).
    p2p_max: AtomicUsize,
    /// Serializes the group calls (a communicator must not be used by two threads at once).
    lock: Mutex<()>,
    /// Device bytes the group holds per member, measured at creation (`warm_up`).
    held: Vec<u64>,
}

/// Device memory in use on `stream`'s device (cuMemGetInfo: total − free), after a context
/// synchronize: memory freed to the stream-ordered pool is released at a synchronization, and
/// must not be counted on one side of a before/after difference only.
fn used_bytes(stream: &CudaStream) -> Result<u64> {
    let ctx = stream.context();
    ctx.bind_to_thread()
        .map_err(|e| Error::from(CudaError::driver("all-reduce", "cuCtxSetCurrent", e)))?;
    ctx.synchronize()
        .map_err(|e| Error::from(CudaError::driver("all-reduce", "cuCtxSynchronize", e)))?;
    let (free, total) = cudarc::driver::result::mem_get_info()
        .map_err(|e| Error::from(CudaError::driver("all-reduce", "cuMemGetInfo", e)))?;
    Ok(total.saturating_sub(free) as u64)
}

// SAFETY: the raw communicators are only used inside `all_reduce_sum` while `lock` is held, and
// in `drop` (exclusive access); NCCL communicators may be used from any thread.
unsafe impl Send for CudaComm {}
// SAFETY: as above: every shared use of the communicators is serialized by `lock`.
unsafe impl Sync for CudaComm {}

fn nccl_err(call: &'static str, e: nccl::NcclError) -> Error {
    CudaError::driver("nccl", call, e.0).into()
}

/// Set NCCL_NVLS_ENABLE=0 once, before any communicator exists, unless the user set it.
fn nvls_off() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("NCCL_NVLS_ENABLE").is_none() {
            // SAFETY: runs once, before this process creates any NCCL communicator (NCCL reads
            // the variable at init); kiln reads or writes no other environment variable from
            // another thread while a collective group is being created.
            unsafe { std::env::set_var("NCCL_NVLS_ENABLE", "0") };
        }
    });
}

impl CudaComm {
    /// A communicator group over `members` (CUDA backends of distinct devices, in rank order).
    /// Works on the `dyn Backend`s a runtime holds: each member's stream is found through a
    /// buffer it allocates (a `CudaMem` knows its stream).
    pub fn new(members: Vec<Arc<dyn Backend>>) -> Result<CudaComm> {
        let mut streams = Vec::with_capacity(members.len());
        for m in &members {
            if m.id().kind != BackendKind::Cuda {
                return Err(Error::Invalid(format!(
                    "NCCL all-reduce: {} is not a CUDA device",
                    m.id()
                )));
            }
            let probe = m.alloc(1)?;
            let mem = probe.downcast::<CudaMem>().ok_or_else(|| {
                Error::Invalid(format!(
                    "NCCL all-reduce: {} is not a kiln-cuda backend",
                    m.id()
                ))
            })?;
            streams.push((m.id(), mem.slice.ordinal(), mem.slice.stream().clone()));
        }
        Self::init(streams)
    }

    /// A communicator group over CUDA backends held as their concrete type.
    pub fn from_cuda(members: &[Arc<CudaBackend>]) -> Result<CudaComm> {
        let streams = members
            .iter()
            .map(|b| (b.info.id, b.ctx.ordinal(), b.stream.clone()))
            .collect();
        Self::init(streams)
    }

    fn init(streams: Vec<(DeviceId, usize, Arc<CudaStream>)>) -> Result<CudaComm> {
        if streams.is_empty() {
            return Err(Error::Invalid("all-reduce group has no devices".into()));
        }
        for (i, a) in streams.iter().enumerate() {
            if streams[..i].iter().any(|b| b.1 == a.1) {
                return Err(Error::Invalid(format!(
                    "NCCL all-reduce: device {} appears twice in the group",
                    a.0
                )));
            }
        }
        // SAFETY: only dlopen()s candidate library names; no symbol is called.
        let present = guard("NCCL probe", || unsafe { nccl_sys::is_culib_present() })?;
        if !present {
            return Err(CudaError::LibraryMissing {
                lib: "libnccl",
                why: "libnccl.so.2 is not on the loader path".into(),
            }
            .into());
        }
        nvls_off();
        let before = streams
            .iter()
            .map(|s| used_bytes(&s.2))
            .collect::<Result<Vec<_>>>()?;
        let n = streams.len();
        let ordinals: Vec<i32> = streams.iter().map(|s| s.1 as i32).collect();
        let mut comms: Vec<nccl_sys::ncclComm_t> = vec![std::ptr::null_mut(); n];
        guard("ncclCommInitAll", || {
            // SAFETY: `comms` has room for n communicators and `ordinals` holds n distinct
            // device ordinals (checked above).
            unsafe { nccl::comm_init_all(comms.as_mut_ptr(), n as i32, ordinals.as_ptr()) }
        })?
        .map_err(|e| nccl_err("ncclCommInitAll", e))?;
        let members: Vec<Member> = streams
            .into_iter()
            .zip(comms)
            .map(|((id, ordinal, stream), comm)| Member {
                id,
                ordinal,
                stream,
                comm,
            })
            .collect();
        let p2p = P2p::new(
            &members
                .iter()
                .map(|m: &Member| (m.id, m.stream.clone()))
                .collect::<Vec<_>>(),
        )?;
        let max = match (&p2p, p2p_env()?) {
            (Err(_), _) => 0,
            (Ok(_), Some(b)) => b.min(P2P_STAGING_BYTES),
            (Ok(_), None) => P2P_DEFAULT_MAX_BYTES,
        };
        crate::ops::matmul_q::note_grouped(&members.iter().map(|m| m.ordinal).collect::<Vec<_>>());
        let mut comm = CudaComm {
            members,
            p2p,
            p2p_max: AtomicUsize::new(max),
            lock: Mutex::new(()),
            held: Vec::new(),
        };
        comm.held = comm.warm_up(&before)?;
        Ok(comm)
    }

    /// One NCCL all-reduce larger than the P2P staging (NCCL connects its channels and
    /// allocates their buffers lazily, at the first collective) and one P2P call, on scratch
    /// buffers freed again; then each member's device memory in use against `before` (taken
    /// before the communicators existed): the bytes the group holds per device.
    fn warm_up(&self, before: &[u64]) -> Result<Vec<u64>> {
        let count = 2 * P2P_STAGING_BYTES / 4;
        {
            let mut bufs = Vec::with_capacity(self.members.len());
            for m in &self.members {
                let b = m.stream.alloc_zeros::<f32>(count).map_err(|e| {
                    Error::from(CudaError::driver(
                        "all-reduce warm-up",
                        "cuMemAllocAsync",
                        e,
                    ))
                })?;
                bufs.push(b);
            }
            let ptrs: Vec<u64> = bufs
                .iter()
                .zip(&self.members)
                .map(|(b, m)| b.device_ptr(&m.stream).0)
                .collect();
            let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.nccl(&ptrs, count, DType::F32)?;
            if let Ok(p2p) = &self.p2p {
                p2p.all_reduce_f32(&ptrs, 1024)?;
            }
            for m in &self.members {
                m.stream.synchronize().map_err(|e| {
                    Error::from(CudaError::driver(
                        "all-reduce warm-up",
                        "cuStreamSynchronize",
                        e,
                    ))
                })?;
            }
        }
        self.members
            .iter()
            .zip(before)
            .map(|(m, b)| {
                m.stream.synchronize().map_err(|e| {
                    Error::from(CudaError::driver(
                        "all-reduce warm-up",
                        "cuStreamSynchronize",
                        e,
                    ))
                })?;
                Ok(used_bytes(&m.stream)?.saturating_sub(*b))
            })
            .collect()
    }

    /// The largest f32 message (bytes) `all_reduce_sum` sends through the P2P kernel (0 when
    /// the group has no P2P path or it was turned off).
    pub fn p2p_max_bytes(&self) -> usize {
        self.p2p_max.load(Ordering::Relaxed)
    }

    /// Change the P2P threshold (benchmarks, tests). Refused above the staging size, or above 0
    /// when the group has no P2P path.
    pub fn set_p2p_max_bytes(&self, bytes: usize) -> Result<()> {
        if bytes > 0 {
            if let Err(why) = &self.p2p {
                return Err(Error::Invalid(format!("P2P all-reduce unavailable: {why}")));
            }
            if bytes > P2P_STAGING_BYTES {
                return Err(Error::Invalid(format!(
                    "P2P all-reduce threshold {bytes} bytes exceeds the staging buffer ({P2P_STAGING_BYTES} bytes)"
                )));
            }
        }
        self.p2p_max.store(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Why the group has no P2P path (`None` when it has one).
    pub fn p2p_unavailable(&self) -> Option<&str> {
        self.p2p.as_ref().err().map(|s| s.as_str())
    }

    /// All-reduce through NCCL whatever the size (what `all_reduce_sum` does above the P2P
    /// threshold).
    pub fn all_reduce_sum_nccl(&self, bufs: &[ViewMut<'_>]) -> Result<()> {
        let (ptrs, count, dtype) = self.resolve(bufs)?;
        if count == 0 {
            return Ok(());
        }
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.nccl(&ptrs, count, dtype)
    }

    /// All-reduce through the P2P kernel (f32, at most `P2P_STAGING_BYTES`); an error when the
    /// group has no P2P path.
    pub fn all_reduce_sum_p2p(&self, bufs: &[ViewMut<'_>]) -> Result<()> {
        let (ptrs, count, dtype) = self.resolve(bufs)?;
        let p2p = self
            .p2p
            .as_ref()
            .map_err(|why| Error::Invalid(format!("P2P all-reduce unavailable: {why}")))?;
        if dtype != DType::F32 || count * 4 > P2P_STAGING_BYTES {
            return Err(Error::shape(
                OP,
                format!(
                    "P2P all-reduce takes f32 of at most {P2P_STAGING_BYTES} bytes, got {count} {dtype}"
                ),
            ));
        }
        if count == 0 {
            return Ok(());
        }
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        p2p.all_reduce_f32(&ptrs, count)
    }

    /// NCCL's version (e.g. 22703 for 2.27.3), for reports.
    pub fn nccl_version() -> Result<i32> {
        guard("ncclGetVersion", nccl::get_nccl_version)?.map_err(|e| nccl_err("ncclGetVersion", e))
    }
}

/// `KILN_P2P_MAX_BYTES` (a byte count), if set.
fn p2p_env() -> Result<Option<usize>> {
    match std::env::var("KILN_P2P_MAX_BYTES") {
        Err(_) => Ok(None),
        Ok(v) => v.trim().parse::<usize>().map(Some).map_err(|_| {
            Error::Invalid(format!(
                "KILN_P2P_MAX_BYTES={v:?}: expected a byte count (0 turns the P2P all-reduce off)"
            ))
        }),
    }
}

impl CudaComm {
    /// Check the group's buffers: one per member in rank order, same shape and dtype
    /// (f32/f16/bf16), allocated by kiln-cuda on the member's device. Returns their device
    /// addresses, the element count and the dtype.
    fn resolve(&self, bufs: &[ViewMut<'_>]) -> Result<(Vec<u64>, usize, DType)> {
        let views: Vec<View<'_>> = bufs.iter().map(|b| b.as_view()).collect();
        self.resolve_views(&views)
    }

    /// `resolve` for input views.
    fn resolve_views(&self, bufs: &[View<'_>]) -> Result<(Vec<u64>, usize, DType)> {
        check::eq(
            OP,
            "buffers vs group devices",
            bufs.len(),
            self.members.len(),
        )?;
        let (shape, dtype) = (bufs[0].shape(), bufs[0].dtype());
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(Error::shape(
                OP,
                format!("all-reduce of {dtype} (f32/f16/bf16 only)"),
            ));
        }
        let mut ptrs = Vec::with_capacity(bufs.len());
        for (b, m) in bufs.iter().zip(&self.members) {
            check::device(OP, m.id, b.device())?;
            if b.shape() != shape || b.dtype() != dtype {
                return Err(Error::shape(
                    OP,
                    format!("{} {} vs {} {}", b.shape(), b.dtype(), shape, dtype),
                ));
            }
            let mem = b.buffer().downcast::<CudaMem>().ok_or_else(|| {
                Error::Invalid(format!(
                    "all-reduce: buffer on {} was not allocated by kiln-cuda",
                    m.id
                ))
            })?;
            if mem.slice.ordinal() != m.ordinal {
                return Err(Error::WrongDevice {
                    op: OP,
                    expected: m.id,
                    found: b.device(),
                });
            }
            ptrs.push(mem.ptr + b.offset() as u64);
        }
        Ok((ptrs, shape.numel(), dtype))
    }

    /// One NCCL group call over `ptrs` (from `resolve`); the caller holds `lock`.
    fn nccl(&self, ptrs: &[u64], count: usize, dtype: DType) -> Result<()> {
        let nccl_type = match dtype {
            DType::F32 => nccl_sys::ncclDataType_t::ncclFloat32,
            DType::F16 => nccl_sys::ncclDataType_t::ncclFloat16,
            _ => nccl_sys::ncclDataType_t::ncclBfloat16,
        };
        guard("NCCL all-reduce", || -> Result<()> {
            nccl::group_start().map_err(|e| nccl_err("ncclGroupStart", e))?;
            let mut first_err = None;
            for (p, m) in ptrs.iter().zip(&self.members) {
                // SAFETY: `p` is the device address of a view of `count` elements of `dtype` on
                // m's device (checked by `resolve`), reduced in place; the stream is m's backend
                // stream and the communicator was created for m's ordinal.
                let r = unsafe {
                    nccl::all_reduce(
                        *p as *const std::ffi::c_void,
                        *p as *mut std::ffi::c_void,
                        count,
                        nccl_type,
                        nccl_sys::ncclRedOp_t::ncclSum,
                        m.comm,
                        m.stream.cu_stream() as nccl_sys::cudaStream_t,
                    )
                };
                if let Err(e) = r {
                    first_err.get_or_insert(nccl_err("ncclAllReduce", e));
                }
            }
            // The group is always closed, even after a failed enqueue.
            let end = nccl::group_end().map_err(|e| nccl_err("ncclGroupEnd", e));
            match first_err {
                Some(e) => Err(e),
                None => end.map(|_| ()),
            }
        })?
    }
}

/// `KILN_TP_FUSE` (read once): `0` turns the fused all-reduce + residual + norm off.
fn fuse_allowed() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("KILN_TP_FUSE").map_or(true, |v| v.trim() != "0"))
}

impl Collective for CudaComm {
    fn devices(&self) -> Vec<DeviceId> {
        self.members.iter().map(|m| m.id).collect()
    }

    /// Measured when the group was created: NCCL's communicator and channel buffers (after
    /// one warm-up all-reduce) and the P2P staging, per member.
    fn device_bytes(&self) -> Vec<u64> {
        self.held.clone()
    }

    /// Fused on the P2P path (f32, at most the P2P threshold, rows of a multiple of 4 floats,
    /// 16-byte aligned operands), else declined. `KILN_TP_FUSE=0` always declines (for
    /// measuring what the fusion gains).
    fn all_reduce_add_rms_norm(&self, members: &[ResidualNorm<'_>], eps: f32) -> Result<bool> {
        let Ok(p2p) = &self.p2p else {
            return Ok(false);
        };
        if !fuse_allowed() {
            return Ok(false);
        }
        check::eq(
            OP,
            "residual operands vs group devices",
            members.len(),
            self.members.len(),
        )?;
        let Some(first) = members.first() else {
            return Ok(false);
        };
        let (shape, dim) = (first.part.shape(), first.part.shape().last());
        let rows = shape.numel() / dim.max(1);
        let fits = dim > 0
            && dim.is_multiple_of(4)
            && dim <= NORM_MAX_DIM
            && shape.numel() * 4 <= self.p2p_max_bytes()
            && members.iter().all(|m| {
                let same = [m.res, m.sum.as_view(), m.out.as_view()];
                same.iter()
                    .all(|v| v.shape() == shape && v.dtype() == DType::F32)
                    && m.part.dtype() == DType::F32
                    && m.part.shape() == shape
                    && m.w.dtype() == DType::F32
                    && m.w.numel() == dim
            });
        if !fits {
            return Ok(false);
        }
        for m in members {
            for i in [&m.part, &m.res, &m.w] {
                m.sum.check_disjoint(i)?;
                m.out.check_disjoint(i)?;
            }
            m.out.check_disjoint(&m.sum.as_view())?;
        }
        // One address per operand and rank, each checked like an all-reduce buffer.
        let mut ptrs = vec![[0u64; 5]; members.len()];
        for j in 0..5 {
            let views: Vec<View<'_>> = members
                .iter()
                .map(|m| match j {
                    0 => m.part,
                    1 => m.res,
                    2 => m.w,
                    3 => m.sum.as_view(),
                    _ => m.out.as_view(),
                })
                .collect();
            let (p, _, _) = self.resolve_views(&views)?;
            for (dst, a) in ptrs.iter_mut().zip(p) {
                dst[j] = a;
            }
        }
        if ptrs.iter().flatten().any(|a| !a.is_multiple_of(16)) {
            return Ok(false);
        }
        if rows == 0 {
            return Ok(true);
        }
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        p2p.all_reduce_add_rms_norm_f32(&ptrs, rows, dim, eps)?;
        Ok(true)
    }

    fn all_reduce_sum(&self, bufs: &[ViewMut<'_>]) -> Result<()> {
        let (ptrs, count, dtype) = self.resolve(bufs)?;
        if count == 0 {
            return Ok(());
        }
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        match &self.p2p {
            Ok(p2p) if dtype == DType::F32 && count * 4 <= self.p2p_max_bytes() => {
                p2p.all_reduce_f32(&ptrs, count)
            }
            _ => self.nccl(&ptrs, count, dtype),
        }
    }
}

impl Drop for CudaComm {
    fn drop(&mut self) {
        for m in &self.members {
            // Pending all-reduces finish before their communicator goes away.
            let _ = m.stream.synchronize();
            // SAFETY: each communicator was created once by ncclCommInitAll and is destroyed
            // once here; nothing uses it afterwards.
            let _ = guard("ncclCommDestroy", || unsafe { nccl::comm_destroy(m.comm) });
        }
    }
}
