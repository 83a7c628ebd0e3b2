//! The plan for people (a table) and for programs (JSON), and the refusal message.

use std::fmt;

use serde_json::{Value, json};

use super::{DevicePlan, MemoryPlan, Parallel};

/// `1.50 MiB`, `512 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in UNITS.iter().skip(1) {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.2} {unit}")
}

fn hb(n: usize) -> String {
    human_bytes(n as u64)
}

fn layers(d: &DevicePlan) -> String {
    match d.layers.len() {
        0 => "-".to_string(),
        1 => format!("{} (1)", d.layers.start),
        n => format!("{}-{} ({n})", d.layers.start, d.layers.end - 1),
    }
}

impl MemoryPlan {
    /// One line: how the model is spread and the runtime sizes.
    pub fn summary(&self) -> String {
        let how = match &self.parallel {
            Parallel::Single => "one device".to_string(),
            Parallel::Layer(given) => format!(
                "layer split over {} devices ({})",
                self.devices.len(),
                if given.is_some() {
                    "as given"
                } else {
                    "by free memory"
                }
            ),
            Parallel::Tensor => format!("tensor parallel over {} devices", self.devices.len()),
        };
        let d = &self.dims;
        format!(
            "{how}; context {}, {} sequence(s), chunk {} rows{}; KV {} in {} blocks of {} tokens (1 null)",
            d.context,
            d.max_seqs,
            d.max_tokens,
            if d.all_logits {
                ", logits of every row"
            } else {
                ""
            },
            self.kv_dtype,
            self.kv_blocks,
            d.block_size,
        )
    }

    /// Everything as JSON (exact byte counts).
    pub fn to_json(&self) -> Value {
        let d = &self.dims;
        json!({
            "model": self.model,
            "arch": self.arch,
            "parallel": self.parallel.name(),
            "context": d.context,
            "max_seqs": d.max_seqs,
            "chunk": d.max_tokens,
            "block_size": d.block_size,
            "all_logits": d.all_logits,
            "kv_dtype": self.kv_dtype.name(),
            "kv_blocks": self.kv_blocks,
            "fits": self.fits(),
            "devices": self.devices.iter().map(device_json).collect::<Vec<_>>(),
        })
    }
}

fn device_json(d: &DevicePlan) -> Value {
    json!({
        "device": d.device.to_string(),
        "name": d.name,
        "layers": [d.layers.start, d.layers.end],
        "layer_count": d.layers.len(),
        "embed": d.embed,
        "head": d.head,
        "weights": d.weight_bytes(),
        "weights_by_role": d.weights.iter().map(|w| json!({
            "role": w.role,
            "dtype": w.dtype.name(),
            "tensors": w.tensors,
            "bytes": w.bytes,
        })).collect::<Vec<_>>(),
        "params": d.params,
        "kv": d.kv,
        "kv_bytes_per_token_per_layer": d.kv_token_layer,
        "activations": d.activations,
        "workspace": d.workspace,
        "collective": d.collective,
        "total": d.total(),
        "reserve": d.reserve,
        "capacity": d.capacity,
        "available": d.available(),
        "fits": d.fits(),
    })
}

/// Left-aligned first column, the others right-aligned.
fn table(f: &mut fmt::Formatter<'_>, rows: &[Vec<String>]) -> fmt::Result {
    let cols = rows.first().map_or(0, Vec::len);
    let width: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            let pad = width[c].saturating_sub(cell.chars().count());
            if c == 0 {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            } else {
                line.push_str("  ");
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            }
        }
        writeln!(f, "{}", line.trim_end())?;
    }
    Ok(())
}

impl fmt::Display for MemoryPlan {
    /// The model, the sizes, one row per device, each device's weights by role and format,
    /// and whether it fits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "model   {} ({})", self.model, self.arch)?;
        writeln!(f, "plan    {}", self.summary())?;
        let mut rows = vec![
            [
                "DEVICE",
                "LAYERS",
                "WEIGHTS",
                "KV",
                "ACTIVATIONS",
                "WORKSPACE",
                "COLLECTIVE",
                "TOTAL",
                "RESERVE",
                "CAPACITY",
                "FITS",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for d in &self.devices {
            rows.push(vec![
                d.device.to_string(),
                layers(d),
                hb(d.weight_bytes()),
                hb(d.kv),
                hb(d.activations),
                hb(d.workspace),
                human_bytes(d.collective),
                human_bytes(d.total()),
                human_bytes(d.reserve),
                d.capacity.map_or("unknown".into(), human_bytes),
                match (d.capacity, d.fits()) {
                    (None, _) => "?",
                    (Some(_), true) => "yes",
                    (Some(_), false) => "NO",
                }
                .to_string(),
            ]);
        }
        writeln!(f)?;
        table(f, &rows)?;
        writeln!(f)?;
        for d in &self.devices {
            let mut parts: Vec<String> = d
                .weights
                .iter()
                .map(|w| format!("{} {} {}", w.role, w.dtype.name(), hb(w.bytes)))
                .collect();
            parts.push(format!("norms/biases F32 {}", hb(d.params)));
            let mut role = vec![d.name.clone()];
            if d.embed {
                role.push("embedding".into());
            }
            if d.head {
                role.push("final norm + logits".into());
            }
            writeln!(f, "{}  {}", d.device, role.join("; "))?;
            writeln!(f, "    weights: {}", parts.join(", "))?;
            writeln!(
                f,
                "    KV: {} per token per layer ({} layers)",
                hb(d.kv_token_layer),
                d.layers.len()
            )?;
        }
        writeln!(f)?;
        let unknown: Vec<String> = self
            .devices
            .iter()
            .filter(|d| d.capacity.is_none())
            .map(|d| d.device.to_string())
            .collect();
        if !unknown.is_empty() {
            writeln!(
                f,
                "{} do(es) not report memory: give --memory to check the fit",
                unknown.join(", ")
            )?;
        }
        if !self.fits() {
            writeln!(f, "DOES NOT FIT: {}", refusal(self))
        } else if unknown.is_empty() {
            writeln!(f, "fits on every device")
        } else {
            writeln!(f, "fits on every device that reports its memory")
        }
    }
}

/// The refusal: the model and, per device, needed vs available bytes.
pub(super) fn refusal(p: &MemoryPlan) -> String {
    let per: Vec<String> = p
        .devices
        .iter()
        .map(|d| {
            let need = format!(
                "needs {} ({} bytes: weights {}, KV {}, activations {}, workspace {}, collective {})",
                human_bytes(d.total()),
                d.total(),
                hb(d.weight_bytes()),
                hb(d.kv),
                hb(d.activations),
                hb(d.workspace),
                human_bytes(d.collective),
            );
            match (d.capacity, d.available()) {
                (Some(c), Some(a)) => format!(
                    "{} {}: it {need} of {} available ({a} bytes = capacity {} − reserve {})",
                    d.device,
                    if d.fits() { "fits" } else { "does not fit" },
                    human_bytes(a),
                    human_bytes(c),
                    human_bytes(d.reserve),
                ),
                _ => format!("{} (memory unknown): it {need}", d.device),
            }
        })
        .collect();
    format!(
        "{} does not fit ({}): {}",
        p.model,
        p.summary(),
        per.join("; ")
    )
}
