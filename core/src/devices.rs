//! Device identities, descriptions and discovery.
//!
//! Each backend crate implements [`BackendProvider`]; [`discover`] asks every provider it is
//! given. A provider whose driver or library is missing answers `Probe::NotFound(reason)`:
//! discovery never fails and never panics because a vendor stack is absent.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::backend::Backend;
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackendKind {
    Reference,
    Cuda,
    Wgpu,
}

impl BackendKind {
    pub const ALL: [BackendKind; 3] =
        [BackendKind::Reference, BackendKind::Cuda, BackendKind::Wgpu];
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Reference => "reference",
            BackendKind::Cuda => "cuda",
            BackendKind::Wgpu => "wgpu",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        BackendKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "unknown backend '{s}' (expected reference, cuda or wgpu)"
                ))
            })
    }
}

/// `cuda:0`, `wgpu:1`, `reference:0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId {
    pub kind: BackendKind,
    pub index: u32,
}

impl DeviceId {
    pub const fn new(kind: BackendKind, index: u32) -> DeviceId {
        DeviceId { kind, index }
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.index)
    }
}

impl FromStr for DeviceId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let (k, i) = s.split_once(':').unwrap_or((s, "0"));
        let index = i.parse().map_err(|_| {
            Error::Invalid(format!(
                "bad device '{s}': expected BACKEND:INDEX like cuda:0"
            ))
        })?;
        Ok(DeviceId {
            kind: k.parse()?,
            index,
        })
    }
}

/// How many devices each adapter / host appears as: `KILN_VIRTUAL_DEVICES` (1 to 16, default
/// 1). With N, the reference provider lists `reference:0..N` and the wgpu provider lists every
/// adapter N times, each opened as a separate device: how tests build groups of several devices
/// of one backend on one machine (layer split and tensor parallelism on lavapipe in CI).
pub fn virtual_devices() -> u32 {
    std::env::var("KILN_VIRTUAL_DEVICES")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .map_or(1, |n| n.clamp(1, 16))
}

/// Parse `cuda:0,wgpu:0,reference:1`.
pub fn parse_device_list(s: &str) -> Result<Vec<DeviceId>> {
    let ids: Vec<DeviceId> = s
        .split(',')
        .map(|p| p.trim().parse())
        .collect::<Result<_>>()?;
    for (i, a) in ids.iter().enumerate() {
        if ids[..i].contains(a) {
            return Err(Error::Invalid(format!(
                "device {a} is listed twice in '{s}'"
            )));
        }
    }
    Ok(ids)
}

/// What a device can do, as far as kiln's dispatch cares.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Caps {
    pub f16: bool,
    pub bf16: bool,
    pub subgroups: bool,
    /// Largest single allocation.
    pub max_buffer_bytes: u64,
    /// Largest range one shader binding may cover (wgpu); equal to max_buffer_bytes elsewhere.
    pub max_binding_bytes: u64,
    /// Workgroup / shared memory per block.
    pub shared_memory_bytes: u64,
    /// CUDA compute capability (major, minor).
    pub compute_capability: Option<(u32, u32)>,
    /// Number of SMs / compute units, or CPU threads for the reference backend.
    pub compute_units: u32,
    /// The many-row matmul runs on tensor cores (CUDA: mma / cuBLASLt; wgpu: cooperative
    /// matrices), so its inputs are rounded to 16-bit floats (see each backend's matmul).
    pub tensor_cores: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DeviceInfo {
    pub id: DeviceId,
    pub name: String,
    pub vendor: String,
    pub memory_bytes: u64,
    /// Driver / API detail (`CUDA 13.0`, `Vulkan lavapipe 22.3.6`, ...).
    pub driver: String,
    pub caps: Caps,
}

impl DeviceInfo {
    /// Capabilities as short words for tables: `f16 bf16 subgroups sm_90`.
    pub fn caps_summary(&self) -> String {
        let c = &self.caps;
        let mut v = Vec::new();
        if c.f16 {
            v.push("f16".to_string());
        }
        if c.bf16 {
            v.push("bf16".to_string());
        }
        if c.subgroups {
            v.push("subgroups".to_string());
        }
        if let Some((a, b)) = c.compute_capability {
            v.push(format!("sm_{a}{b}"));
        }
        if c.tensor_cores && c.compute_capability.is_none() {
            // (every CUDA device kiln opens has them; a wgpu adapter says so only with
            // cooperative matrices)
            v.push("coop-matrix".to_string());
        }
        if c.max_binding_bytes > 0 && c.max_binding_bytes < c.max_buffer_bytes {
            v.push(format!("binding≤{}MiB", c.max_binding_bytes >> 20));
        }
        v.join(" ")
    }
}

/// Result of asking one backend for its devices.
#[derive(Clone, Debug)]
pub enum Probe {
    Found(Vec<DeviceInfo>),
    /// The backend's driver, library or adapter is absent; the reason says which.
    NotFound(String),
}

/// Implemented by each backend crate.
pub trait BackendProvider: Send + Sync {
    fn kind(&self) -> BackendKind;
    /// List devices. Must not panic when the vendor stack is missing.
    fn probe(&self) -> Probe;
    /// Open device `index` (as listed by `probe`).
    fn open(&self, index: u32) -> Result<Arc<dyn Backend>>;
}

/// One provider's answer.
#[derive(Clone, Debug)]
pub struct BackendReport {
    pub kind: BackendKind,
    pub probe: Probe,
}

/// Ask every provider; a provider that panics is reported as not found (cudarc panics when
/// libcuda is absent; providers should probe first, this is the last guard).
pub fn discover(providers: &[&dyn BackendProvider]) -> Vec<BackendReport> {
    providers
        .iter()
        .map(|p| {
            let probe = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p.probe()))
                .unwrap_or_else(|_| Probe::NotFound("the backend panicked while probing".into()));
            BackendReport {
                kind: p.kind(),
                probe,
            }
        })
        .collect()
}

/// Open the listed devices from the providers.
pub fn open_devices(
    providers: &[&dyn BackendProvider],
    ids: &[DeviceId],
) -> Result<Vec<Arc<dyn Backend>>> {
    ids.iter()
        .map(|id| {
            let p = providers
                .iter()
                .find(|p| p.kind() == id.kind)
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "{id}: backend {} is not built into this binary",
                        id.kind
                    ))
                })?;
            match p.probe() {
                Probe::NotFound(why) => Err(Error::Invalid(format!(
                    "{id}: {} not found: {why}",
                    id.kind
                ))),
                Probe::Found(list) if !list.iter().any(|d| d.id.index == id.index) => {
                    Err(Error::Invalid(format!(
                        "{id}: no such device ({} has {} device(s))",
                        id.kind,
                        list.len()
                    )))
                }
                Probe::Found(_) => p.open(id.index),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_lists_parse() {
        let v = parse_device_list("cuda:0, wgpu:1,reference:0").unwrap();
        assert_eq!(v[0], DeviceId::new(BackendKind::Cuda, 0));
        assert_eq!(v[1].to_string(), "wgpu:1");
        assert!(parse_device_list("tpu:0").is_err());
        assert!(parse_device_list("cuda:x").is_err());
        assert!(parse_device_list("cuda:0,cuda:0").is_err());
    }
}
