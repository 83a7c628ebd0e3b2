//! `kiln devices`: every backend built into this binary, and the devices each one found.

use std::io::Write;

use kiln_core::devices::discover;
use kiln_core::{BackendProvider, BackendReport, DeviceInfo, Probe, ReferenceProvider};
use kiln_cuda::CudaProvider;
use kiln_wgpu::WgpuProvider;
use serde_json::json;

use super::out::{Table, human_bytes};
use super::{CliResult, Format, with_quiet_panics};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// The backends this binary knows, in the order they are listed and preferred. This is the
/// one place where a backend is registered with the command line.
pub fn providers() -> Vec<Box<dyn BackendProvider>> {
    vec![
        Box::new(CudaProvider),
        Box::new(WgpuProvider),
        Box::new(ReferenceProvider::default()),
    ]
}

/// Probe every provider (a provider that panics is reported as not found, silently).
pub fn reports() -> Vec<BackendReport> {
    let providers = providers();
    let refs: Vec<&dyn BackendProvider> = providers.iter().map(|p| p.as_ref()).collect();
    with_quiet_panics(|| discover(&refs))
}

pub fn run(args: &Args) -> CliResult {
    let reports = reports();
    let stdout = std::io::stdout();
    let mut w = stdout.lock();
    match args.format {
        Format::Text => write_text(&mut w, &reports)?,
        Format::Json => writeln!(
            w,
            "{}",
            serde_json::to_string_pretty(&to_json(&reports)).unwrap_or_default()
        )?,
    }
    w.flush()?;
    Ok(())
}

fn write_text(w: &mut dyn Write, reports: &[BackendReport]) -> std::io::Result<()> {
    let mut t = Table::new(&[
        ("DEVICE", false),
        ("NAME", false),
        ("VENDOR", false),
        ("MEMORY", true),
        ("UNITS", true),
        ("DRIVER", false),
        ("CAPABILITIES", false),
    ]);
    let mut absent = Vec::new();
    for r in reports {
        match &r.probe {
            Probe::Found(devs) if devs.is_empty() => {
                absent.push((r.kind, "the backend reported no devices".to_string()))
            }
            Probe::Found(devs) => {
                for d in devs {
                    t.row(vec![
                        d.id.to_string(),
                        d.name.clone(),
                        d.vendor.clone(),
                        human_bytes(d.memory_bytes),
                        d.caps.compute_units.to_string(),
                        d.driver.clone(),
                        d.caps_summary(),
                    ]);
                }
            }
            Probe::NotFound(why) => absent.push((r.kind, why.clone())),
        }
    }
    if t.is_empty() {
        writeln!(w, "no devices found")?;
    } else {
        t.write(w, 0)?;
    }
    for (kind, why) in absent {
        writeln!(w, "{kind}: not found: {why}")?;
    }
    Ok(())
}

fn device_json(d: &DeviceInfo) -> serde_json::Value {
    let c = &d.caps;
    json!({
        "id": d.id.to_string(),
        "name": d.name,
        "vendor": d.vendor,
        "memory_bytes": d.memory_bytes,
        "memory": human_bytes(d.memory_bytes),
        "driver": d.driver,
        "capabilities": d.caps_summary(),
        "caps": {
            "f16": c.f16,
            "bf16": c.bf16,
            "subgroups": c.subgroups,
            "max_buffer_bytes": c.max_buffer_bytes,
            "max_binding_bytes": c.max_binding_bytes,
            "shared_memory_bytes": c.shared_memory_bytes,
            "compute_capability": c.compute_capability.map(|(a, b)| format!("{a}.{b}")),
            "compute_units": c.compute_units,
            "tensor_cores": c.tensor_cores,
        },
    })
}

fn to_json(reports: &[BackendReport]) -> serde_json::Value {
    let backends: Vec<serde_json::Value> = reports
        .iter()
        .map(|r| match &r.probe {
            Probe::Found(devs) => json!({
                "backend": r.kind.name(),
                "found": true,
                "devices": devs.iter().map(device_json).collect::<Vec<_>>(),
            }),
            Probe::NotFound(why) => json!({
                "backend": r.kind.name(),
                "found": false,
                "reason": why,
            }),
        })
        .collect();
    json!({ "backends": backends })
}
