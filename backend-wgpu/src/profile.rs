//! The op profile: every op recorded between [`WgpuBackend::gpu_profile_start`] and
//! [`WgpuBackend::gpu_profile_stop`] gets GPU timestamps at its start and end (the kernel
//! timer of device.rs) and the name of its pipeline, so a decode step on Vulkan can be split by
//! op the way ncu splits a CUDA step (the decode bench's `--profile`). Where the adapter has
//! TIMESTAMP_QUERY_INSIDE_PASSES the ops stay in the one open pass of production recording and
//! the timestamps go between its dispatches; else each op gets its own timed pass. Either way
//! the timestamps serialize the GPU (on the H200's Vulkan a 4.1 ms step profiles as 6.3 ms):
//! the shares are indicative, the absolute times are not. The names are the
//! shader's, its entry point when not `main`, and its defines (`gemv_x8[Q4K,XQG]`); a pass of
//! two dispatches (`dispatch2`) is named `first+second`.

use std::sync::Arc;

use kiln_core::Result;

use crate::device::WgpuBackend;
use crate::pipeline_cache::ShaderSpec;
use crate::timer::TIMER_QUERIES;

/// One timed op: its pipeline's name and its start and end in seconds after the first
/// timed op's start (gaps between ops are idle GPU or pipeline barriers).
#[derive(Clone, Debug)]
pub struct PassTime {
    pub name: Arc<str>,
    pub start: f64,
    pub end: f64,
}

/// The profile name of a pipeline made from `spec`.
pub(crate) fn profile_name(spec: &ShaderSpec<'_>) -> String {
    let mut s = spec.name.to_string();
    if spec.entry != "main" {
        s.push(':');
        s.push_str(spec.entry);
    }
    if !spec.defines.is_empty() {
        s.push('[');
        s.push_str(&spec.defines.join(","));
        s.push(']');
    }
    s
}

impl WgpuBackend {
    /// Start the op profile (up to `TIMER_QUERIES / 2` passes); `Ok(false)` when the adapter
    /// has no TIMESTAMP_QUERY (nothing is timed then).
    pub fn gpu_profile_start(&self) -> Result<bool> {
        if !self.start_timer("kiln profile", TIMER_QUERIES, None) {
            return Ok(false);
        }
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = p.timer.as_mut() {
            t.labels = Some(Vec::new());
        }
        Ok(true)
    }

    /// Stop the op profile and wait for the GPU: every timed pass in recording order. An error
    /// if more passes were recorded than the timer holds; `None` if no profile was running.
    pub fn gpu_profile_stop(&self) -> Result<Option<Vec<PassTime>>> {
        let labels = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.timer.as_mut().and_then(|t| t.labels.take())
        };
        let Some(labels) = labels else {
            return Ok(None);
        };
        let Some(spans) = self.gpu_timer_stop_spans()? else {
            return Ok(None);
        };
        Ok(Some(
            labels
                .into_iter()
                .zip(spans)
                .map(|(name, (start, end))| PassTime { name, start, end })
                .collect(),
        ))
    }
}
