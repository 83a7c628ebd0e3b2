//! Shader assembly and the pipeline cache.
//!
//! A shader is `common.wgsl` + the op's own files, passed through a small explicit templating
//! step before wgpu sees it:
//! - `enable f16;` is prepended when the device has SHADER_F16 (naga needs no directive for
//!   subgroup operations);
//! - lines between `//#if NAME`, `//#else`, `//#endif` are kept or dropped by the defines
//!   (`F16`, `SUBGROUPS`, plus per-op ones such as the dtype `W_Q4_K`); `//#if !NAME` negates;
//! - `{{KEY}}` is replaced by a value (scalar types `{{WT}}`, element loaders, ...).
//!
//! Pipelines are cached by (shader name, entry point, defines, substitutions, override
//! constants), so each specialisation compiles once per device.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kiln_core::Result;

use crate::device::WgpuBackend;
use crate::error::WgpuError;
use crate::profile::profile_name;

pub(crate) const COMMON: &str = include_str!("../shaders/common.wgsl");

/// What to compile.
pub(crate) struct ShaderSpec<'a> {
    pub(crate) name: &'static str,
    /// Source files after `common.wgsl`, in order.
    pub(crate) sources: &'a [&'static str],
    pub(crate) entry: &'static str,
    pub(crate) defines: Vec<String>,
    pub(crate) subs: Vec<(&'static str, String)>,
    pub(crate) overrides: Vec<(&'static str, f64)>,
}

impl<'a> ShaderSpec<'a> {
    pub(crate) fn new(
        name: &'static str,
        sources: &'a [&'static str],
        entry: &'static str,
    ) -> Self {
        ShaderSpec {
            name,
            sources,
            entry,
            defines: Vec::new(),
            subs: Vec::new(),
            overrides: Vec::new(),
        }
    }
    pub(crate) fn define(mut self, d: impl Into<String>) -> Self {
        self.defines.push(d.into());
        self
    }
    pub(crate) fn sub(mut self, k: &'static str, v: impl Into<String>) -> Self {
        self.subs.push((k, v.into()));
        self
    }
    pub(crate) fn over(mut self, k: &'static str, v: f64) -> Self {
        self.overrides.push((k, v));
        self
    }
    fn key(&self) -> String {
        let mut d = self.defines.clone();
        d.sort();
        format!(
            "{}|{}|{:?}|{:?}|{:?}",
            self.name, self.entry, d, self.subs, self.overrides
        )
    }
}

/// Apply the templating step to `src`.
pub(crate) fn render(
    src: &str,
    defines: &[String],
    subs: &[(&str, String)],
) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(src.len());
    // Each level: (this branch is taken, any enclosing level is off).
    let mut stack: Vec<(bool, bool)> = Vec::new();
    for (ln, line) in src.lines().enumerate() {
        let t = line.trim_start();
        let off = stack.iter().any(|&(on, _)| !on);
        if let Some(name) = t.strip_prefix("//#if ") {
            let name = name.trim();
            let (neg, name) = match name.strip_prefix('!') {
                Some(n) => (true, n),
                None => (false, name),
            };
            let on = defines.iter().any(|d| d == name) != neg;
            stack.push((on, off));
        } else if t.starts_with("//#else") {
            let top = stack
                .last_mut()
                .ok_or_else(|| format!("line {}: //#else without //#if", ln + 1))?;
            top.0 = !top.0;
        } else if t.starts_with("//#endif") {
            stack
                .pop()
                .ok_or_else(|| format!("line {}: //#endif without //#if", ln + 1))?;
        } else if !off {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !stack.is_empty() {
        return Err("unterminated //#if".into());
    }
    for (k, v) in subs {
        out = out.replace(&format!("{{{{{k}}}}}"), v);
    }
    if let Some(p) = out.find("{{") {
        let end = out[p..].find("}}").map_or(out.len(), |e| p + e + 2);
        return Err(format!("unreplaced template key {}", &out[p..end]));
    }
    Ok(out)
}

#[derive(Default)]
pub(crate) struct PipelineCache {
    map: Mutex<HashMap<String, Arc<wgpu::ComputePipeline>>>,
    /// Pipelines by a caller's short tag (`pipeline_tagged`).
    tagged: Mutex<HashMap<String, Arc<wgpu::ComputePipeline>>>,
    binds: Mutex<BindCache>,
    /// Each pipeline's name for the op profile (`profile.rs`), by the pipeline's address.
    names: Mutex<HashMap<usize, Arc<str>>>,
}

/// Bind groups already made, by (pipeline, params-ring offset, bound buffer ranges). Creating a
/// bind group is most of the CPU cost of recording an op (measured on lavapipe: ~10-19 µs of
/// ~11-21 µs per add); an op recorded again with the same buffers at the same ring slot (a
/// decode step repeats its ops in the same order from slot 0) reuses it. Entries keep their
/// buffers alive, so the cache is emptied whenever a buffer or weight was freed since it was
/// filled (`buffer::FREES`) and when it grows past `BIND_CACHE_MAX` entries.
#[derive(Default)]
struct BindCache {
    frees: u64,
    map: HashMap<BindKey, wgpu::BindGroup>,
}

#[derive(PartialEq, Eq, Hash)]
struct BindKey {
    pipeline: usize,
    param_offset: u64,
    /// (binding, buffer, offset, size) of every bound buffer after the params.
    bound: Vec<(u32, wgpu::Buffer, u64, Option<u64>)>,
}

const BIND_CACHE_MAX: usize = 8192;

/// `KILN_WGPU_BIND_CACHE=0` makes a new bind group for every op (comparison).
fn bind_cache_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("KILN_WGPU_BIND_CACHE").map_or(true, |v| v != "0"))
}

impl WgpuBackend {
    /// The pipeline cached under `tag`, from `spec()` on its first use: for call sites on the
    /// hot path whose spec is costly to build or to key (generated code in its substitutions).
    /// `tag` must name everything the spec depends on.
    pub(crate) fn pipeline_tagged<'s>(
        &self,
        tag: &str,
        spec: impl FnOnce() -> ShaderSpec<'s>,
    ) -> Result<Arc<wgpu::ComputePipeline>> {
        {
            let m = self
                .pipelines
                .tagged
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(p) = m.get(tag) {
                return Ok(p.clone());
            }
        }
        let p = self.pipeline(spec())?;
        self.pipelines
            .tagged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tag.to_string(), p.clone());
        Ok(p)
    }

    /// The compiled pipeline for `spec` (compiled on first use).
    pub(crate) fn pipeline(&self, spec: ShaderSpec<'_>) -> Result<Arc<wgpu::ComputePipeline>> {
        let key = spec.key();
        {
            let m = self.pipelines.map.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(p) = m.get(&key) {
                return Ok(p.clone());
            }
        }
        let mut defines = spec.defines.clone();
        let mut head = String::new();
        if self.f16 {
            defines.push("F16".into());
            head.push_str("enable f16;\n");
        }
        if spec.defines.iter().any(|d| d == "COOP") {
            head.push_str("enable wgpu_cooperative_matrix;\n");
        }
        if self.subgroups {
            // naga takes subgroup builtins without the `enable subgroups;` directive (and
            // rejects the directive as not yet implemented).
            defines.push("SUBGROUPS".into());
        }
        let mut full = head;
        full.push_str(COMMON);
        for s in spec.sources {
            full.push_str(s);
            full.push('\n');
        }
        let shader_err = |msg: String| WgpuError::Shader {
            device: self.dev_name(),
            shader: spec.name.to_string(),
            entry: spec.entry.to_string(),
            msg,
        };
        let text = render(&full, &defines, &spec.subs).map_err(shader_err)?;
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(spec.name),
                source: wgpu::ShaderSource::Wgsl(text.into()),
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(spec.name),
                layout: None,
                module: &module,
                entry_point: Some(spec.entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &spec.overrides,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(shader_err(e.to_string()).into());
        }
        let p = Arc::new(pipeline);
        let mut m = self.pipelines.map.lock().unwrap_or_else(|e| e.into_inner());
        m.insert(key, p.clone());
        self.pipelines
            .names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(Arc::as_ptr(&p) as usize, profile_name(&spec).into());
        Ok(p)
    }

    /// Record one dispatch: `params` go to a uniform at binding 0, `bound` to bindings 1...
    /// Workgroup counts above the per-dimension limit must be folded by the caller (see
    /// [`grid`]).
    pub(crate) fn dispatch(
        &self,
        pipeline: &wgpu::ComputePipeline,
        params: &[u8],
        bound: &[wgpu::BindGroupEntry<'_>],
        groups: (u32, u32, u32),
    ) -> Result<()> {
        if groups.0 == 0 || groups.1 == 0 || groups.2 == 0 {
            return Ok(());
        }
        self.record_dispatch(
            params,
            &|| self.pipeline_name(pipeline),
            |param_entry| self.bind_group(pipeline, param_entry, bound),
            |pass, bg| {
                pass.set_pipeline(pipeline);
                pass.set_bind_group(0, bg, &[]);
                pass.dispatch_workgroups(groups.0, groups.1, groups.2);
            },
        )
    }

    /// Record two dependent dispatches in ONE compute pass (wgpu puts the barrier between
    /// them), both reading the same `params` uniform: e.g. a small pre-pass whose output the
    /// second reads. One pass keeps the pair together (no other op is recorded between them)
    /// and lets the kernel timer time the pair as one call.
    pub(crate) fn dispatch2(
        &self,
        params: &[u8],
        first: (
            &wgpu::ComputePipeline,
            &[wgpu::BindGroupEntry<'_>],
            (u32, u32, u32),
        ),
        second: (
            &wgpu::ComputePipeline,
            &[wgpu::BindGroupEntry<'_>],
            (u32, u32, u32),
        ),
    ) -> Result<()> {
        let empty = |g: (u32, u32, u32)| g.0 == 0 || g.1 == 0 || g.2 == 0;
        if empty(first.2) || empty(second.2) {
            return Err(kiln_core::Error::Invalid(
                "dispatch2: an empty grid (the pair must run together)".into(),
            ));
        }
        self.record_dispatch(
            params,
            &|| {
                format!(
                    "{}+{}",
                    self.pipeline_name(first.0),
                    self.pipeline_name(second.0)
                )
                .into()
            },
            |pe| {
                (
                    self.bind_group(first.0, pe.clone(), first.1),
                    self.bind_group(second.0, pe, second.1),
                )
            },
            |pass, (b1, b2)| {
                pass.set_pipeline(first.0);
                pass.set_bind_group(0, b1, &[]);
                pass.dispatch_workgroups(first.2.0, first.2.1, first.2.2);
                pass.set_pipeline(second.0);
                pass.set_bind_group(0, b2, &[]);
                pass.dispatch_workgroups(second.2.0, second.2.1, second.2.2);
            },
        )
    }

    /// The name `pipeline` was made under (`profile_name`), for the op profile.
    pub(crate) fn pipeline_name(&self, pipeline: &wgpu::ComputePipeline) -> Arc<str> {
        let names = self
            .pipelines
            .names
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        names
            .get(&(pipeline as *const wgpu::ComputePipeline as usize))
            .cloned()
            .unwrap_or_else(|| "?".into())
    }

    /// The bind group of `pipeline` with `param_entry` at binding 0 and `bound` after it, from
    /// the cache when the same one was made before.
    fn bind_group(
        &self,
        pipeline: &wgpu::ComputePipeline,
        param_entry: wgpu::BindGroupEntry<'_>,
        bound: &[wgpu::BindGroupEntry<'_>],
    ) -> wgpu::BindGroup {
        let make = |param_entry: wgpu::BindGroupEntry<'_>| {
            let mut entries = Vec::with_capacity(bound.len() + 1);
            entries.push(param_entry);
            entries.extend(bound.iter().cloned());
            self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &pipeline.get_bind_group_layout(0),
                entries: &entries,
            })
        };
        let Some(key) = bind_key(pipeline, &param_entry, bound) else {
            return make(param_entry);
        };
        let mut c = self
            .pipelines
            .binds
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let frees = crate::buffer::FREES.load(std::sync::atomic::Ordering::Relaxed);
        if c.frees != frees || c.map.len() >= BIND_CACHE_MAX {
            c.map.clear();
            c.frees = frees;
        }
        if let Some(bg) = c.map.get(&key) {
            return bg.clone();
        }
        let bg = make(param_entry);
        c.map.insert(key, bg.clone());
        bg
    }

    /// Fold `n` workgroups into (x, y) under the per-dimension limit; shaders recover the
    /// linear index as `wid.x + wid.y * nwg.x`.
    pub(crate) fn grid(&self, n: u32) -> (u32, u32) {
        let max = self.limits.max_compute_workgroups_per_dimension.max(1);
        if n <= max {
            (n, 1)
        } else {
            (max, n.div_ceil(max))
        }
    }
}

/// The cache key of a dispatch whose entries are all buffer ranges (None otherwise, or when
/// the cache is off).
fn bind_key(
    pipeline: &wgpu::ComputePipeline,
    param: &wgpu::BindGroupEntry<'_>,
    bound: &[wgpu::BindGroupEntry<'_>],
) -> Option<BindKey> {
    if !bind_cache_on() {
        return None;
    }
    let wgpu::BindingResource::Buffer(p) = &param.resource else {
        return None;
    };
    let mut v = Vec::with_capacity(bound.len());
    for e in bound {
        let wgpu::BindingResource::Buffer(b) = &e.resource else {
            return None;
        };
        v.push((
            e.binding,
            b.buffer.clone(),
            b.offset,
            b.size.map(|s| s.get()),
        ));
    }
    Some(BindKey {
        pipeline: pipeline as *const wgpu::ComputePipeline as usize,
        param_offset: p.offset,
        bound: v,
    })
}

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn templating_keeps_the_right_branches() {
        let src = "a\n//#if X\nb\n//#if !Y\nc\n//#else\nd\n//#endif\n//#else\ne\n//#endif\n{{T}}\n";
        let d = vec!["X".to_string()];
        let out = render(src, &d, &[("T", "f16".into())]).unwrap();
        assert_eq!(out, "a\nb\nc\nf16\n");
        let out = render(src, &[], &[("T", "f32".into())]).unwrap();
        assert_eq!(out, "a\ne\nf32\n");
        assert!(render("{{Q}}", &[], &[]).is_err());
        assert!(render("//#if A\n", &[], &[]).is_err());
    }
}
