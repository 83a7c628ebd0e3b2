//! `kiln plan MODEL --devices LIST`: the memory plan of a model on the listed devices — weights,
//! KV cache, activations, backend workspace and reserve per device, and the layer split — from
//! the model's metadata only (no weight is read). Exits 1 with the numbers when the model does
//! not fit.

use std::io::Write;
use std::sync::Arc;

use kiln_core::devices::{open_devices, parse_device_list};
use kiln_core::{Backend, BackendKind, BackendProvider, ReferenceBackend};
use kiln_models::RuntimeOptions;
use kiln_models::planner::{self, ModelMeta, Parallel, PlanOptions, Reserve, parse_bytes};

use super::devices::providers;
use super::load::Parallel as ParallelArg;
use super::run::parse_kv;
use super::{CliError, CliResult, Format, with_quiet_panics};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// GGUF file, Hugging Face directory, or a catalog name already downloaded.
    pub model: String,
    /// Devices to plan for, e.g. `cuda:0,cuda:1` or `reference:0,reference:1`.
    #[arg(long)]
    pub devices: String,
    /// How to split the model over several devices (default with several: layer).
    #[arg(long, value_enum)]
    pub parallel: Option<ParallelArg>,
    /// Layers per device of a layer split, e.g. `10,22` (default: in proportion to free memory).
    #[arg(long, value_delimiter = ',')]
    pub layers: Vec<usize>,
    /// Sequences per step.
    #[arg(long, default_value_t = 1)]
    pub max_seqs: usize,
    /// Tokens per sequence (default: the model's context length, at most 4096).
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Prefill chunk: rows per step (≥ --max-seqs).
    #[arg(long, default_value_t = 256)]
    pub chunk: usize,
    /// KV block size in tokens.
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    /// KV blocks in the pool (default: --max-seqs full contexts).
    #[arg(long)]
    pub kv_blocks: Option<usize>,
    /// KV cache type.
    #[arg(long, default_value = "f16", value_parser = parse_kv)]
    pub kv_type: kiln_core::DType,
    /// Logits of every row (as `kiln logits`) instead of one per sequence.
    #[arg(long)]
    pub all_logits: bool,
    /// Memory kept free per device: `5%` or `1GiB`; one for all or a comma list per device.
    #[arg(long, value_delimiter = ',', default_value = "5%")]
    pub reserve: Vec<String>,
    /// Plan for this much memory per device instead of what the devices report (`24GiB`; one
    /// for all or a comma list).
    #[arg(long, value_delimiter = ',')]
    pub memory: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

pub fn run(a: &Args) -> CliResult {
    let parallel = parallel(a)?;
    let reserve = a
        .reserve
        .iter()
        .map(|s| s.parse::<Reserve>())
        .collect::<Result<Vec<_>, _>>()?;
    let capacity = a
        .memory
        .iter()
        .map(|s| parse_bytes(s))
        .collect::<Result<Vec<_>, _>>()?;
    // Metadata first: a bad model path fails before any device is opened.
    let meta = ModelMeta::open(&a.model)?;
    let devices = open(&a.devices)?;
    // A tensor-parallel CUDA group's NCCL/P2P buffers, measured by creating the group.
    let collective = match &parallel {
        Parallel::Tensor => super::load::group_collective(&devices)?
            .map(|c| c.device_bytes())
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let opts = PlanOptions {
        parallel,
        runtime: RuntimeOptions {
            max_seqs: a.max_seqs,
            context: a.ctx,
            chunk: a.chunk,
            block_size: a.block_size,
            kv_dtype: a.kv_type,
            kv_blocks: a.kv_blocks,
            all_logits: a.all_logits,
            ..RuntimeOptions::default()
        },
        reserve,
        capacity: (!capacity.is_empty()).then_some(capacity),
        collective,
    };
    let plan = planner::plan(&meta, &devices, &opts)?;
    let stdout = std::io::stdout();
    let mut w = stdout.lock();
    match a.format {
        Format::Text => write!(w, "{plan}")?,
        Format::Json => writeln!(
            w,
            "{}",
            serde_json::to_string_pretty(&plan.to_json()).unwrap_or_default()
        )?,
    }
    w.flush()?;
    Ok(plan.check_fits()?)
}

fn parallel(a: &Args) -> CliResult<Parallel> {
    let several = a.devices.contains(',');
    match (a.parallel, several) {
        (Some(ParallelArg::Tensor), _) if !a.layers.is_empty() => {
            Err(CliError::Usage("--layers is for --parallel layer".into()))
        }
        (Some(ParallelArg::Tensor), _) => Ok(Parallel::Tensor),
        (Some(ParallelArg::Layer), _) | (None, true) => Ok(Parallel::Layer(
            (!a.layers.is_empty()).then(|| a.layers.clone()),
        )),
        (None, false) if !a.layers.is_empty() => {
            Err(CliError::Usage("--layers needs several --devices".into()))
        }
        (None, false) => Ok(Parallel::Single),
    }
}

/// Open the listed devices (reference devices by index: planning several host devices needs
/// no discovery).
fn open(list: &str) -> CliResult<Vec<Arc<dyn Backend>>> {
    let ids = parse_device_list(list)?;
    let providers = providers();
    let refs: Vec<&dyn BackendProvider> = providers.iter().map(|p| p.as_ref()).collect();
    ids.iter()
        .map(|id| match id.kind {
            BackendKind::Reference => {
                Ok(Arc::new(ReferenceBackend::new(id.index)) as Arc<dyn Backend>)
            }
            _ => with_quiet_panics(|| open_devices(&refs, std::slice::from_ref(id)))?
                .pop()
                .ok_or_else(|| CliError::Usage(format!("{id}: not opened"))),
        })
        .collect()
}
