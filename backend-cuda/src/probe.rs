//! Device discovery without cudarc: libcuda.so.1 is opened with `libloading` and asked for its
//! devices through five plain driver calls. cudarc panics when libcuda is absent, so nothing in
//! this crate touches cudarc before this probe has found the library and at least one device.

use std::ffi::{c_char, c_int, c_uint};
use std::sync::OnceLock;

use kiln_core::{BackendKind, Caps, DeviceId, DeviceInfo};

const LIBCUDA: &str = "libcuda.so.1";

// CUdevice_attribute values (cuda.h).
const ATTR_SM_COUNT: c_int = 16;
const ATTR_CC_MAJOR: c_int = 75;
const ATTR_CC_MINOR: c_int = 76;
const ATTR_SMEM_OPTIN: c_int = 97;

type CuInit = unsafe extern "C" fn(c_uint) -> c_int;
type CuDriverGetVersion = unsafe extern "C" fn(*mut c_int) -> c_int;
type CuDeviceGetCount = unsafe extern "C" fn(*mut c_int) -> c_int;
type CuDeviceGet = unsafe extern "C" fn(*mut c_int, c_int) -> c_int;
type CuDeviceGetName = unsafe extern "C" fn(*mut c_char, c_int, c_int) -> c_int;
type CuDeviceTotalMem = unsafe extern "C" fn(*mut usize, c_int) -> c_int;
type CuDeviceGetAttribute = unsafe extern "C" fn(*mut c_int, c_int, c_int) -> c_int;

/// What the probe saw: the devices, or why there are none.
pub(crate) type ProbeResult = Result<Vec<DeviceInfo>, String>;

/// Probe once per process (the driver's answer does not change while we run).
pub(crate) fn devices() -> &'static ProbeResult {
    static PROBE: OnceLock<ProbeResult> = OnceLock::new();
    PROBE.get_or_init(|| {
        std::panic::catch_unwind(probe_libcuda)
            .unwrap_or_else(|_| Err("the CUDA driver probe panicked".into()))
    })
}

fn probe_libcuda() -> ProbeResult {
    // SAFETY: loading libcuda runs its initialisers, which are designed to be loaded into any
    // process; we keep the library loaded for the life of the process (cudarc loads it again).
    let lib = unsafe { libloading::Library::new(LIBCUDA) }
        .map_err(|e| format!("{LIBCUDA} not found ({e})"))?;
    // SAFETY: the symbol types match the CUDA driver API prototypes in cuda.h.
    let f = unsafe {
        (
            sym::<CuInit>(&lib, b"cuInit\0")?,
            sym::<CuDriverGetVersion>(&lib, b"cuDriverGetVersion\0")?,
            sym::<CuDeviceGetCount>(&lib, b"cuDeviceGetCount\0")?,
            sym::<CuDeviceGet>(&lib, b"cuDeviceGet\0")?,
            sym::<CuDeviceGetName>(&lib, b"cuDeviceGetName\0")?,
            sym::<CuDeviceTotalMem>(&lib, b"cuDeviceTotalMem_v2\0")?,
            sym::<CuDeviceGetAttribute>(&lib, b"cuDeviceGetAttribute\0")?,
        )
    };
    let (init, version, count, get, name, mem, attr) = f;
    // SAFETY: plain driver calls with valid out-pointers to locals.
    unsafe {
        let rc = init(0);
        if rc != 0 {
            return Err(format!(
                "cuInit failed with CUresult {rc} (no usable driver or GPU)"
            ));
        }
        let mut v: c_int = 0;
        let driver = if version(&mut v) == 0 {
            format!("CUDA {}.{}", v / 1000, (v % 1000) / 10)
        } else {
            "CUDA (unknown version)".to_string()
        };
        let mut n: c_int = 0;
        let rc = count(&mut n);
        if rc != 0 {
            return Err(format!("cuDeviceGetCount failed with CUresult {rc}"));
        }
        if n <= 0 {
            return Err("libcuda is present but reports no CUDA device".into());
        }
        let mut out = Vec::new();
        for i in 0..n {
            let mut dev: c_int = 0;
            if get(&mut dev, i) != 0 {
                continue;
            }
            let mut buf = [0 as c_char; 256];
            let dev_name = if name(buf.as_mut_ptr(), buf.len() as c_int, dev) == 0 {
                std::ffi::CStr::from_ptr(buf.as_ptr())
                    .to_string_lossy()
                    .into_owned()
            } else {
                format!("CUDA device {i}")
            };
            let mut bytes: usize = 0;
            if mem(&mut bytes, dev) != 0 {
                bytes = 0;
            }
            let a = |which: c_int| {
                let mut x: c_int = 0;
                if attr(&mut x, which, dev) == 0 {
                    x.max(0) as u32
                } else {
                    0
                }
            };
            let cc = (a(ATTR_CC_MAJOR), a(ATTR_CC_MINOR));
            out.push(DeviceInfo {
                id: DeviceId::new(BackendKind::Cuda, i as u32),
                name: dev_name,
                vendor: "NVIDIA".into(),
                memory_bytes: bytes as u64,
                driver: driver.clone(),
                caps: Caps {
                    f16: true,
                    bf16: cc.0 >= 8,
                    subgroups: true,
                    max_buffer_bytes: bytes as u64,
                    max_binding_bytes: bytes as u64,
                    shared_memory_bytes: a(ATTR_SMEM_OPTIN) as u64,
                    compute_capability: Some(cc),
                    compute_units: a(ATTR_SM_COUNT),
                    tensor_cores: true,
                },
            });
        }
        if out.is_empty() {
            return Err("no CUDA device could be opened".into());
        }
        // Keep libcuda loaded: unloading a driver library mid-process is never useful.
        std::mem::forget(lib);
        Ok(out)
    }
}

/// # Safety
/// `T` must be the function pointer type of the symbol `name` (NUL-terminated).
unsafe fn sym<T: Copy>(lib: &libloading::Library, name: &[u8]) -> Result<T, String> {
    // SAFETY: forwarded to the caller: T matches the symbol's prototype.
    unsafe { lib.get::<T>(name) }
        .map(|s| *s)
        .map_err(|e| format!("{LIBCUDA} lacks {}: {e}", String::from_utf8_lossy(name)))
}
