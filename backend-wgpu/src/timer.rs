//! The GPU timers of a wgpu device: GPU timestamps around the compute passes (or between the
//! dispatches of the one open pass, see device.rs `Pending`) that the benchmarks and the op
//! profile (profile.rs) read. Three kinds: the kernel timer (`gpu_timer_start`: every op's
//! start and end), the span timer (`gpu_span_start`: the first op's start to the last op's
//! end of one submission) and the op profile built on the first.

use std::sync::Arc;

use kiln_core::Result;

use crate::device::{RING_SLOTS, WgpuBackend};
use crate::error::WgpuError;

/// Timestamp queries written at the start and end of each compute pass while the timer runs.
pub(crate) struct GpuTimer {
    pub(crate) set: wgpu::QuerySet,
    /// Passes timed so far (two queries each).
    pub(crate) passes: u32,
    /// Passes recorded while the query set was full (not timed).
    pub(crate) missed: u32,
    /// Span mode (`gpu_span_start`): only the first pass's start and pass `span`'s end are
    /// written, and nothing is submitted until the stop (unless the params ring is full).
    pub(crate) span: Option<u32>,
    /// Submissions made while the timer ran (span mode: must stay 0 for a valid span).
    pub(crate) submits: u32,
    /// The op profile (profile.rs): each timed pass's pipeline name, in order.
    pub(crate) labels: Option<Vec<Arc<str>>>,
}

/// Queries in the timer's set (two per pass).
pub(crate) const TIMER_QUERIES: u32 = 4096;

impl WgpuBackend {
    /// Start the kernel timer: every compute pass recorded until `gpu_timer_stop` writes a GPU
    /// timestamp at its start and end (up to 2048 passes). `Ok(false)` when the adapter has no
    /// TIMESTAMP_QUERY (nothing is timed then).
    pub fn gpu_timer_start(&self) -> Result<bool> {
        Ok(self.start_timer("kiln timer", TIMER_QUERIES, None))
    }

    /// Submit what is pending and install a timer of `count` timestamp queries (`span`: the span
    /// timer's pass count); false when the adapter has no TIMESTAMP_QUERY.
    pub(crate) fn start_timer(&self, label: &str, count: u32, span: Option<u32>) -> bool {
        if !self
            .device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
        {
            return false;
        }
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        self.submit_locked(&mut p);
        let set = self.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some(label),
            ty: wgpu::QueryType::Timestamp,
            count,
        });
        p.timer = Some(GpuTimer {
            set,
            passes: 0,
            missed: 0,
            span,
            submits: 0,
            labels: None,
        });
        true
    }

    /// Start a span timer over the next `passes` compute passes (1..=256): they are recorded
    /// into ONE submission (nothing is submitted until `gpu_span_stop`), with a GPU timestamp
    /// only at the first pass's start and at pass `passes`'s end, so the span is what the GPU
    /// takes for those passes back to back (the barriers between dependent passes included, no
    /// CPU recording gaps). `Ok(false)` when the adapter has no TIMESTAMP_QUERY.
    pub fn gpu_span_start(&self, passes: u32) -> Result<bool> {
        if !(1..=RING_SLOTS).contains(&passes) {
            return Err(kiln_core::Error::Invalid(format!(
                "gpu span timer: {passes} passes, expected 1..={RING_SLOTS} (one submission)"
            )));
        }
        Ok(self.start_timer("kiln span timer", 2, Some(passes)))
    }

    /// Stop the span timer, submit and wait: the seconds from the first timed pass's start to
    /// the end of pass `passes` (see `gpu_span_start`). An error if a different number of
    /// passes was recorded or the passes did not go in one submission; `None` if no span
    /// timer was running.
    pub fn gpu_span_stop(&self) -> Result<Option<f64>> {
        let t = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let t = p.timer.take();
            self.submit_locked(&mut p);
            t
        };
        let Some(t) = t else { return Ok(None) };
        let Some(want) = t.span else {
            return Err(kiln_core::Error::Invalid(
                "gpu_span_stop: the running timer is a per-pass timer".into(),
            ));
        };
        if t.passes != want || t.submits > 0 || t.missed > 0 {
            self.wait_idle()?;
            return Err(kiln_core::Error::Invalid(format!(
                "gpu span timer: {} passes ({} not timed) in {} submissions, \
                 expected {want} in one",
                t.passes,
                t.missed,
                t.submits + 1
            )));
        }
        let ticks = self.resolve_ticks(&t.set, 2)?;
        let period_s = f64::from(self.queue.get_timestamp_period()) * 1e-9;
        Ok(Some(ticks[1].saturating_sub(ticks[0]) as f64 * period_s))
    }

    /// Resolve the first `n` queries of `set` (after everything submitted) and read them back.
    fn resolve_ticks(&self, set: &wgpu::QuerySet, n: u32) -> Result<Vec<u64>> {
        let bytes = u64::from(n) * 8;
        let resolve = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("kiln timer resolve"),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let read = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("kiln timer read"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("kiln timer"),
            });
        enc.resolve_query_set(set, 0..n, &resolve, 0);
        enc.copy_buffer_to_buffer(&resolve, 0, &read, 0, bytes);
        self.queue.submit([enc.finish()]);
        let slice = read.slice(..);
        slice.map_async(wgpu::MapMode::Read, |_| {});
        self.wait_idle()?;
        let ticks: Vec<u64> = {
            let view = slice.get_mapped_range().map_err(|e| WgpuError::Map {
                device: self.dev_name(),
                msg: e.to_string(),
            })?;
            view.chunks_exact(8)
                .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect()
        };
        read.unmap();
        Ok(ticks)
    }

    /// Stop the kernel timer and wait for the GPU: the seconds of each timed pass, from its
    /// start to its end timestamp (gaps between passes are not counted), in recording order.
    /// Passes past the set's capacity are an error; `None` if the timer was not running.
    pub fn gpu_timer_stop(&self) -> Result<Option<Vec<f64>>> {
        Ok(self
            .gpu_timer_stop_spans()?
            .map(|v| v.iter().map(|(a, b)| (b - a).max(0.0)).collect()))
    }

    /// As `gpu_timer_stop`, but each timed pass as its (start, end) GPU timestamps in seconds
    /// after the first pass's start: the gaps between passes (idle GPU, e.g. while the CPU
    /// records) are visible, and `last end / passes` is the time per call a stream sustains.
    pub fn gpu_timer_stop_spans(&self) -> Result<Option<Vec<(f64, f64)>>> {
        let t = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            self.submit_locked(&mut p);
            p.timer.take()
        };
        let Some(t) = t else { return Ok(None) };
        if t.missed > 0 {
            return Err(kiln_core::Error::Invalid(format!(
                "gpu timer: {} passes past its {} queries were not timed",
                t.missed, TIMER_QUERIES
            )));
        }
        if t.span.is_some() {
            return Err(kiln_core::Error::Invalid(
                "gpu_timer_stop: the running timer is a span timer (gpu_span_stop)".into(),
            ));
        }
        if t.passes == 0 {
            return Ok(Some(Vec::new()));
        }
        let ticks = self.resolve_ticks(&t.set, t.passes * 2)?;
        let period_s = f64::from(self.queue.get_timestamp_period()) * 1e-9;
        let t0 = ticks.first().copied().unwrap_or(0);
        let at = |t: u64| t.saturating_sub(t0) as f64 * period_s;
        Ok(Some(
            ticks
                .chunks_exact(2)
                .map(|c| (at(c[0]), at(c[1])))
                .collect(),
        ))
    }
}
