//! `kiln inspect FILE`: a GGUF file, a safetensors file or shard index, or an HF model
//! directory. Prints a summary, the metadata (long arrays and strings abbreviated) and the
//! tensor table (name, type, shape, bytes), totals last. Every reader validates the whole file
//! first, so a malformed file ends in a one-line error instead of a partial listing.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use kiln_models::{
    GgufArray, GgufFile, GgufValue, HfDir, ModelFormat, SafetensorsFile, SafetensorsModel, detect,
};
use serde_json::{Value, json};

use super::out::{Table, abbreviate, grouped, human_bytes};
use super::{CliResult, Format};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A .gguf file, a .safetensors file, a model.safetensors.index.json, or an HF directory.
    pub file: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
    /// Array items shown per metadata array.
    #[arg(long, default_value_t = 6)]
    pub items: usize,
    /// Characters shown of a long string (chat templates and the like).
    #[arg(long, default_value_t = 60)]
    pub chars: usize,
}

/// One metadata entry, rendered for text and for JSON.
struct MetaRow {
    key: String,
    type_name: String,
    text: String,
    json: Value,
}

struct TensorRow {
    name: String,
    type_name: String,
    supported: bool,
    shape: Vec<usize>,
    bytes: Option<u64>,
    offset: u64,
    shard: Option<String>,
}

/// What is shown, whatever the format.
struct Report {
    /// Summary lines: (label, text, JSON value).
    summary: Vec<(&'static str, String, Value)>,
    metadata_title: &'static str,
    metadata: Vec<MetaRow>,
    tensors: Vec<TensorRow>,
}

pub fn run(args: &Args) -> CliResult {
    let report = match detect(&args.file)? {
        ModelFormat::Gguf => gguf_report(&GgufFile::open(&args.file)?, args),
        ModelFormat::Safetensors => {
            let m = SafetensorsModel::single(SafetensorsFile::open(&args.file)?);
            safetensors_report(&m, Vec::new(), args)
        }
        ModelFormat::SafetensorsIndex => {
            safetensors_report(&SafetensorsModel::open_index(&args.file)?, Vec::new(), args)
        }
        ModelFormat::HfDir => hf_report(&HfDir::open(&args.file)?, args)?,
    };
    let stdout = std::io::stdout();
    let mut w = stdout.lock();
    match args.format {
        Format::Text => write_text(&mut w, &report)?,
        Format::Json => {
            let v = to_json(&report);
            writeln!(
                w,
                "{}",
                serde_json::to_string_pretty(&v).unwrap_or_default()
            )?;
        }
    }
    w.flush()?;
    Ok(())
}

fn size_line(bytes: usize) -> (String, Value) {
    let b = bytes as u64;
    (
        format!("{} bytes ({})", grouped(b), human_bytes(b)),
        json!(b),
    )
}

fn gguf_report(g: &GgufFile, args: &Args) -> Report {
    let (size_text, size_json) = size_line(g.file_size());
    let mut summary = vec![
        ("file", g.path().to_string(), json!(g.path())),
        ("format", format!("GGUF v{}", g.version()), json!("gguf")),
        ("version", g.version().to_string(), json!(g.version())),
        ("size", size_text, size_json),
        ("alignment", g.alignment().to_string(), json!(g.alignment())),
        (
            "data offset",
            g.data_start().to_string(),
            json!(g.data_start()),
        ),
    ];
    if let Ok(arch) = g.architecture() {
        summary.push(("architecture", arch.to_string(), json!(arch)));
    }
    let metadata = g
        .metadata()
        .iter()
        .map(|(k, v)| MetaRow {
            key: k.to_string(),
            type_name: value_type(v),
            text: value_text(v, args),
            json: value_json(v, args),
        })
        .collect();
    let tensors = g
        .tensors()
        .iter()
        .map(|t| TensorRow {
            name: t.name.clone(),
            type_name: t.type_name(),
            supported: t.dtype.is_some(),
            shape: t.shape.dims().to_vec(),
            bytes: t.size.map(|s| s as u64),
            offset: t.data_start as u64,
            shard: None,
        })
        .collect();
    Report {
        summary,
        metadata_title: "metadata",
        metadata,
        tensors,
    }
}

fn safetensors_report(
    m: &SafetensorsModel,
    mut summary: Vec<(&'static str, String, Value)>,
    args: &Args,
) -> Report {
    let total: usize = m.shards().iter().map(|s| s.file_size()).sum();
    let (size_text, size_json) = size_line(total);
    summary.push(("weights", m.path().to_string(), json!(m.path())));
    summary.push(("format", "safetensors".into(), json!("safetensors")));
    summary.push((
        "shards",
        m.shards().len().to_string(),
        json!(m.shards().len()),
    ));
    summary.push(("size", size_text, size_json));
    let sharded = m.index_path().is_some();
    let mut metadata = Vec::new();
    for (i, shard) in m.shards().iter().enumerate() {
        for (k, v) in shard.user_metadata() {
            let key = if sharded {
                format!("{k} (shard {i})")
            } else {
                k.clone()
            };
            metadata.push(MetaRow {
                key,
                type_name: "string".into(),
                text: abbreviate(v, args.chars),
                json: json!(v),
            });
        }
    }
    let tensors = m
        .tensors()
        .map(|(s, t)| TensorRow {
            name: t.name.clone(),
            type_name: t.type_name.clone(),
            supported: t.dtype.is_some(),
            shape: t.shape.clone(),
            bytes: Some(t.size as u64),
            offset: t.data_start as u64,
            shard: sharded.then(|| {
                m.shards().get(s).map_or_else(String::new, |f| {
                    let p = std::path::Path::new(f.path());
                    p.file_name()
                        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
                })
            }),
        })
        .collect();
    Report {
        summary,
        metadata_title: "__metadata__",
        metadata,
        tensors,
    }
}

fn hf_report(d: &HfDir, args: &Args) -> CliResult<Report> {
    let yes_no = |p: bool| if p { "present" } else { "absent" };
    let template = d.chat_template()?;
    let summary = vec![
        (
            "directory",
            d.dir().display().to_string(),
            json!(d.dir().display().to_string()),
        ),
        (
            "model_type",
            d.model_type().unwrap_or("?").to_string(),
            json!(d.model_type()),
        ),
        (
            "tokenizer.json",
            yes_no(d.tokenizer_json().is_some()).into(),
            json!(d.tokenizer_json().is_some()),
        ),
        (
            "tokenizer_config",
            yes_no(d.tokenizer_config().is_some()).into(),
            json!(d.tokenizer_config().is_some()),
        ),
        (
            "chat template",
            template
                .as_deref()
                .map_or_else(|| "absent".to_string(), |t| abbreviate(t, args.chars)),
            json!(template),
        ),
    ];
    let mut r = safetensors_report(d.weights(), summary, args);
    r.metadata_title = "config.json";
    r.metadata = d
        .config()
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| MetaRow {
                    key: k.clone(),
                    type_name: json_type(v).into(),
                    text: match v {
                        Value::String(s) => abbreviate(s, args.chars),
                        v => {
                            let s = v.to_string();
                            if s.chars().count() > args.chars * 2 {
                                format!(
                                    "{}… ({} chars)",
                                    s.chars().take(args.chars * 2).collect::<String>(),
                                    s.len()
                                )
                            } else {
                                s
                            }
                        }
                    },
                    json: v.clone(),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(r)
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn value_type(v: &GgufValue) -> String {
    match v {
        GgufValue::Array(a) => array_type(a),
        v => v.value_type().name().to_string(),
    }
}

fn array_type(a: &GgufArray) -> String {
    format!("[{}; {}]", a.elem_type(), a.len())
}

fn value_text(v: &GgufValue, args: &Args) -> String {
    match v {
        GgufValue::String(s) => abbreviate(s, args.chars),
        GgufValue::Array(a) => array_text(a, args),
        GgufValue::F32(x) => format!("{x}"),
        GgufValue::F64(x) => format!("{x}"),
        GgufValue::Bool(b) => b.to_string(),
        v => v.as_i64().map_or_else(
            || v.as_u64().map_or_else(String::new, |u| u.to_string()),
            |i| i.to_string(),
        ),
    }
}

fn array_text(a: &GgufArray, args: &Args) -> String {
    let shown = a.len().min(args.items);
    let mut items: Vec<String> = (0..shown)
        .filter_map(|i| a.get(i))
        .map(|v| match &v {
            GgufValue::Array(inner) => format!("{} {}", array_type(inner), array_text(inner, args)),
            GgufValue::String(s) => abbreviate(s, 24),
            v => value_text(v, args),
        })
        .collect();
    if a.len() > shown {
        items.push(format!("… {} more", a.len() - shown));
    }
    format!("[{}]", items.join(", "))
}

fn value_json(v: &GgufValue, args: &Args) -> Value {
    match v {
        GgufValue::String(s) => json!(s),
        GgufValue::Array(a) => array_json(a, args),
        GgufValue::F32(x) => json!(x),
        GgufValue::F64(x) => json!(x),
        GgufValue::Bool(b) => json!(b),
        v => v.as_i64().map_or_else(|| json!(v.as_u64()), |i| json!(i)),
    }
}

/// Arrays are summarised: element type, length and the first `--items` elements.
fn array_json(a: &GgufArray, args: &Args) -> Value {
    let head: Vec<Value> = (0..a.len().min(args.items))
        .filter_map(|i| a.get(i))
        .map(|v| value_json(&v, args))
        .collect();
    json!({ "elem_type": a.elem_type().name(), "len": a.len(), "head": head })
}

fn write_text(w: &mut dyn Write, r: &Report) -> std::io::Result<()> {
    let width = r.summary.iter().map(|s| s.0.len()).max().unwrap_or(0) + 1;
    for (label, text, _) in &r.summary {
        writeln!(w, "{:<width$} {text}", format!("{label}:"), width = width)?;
    }
    writeln!(w, "{} ({} entries):", r.metadata_title, r.metadata.len())?;
    if !r.metadata.is_empty() {
        let mut t = Table::new(&[("KEY", false), ("TYPE", false), ("VALUE", false)]);
        for m in &r.metadata {
            t.row(vec![m.key.clone(), m.type_name.clone(), m.text.clone()]);
        }
        t.write(w, 2)?;
    }
    writeln!(w, "tensors ({}):", r.tensors.len())?;
    let sharded = r.tensors.iter().any(|t| t.shard.is_some());
    let mut cols = vec![
        ("NAME", false),
        ("TYPE", false),
        ("SHAPE", false),
        ("BYTES", true),
        ("OFFSET", true),
    ];
    if sharded {
        cols.push(("SHARD", false));
    }
    let mut t = Table::new(&cols);
    for x in &r.tensors {
        let mut row = vec![
            x.name.clone(),
            if x.supported {
                x.type_name.clone()
            } else {
                format!("{}*", x.type_name)
            },
            format!("{:?}", x.shape),
            x.bytes.map_or_else(|| "?".into(), grouped),
            x.offset.to_string(),
        ];
        if sharded {
            row.push(x.shard.clone().unwrap_or_default());
        }
        t.row(row);
    }
    if !t.is_empty() {
        t.write(w, 2)?;
    }
    let tot = totals(r);
    writeln!(
        w,
        "total: {} tensors, {} parameters, {} bytes ({})",
        r.tensors.len(),
        grouped(tot.params),
        grouped(tot.bytes),
        human_bytes(tot.bytes)
    )?;
    let by_type: Vec<String> = tot
        .by_type
        .iter()
        .map(|(ty, (n, b))| format!("{ty} {n} ({})", human_bytes(*b)))
        .collect();
    if !by_type.is_empty() {
        writeln!(w, "by type: {}", by_type.join(", "))?;
    }
    if !tot.unsupported.is_empty() {
        writeln!(
            w,
            "* kiln cannot compute with: {} (the file opens; using these tensors is an error)",
            tot.unsupported.join(", ")
        )?;
    }
    Ok(())
}

struct Totals {
    params: u64,
    bytes: u64,
    by_type: BTreeMap<String, (usize, u64)>,
    unsupported: Vec<String>,
}

fn totals(r: &Report) -> Totals {
    let mut t = Totals {
        params: 0,
        bytes: 0,
        by_type: BTreeMap::new(),
        unsupported: Vec::new(),
    };
    for x in &r.tensors {
        let numel = x.shape.iter().map(|&d| d as u64).product::<u64>();
        t.params = t.params.saturating_add(numel);
        let b = x.bytes.unwrap_or(0);
        t.bytes = t.bytes.saturating_add(b);
        let e = t.by_type.entry(x.type_name.clone()).or_default();
        e.0 += 1;
        e.1 = e.1.saturating_add(b);
        if !x.supported && !t.unsupported.contains(&x.type_name) {
            t.unsupported.push(x.type_name.clone());
        }
    }
    t
}

fn to_json(r: &Report) -> Value {
    let mut root = serde_json::Map::new();
    for (label, _, v) in &r.summary {
        root.insert(label.replace(' ', "_"), v.clone());
    }
    let meta: serde_json::Map<String, Value> = r
        .metadata
        .iter()
        .map(|m| (m.key.clone(), m.json.clone()))
        .collect();
    root.insert(r.metadata_title.replace('.', "_"), Value::Object(meta));
    let tensors: Vec<Value> = r
        .tensors
        .iter()
        .map(|t| {
            let mut o = json!({
                "name": t.name,
                "type": t.type_name,
                "supported": t.supported,
                "shape": t.shape,
                "bytes": t.bytes,
                "offset": t.offset,
            });
            if let (Some(s), Some(obj)) = (&t.shard, o.as_object_mut()) {
                obj.insert("shard".into(), json!(s));
            }
            o
        })
        .collect();
    root.insert("tensors".into(), Value::Array(tensors));
    let tot = totals(r);
    root.insert(
        "totals".into(),
        json!({
            "tensors": r.tensors.len(),
            "parameters": tot.params,
            "bytes": tot.bytes,
            "by_type": tot.by_type.iter().map(|(k, (n, b))| (k.clone(), json!({"tensors": n, "bytes": b}))).collect::<serde_json::Map<_, _>>(),
            "unsupported_types": tot.unsupported,
        }),
    );
    Value::Object(root)
}
