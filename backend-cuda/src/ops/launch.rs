//! Kernel launches as programmatic dependents (PDL, sm_90+): `cuLaunchKernelEx` with programmatic
//! stream serialization, so a kernel's grid may start while the previous kernel on its stream
//! still runs. Every kernel launched this way calls `pdl_wait` (kernels/common.cuh) before it
//! reads anything an earlier kernel wrote or writes anything an earlier kernel may read; most
//! call `pdl_enter` (wait, then let the next kernel launch) first thing. In a captured decode step
//! this turns each kernel boundary into a programmatic edge: the next kernel's launch overlaps the
//! current one, which is most of a small kernel's cost at batch 1. Before sm_90 a plain launch.
//! `KILN_PDL=0` turns it off for the whole process (plain launches everywhere: for measuring
//! what it gains; the kernels' `griddepcontrol` instructions are then no-ops).

use std::ffi::c_void;

use cudarc::driver::{CudaContext, CudaFunction, CudaStream, DriverError, LaunchConfig, sys};
use kiln_core::Result;

use crate::device::CudaBackend;

/// A kernel argument: a pointer to a live value of the parameter's exact type.
#[derive(Clone, Copy)]
pub(crate) enum Arg<'a> {
    U64(&'a u64),
    I64(&'a i64),
    I32(&'a i32),
    F32(&'a f32),
    /// A struct passed by value (`#[repr(C)]`, laid out like the kernel's parameter).
    Raw(*const c_void, std::marker::PhantomData<&'a ()>),
}

impl<'a> Arg<'a> {
    /// A `#[repr(C)]` struct parameter.
    pub(crate) fn raw<T>(v: &'a T) -> Arg<'a> {
        Arg::Raw(v as *const T as *const c_void, std::marker::PhantomData)
    }
    fn ptr(self) -> *mut c_void {
        match self {
            Arg::U64(v) => v as *const u64 as *mut c_void,
            Arg::I64(v) => v as *const i64 as *mut c_void,
            Arg::I32(v) => v as *const i32 as *mut c_void,
            Arg::F32(v) => v as *const f32 as *mut c_void,
            Arg::Raw(p, _) => p as *mut c_void,
        }
    }
}

/// Launches `f` on `stream` (of `ctx`), as a programmatic dependent when `pdl`.
///
/// # Safety
/// `args` must match `f`'s parameters in number, order and type, and the launch must keep every
/// memory access of the kernel inside the buffers those arguments describe. With `pdl`, the
/// kernel must `pdl_wait` before touching memory an earlier kernel uses (module doc).
pub(crate) unsafe fn launch_ex(
    ctx: &CudaContext,
    stream: &CudaStream,
    pdl: bool,
    f: &CudaFunction,
    cfg: LaunchConfig,
    args: &[Arg<'_>],
) -> std::result::Result<(), DriverError> {
    // SAFETY: the caller's contract, forwarded; no cluster.
    unsafe { launch_cluster(ctx, stream, pdl, 1, f, cfg, args) }
}

/// The launch attributes of a call: programmatic serialization when `pdl`, a `(cluster, 1, 1)`
/// thread-block cluster when `cluster > 1` (sm_90+; grid x must be a multiple of it).
fn attrs(pdl: bool, cluster: u32) -> ([sys::CUlaunchAttribute; 2], u32) {
    // SAFETY: an all-zero launch attribute value is valid plain data (a C union of ints).
    let zero: sys::CUlaunchAttributeValue = unsafe { std::mem::zeroed() };
    let mut a = [
        sys::CUlaunchAttribute {
            id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
            pad: [0; 4],
            value: zero,
        },
        sys::CUlaunchAttribute {
            id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION,
            pad: [0; 4],
            value: zero,
        },
    ];
    let mut n = 0;
    if pdl {
        a[0].value.programmaticStreamSerializationAllowed = 1;
        n = 1;
    }
    if cluster > 1 {
        let mut c = a[1];
        c.value.clusterDim.x = cluster;
        c.value.clusterDim.y = 1;
        c.value.clusterDim.z = 1;
        a[n as usize] = c;
        n += 1;
    }
    (a, n)
}

/// The driver's launch configuration of `cfg` on `stream` with `attrs` (its first `n`).
fn launch_config(
    stream: &CudaStream,
    cfg: &LaunchConfig,
    attrs: &mut [sys::CUlaunchAttribute; 2],
    n: u32,
) -> sys::CUlaunchConfig {
    sys::CUlaunchConfig {
        gridDimX: cfg.grid_dim.0,
        gridDimY: cfg.grid_dim.1,
        gridDimZ: cfg.grid_dim.2,
        blockDimX: cfg.block_dim.0,
        blockDimY: cfg.block_dim.1,
        blockDimZ: cfg.block_dim.2,
        sharedMemBytes: cfg.shared_mem_bytes,
        hStream: stream.cu_stream(),
        attrs: attrs.as_mut_ptr(),
        numAttrs: n,
    }
}

/// How many `(cluster, 1, 1)` clusters of `f` under `cfg` the device can hold at once (0: such
/// a launch cannot run; `cuOccupancyMaxActiveClusters`).
pub(crate) fn max_active_clusters(
    ctx: &CudaContext,
    stream: &CudaStream,
    f: &CudaFunction,
    cfg: LaunchConfig,
    cluster: u32,
) -> std::result::Result<i32, DriverError> {
    let (mut a, n) = attrs(false, cluster);
    let lc = launch_config(stream, &cfg, &mut a, n);
    ctx.bind_to_thread()?;
    let mut count: std::ffi::c_int = 0;
    // SAFETY: `lc` and its attributes outlive the call; `count` is a valid out-pointer; the
    // query launches nothing.
    unsafe { sys::cuOccupancyMaxActiveClusters(&mut count, f.cu_function(), &lc) }.result()?;
    Ok(count)
}

/// [`launch_ex`] with a `(cluster, 1, 1)` thread-block cluster when `cluster > 1`.
///
/// # Safety
/// As [`launch_ex`]; with a cluster, grid x is a multiple of `cluster`, the device is sm_90+ and
/// the function allows that cluster size (sizes above 8 need the non-portable attribute).
pub(crate) unsafe fn launch_cluster(
    ctx: &CudaContext,
    stream: &CudaStream,
    pdl: bool,
    cluster: u32,
    f: &CudaFunction,
    cfg: LaunchConfig,
    args: &[Arg<'_>],
) -> std::result::Result<(), DriverError> {
    let mut params: Vec<*mut c_void> = args.iter().map(|a| a.ptr()).collect();
    let (mut a, n) = attrs(pdl, cluster);
    let lc = launch_config(stream, &cfg, &mut a, n);
    ctx.bind_to_thread()?;
    // SAFETY: params point at live values of the caller matching the kernel's signature (the
    // caller's contract); the config's stream belongs to `ctx`.
    unsafe {
        sys::cuLaunchKernelEx(
            &lc,
            f.cu_function(),
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    }
    .result()
}

/// Whether programmatic dependent launches are allowed in this process (`KILN_PDL`, read once;
/// anything but `0` or unset leaves them on).
pub(crate) fn pdl_allowed() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("KILN_PDL").map_or(true, |v| v.trim() != "0"))
}

impl CudaBackend {
    /// Whether launches on this device are programmatic dependents (sm_90+, `KILN_PDL`).
    pub(crate) fn pdl(&self) -> bool {
        pdl_allowed() && self.info.caps.compute_capability.is_some_and(|c| c.0 >= 9)
    }

    /// Let `f` take `smem` bytes of dynamic shared memory (nothing to do up to the 48 KiB
    /// default). The attribute is set to the device's whole opt-in limit, the same value on
    /// every call: setting it to each call's own size let a concurrent caller with a smaller
    /// size lower it between another thread's set and launch (CUDA_ERROR_INVALID_VALUE, seen
    /// with mp4k under parallel tests).
    pub(crate) fn allow_smem(&self, f: &CudaFunction, smem: usize) -> Result<()> {
        if smem <= 48 << 10 {
            return Ok(());
        }
        self.ctx
            .bind_to_thread()
            .map_err(self.drv("cuCtxSetCurrent"))?;
        // The dynamic limit is what the opt-in limit leaves beside the function's static
        // shared memory (a larger value is CUDA_ERROR_INVALID_VALUE).
        let stat = f
            .get_attribute(sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)
            .map_err(self.drv("cuFuncGetAttribute(static shared memory)"))?
            .max(0) as usize;
        let max = match self.info.caps.shared_memory_bytes {
            0 => smem,
            n => (n as usize).saturating_sub(stat),
        };
        if smem > max {
            return Err(kiln_core::Error::Invalid(format!(
                "{}: a kernel asks for {smem} bytes of dynamic shared memory beside {stat} static, \
                 the device allows {} in all",
                self.info.id, self.info.caps.shared_memory_bytes
            )));
        }
        f.set_attribute(
            sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            max as i32,
        )
        .map_err(self.drv("cuFuncSetAttribute(max dynamic shared memory)"))
    }

    /// Launches `f` with `args` on this backend's stream as a programmatic dependent of the
    /// previous kernel (sm_90+; module doc).
    ///
    /// # Safety
    /// As [`launch_ex`]: `args` match `f`'s parameters, every access stays inside the buffers
    /// they describe, and the kernel waits (`pdl_wait`) before touching earlier kernels' memory.
    pub(crate) unsafe fn launch_pdl(
        &self,
        f: &CudaFunction,
        what: &'static str,
        cfg: LaunchConfig,
        args: &[Arg<'_>],
    ) -> Result<()> {
        // SAFETY: the caller's contract, forwarded.
        unsafe { launch_ex(&self.ctx, &self.stream, self.pdl(), f, cfg, args) }
            .map_err(self.drv(what))
    }
}
