//! [`Registry`]: several named models under one memory budget per device.
//!
//! Each model has a [`ModelSpec`] (name, where it comes from, devices, engine options) and a
//! state: unloaded, loading, ready or evicting. [`Registry::acquire`] returns a [`Lease`] on a
//! ready model, loading it first when needed; a lease is one in-flight use (a request), and a
//! model with a lease is busy: it is never evicted. Dropping the lease makes the model idle
//! again (it stays loaded).
//!
//! Memory is decided BEFORE loading: the registry asks its footprint function (the planner's
//! per-device bytes: weights + KV + activations + workspaces) for the model's [`Footprint`],
//! reserves those bytes on every device, and only then calls the loader. When the bytes do
//! not fit next to what is loaded, idle ready models are evicted least recently used first —
//! only models that hold bytes on a device that is short — until they fit. When they cannot
//! fit even with every idle model evicted (the rest are busy or loading), `acquire` fails with
//! [`ModelError::NoRoom`] naming the model, the device and the byte numbers.
//!
//! Accounting: `used[d]` is the sum of the footprints of the models that are loading, ready or
//! evicting, and `used[d] ≤ budget[d]` at every moment ([`Registry::check`] verifies both).
//! A model's bytes are reserved when it starts loading and returned when its eviction has
//! dropped it (so the evicted model's memory is gone before a new model's load begins).
//!
//! Blocking: `acquire` runs the footprint function and the loader on the caller's thread
//! without the registry's lock; callers of the same model wait for its load (a condition
//! variable), callers of other models do not.

mod spec;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use kiln_core::DeviceId;

pub use spec::{
    EngineLoaderFn, Footprint, FootprintFn, LoaderFn, ModelSpec, ModelState, ModelStatus, Served,
};

use super::Engine;
use crate::error::{ModelError, Result};

enum Slot<T> {
    Unloaded,
    Loading,
    Ready(Arc<T>),
    Evicting,
}

impl<T> Slot<T> {
    fn state(&self) -> ModelState {
        match self {
            Slot::Unloaded => ModelState::Unloaded,
            Slot::Loading => ModelState::Loading,
            Slot::Ready(_) => ModelState::Ready,
            Slot::Evicting => ModelState::Evicting,
        }
    }
}

struct Entry<T> {
    spec: ModelSpec,
    slot: Slot<T>,
    footprint: Option<Footprint>,
    busy: usize,
    last_used: u64,
    loads: u64,
    evictions: u64,
}

impl<T> Entry<T> {
    /// Holds reserved bytes (loading, ready or evicting).
    fn holds(&self) -> bool {
        !matches!(self.slot, Slot::Unloaded)
    }
    fn idle_ready(&self) -> bool {
        matches!(self.slot, Slot::Ready(_)) && self.busy == 0
    }
}

struct Book<T> {
    entries: Vec<Entry<T>>,
    used: BTreeMap<DeviceId, u64>,
    clock: u64,
}

impl<T> Book<T> {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }
    fn find(&self, name: &str) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| e.spec.name == name)
            .or_else(|| {
                self.entries
                    .iter()
                    .position(|e| e.spec.aliases.iter().any(|a| a == name))
            })
    }
    fn names(&self) -> String {
        let v: Vec<&str> = self.entries.iter().map(|e| e.spec.name.as_str()).collect();
        v.join(", ")
    }
    fn used_on(&self, d: DeviceId) -> u64 {
        self.used.get(&d).copied().unwrap_or(0)
    }
    fn reserve(&mut self, fp: &Footprint) {
        for (d, b) in fp.iter() {
            *self.used.entry(d).or_insert(0) += b;
        }
    }
    fn unreserve(&mut self, fp: &Footprint) {
        for (d, b) in fp.iter() {
            let u = self.used.entry(d).or_insert(0);
            *u = u.saturating_sub(b);
        }
        self.used.retain(|_, b| *b > 0);
    }
}

struct Shared<T> {
    book: Mutex<Book<T>>,
    changed: Condvar,
    budget: BTreeMap<DeviceId, u64>,
    footprint: FootprintFn,
    loader: LoaderFn<T>,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, Book<T>> {
        // A panic while the lock is held leaves the book consistent (every change is made
        // in one step), so a poisoned lock is taken over.
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn wait<'a>(&self, g: MutexGuard<'a, Book<T>>) -> MutexGuard<'a, Book<T>> {
        self.changed.wait(g).unwrap_or_else(|p| p.into_inner())
    }
    fn budget_on(&self, d: DeviceId) -> u64 {
        self.budget.get(&d).copied().unwrap_or(0)
    }
    fn release(&self, idx: usize) {
        let mut b = self.lock();
        let t = b.tick();
        if let Some(e) = b.entries.get_mut(idx) {
            e.busy = e.busy.saturating_sub(1);
            e.last_used = t;
        }
        drop(b);
        self.changed.notify_all();
    }
}

/// Several models under one per-device memory budget (see the module docs). Cloning gives
/// another handle on the same registry.
pub struct Registry<T = Served> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Registry<T> {
    fn clone(&self) -> Self {
        Registry {
            shared: self.shared.clone(),
        }
    }
}

impl<T> fmt::Debug for Registry<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.shared.lock();
        f.debug_struct("Registry")
            .field("models", &b.names())
            .field("budget", &self.shared.budget)
            .field("used", &b.used)
            .finish()
    }
}

/// One in-flight use of a ready model; the model cannot be evicted while a lease is out.
/// Dereferences to the loaded value; dropping it makes the model idle.
pub struct Lease<T = Served> {
    value: Option<Arc<T>>,
    idx: usize,
    name: String,
    shared: Arc<Shared<T>>,
}

impl<T> Lease<T> {
    /// The model's registered name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl<T> std::ops::Deref for Lease<T> {
    type Target = T;
    fn deref(&self) -> &T {
        match &self.value {
            Some(v) => v,
            // `value` is only taken in `drop`.
            None => unreachable!("a lease is used after drop"),
        }
    }
}

impl<T> Drop for Lease<T> {
    fn drop(&mut self) {
        // Our reference goes first, so an eviction that sees `busy == 0` holds the only one.
        drop(self.value.take());
        self.shared.release(self.idx);
    }
}

impl<T> fmt::Debug for Lease<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Lease({})", self.name)
    }
}

/// Resets a model left `Loading` by a failed or panicking loader.
struct LoadGuard<'a, T> {
    shared: &'a Shared<T>,
    idx: usize,
    fp: Footprint,
    armed: bool,
}

impl<T> Drop for LoadGuard<'_, T> {
    fn drop(&mut self) {
        if self.armed {
            let mut b = self.shared.lock();
            b.unreserve(&self.fp);
            if let Some(e) = b.entries.get_mut(self.idx) {
                e.slot = Slot::Unloaded;
            }
            drop(b);
            self.shared.changed.notify_all();
        }
    }
}

/// What one look at the book decided.
enum Next<T> {
    Leased(Lease<T>),
    Footprint(ModelSpec),
    Evict(Vec<(usize, Arc<T>)>),
    Load(ModelSpec, Footprint),
    Wait,
    Skip,
}

impl<T: Send + Sync + 'static> Registry<T> {
    /// A registry with `budget` bytes per device, the planner's `footprint` function and a
    /// `loader`. A device without a budget has none (0 bytes).
    pub fn new(
        budget: impl IntoIterator<Item = (DeviceId, u64)>,
        footprint: FootprintFn,
        loader: LoaderFn<T>,
    ) -> Registry<T> {
        Registry {
            shared: Arc::new(Shared {
                book: Mutex::new(Book {
                    entries: Vec::new(),
                    used: BTreeMap::new(),
                    clock: 0,
                }),
                changed: Condvar::new(),
                budget: budget.into_iter().collect(),
                footprint,
                loader,
            }),
        }
    }

    /// Add a model (unloaded). Its name and aliases must not collide with a registered name.
    pub fn register(&self, spec: ModelSpec) -> Result<()> {
        let mut b = self.shared.lock();
        if spec.name.is_empty() {
            return Err(ModelError::Runtime(format!(
                "registry: model '{}' needs a non-empty name",
                spec.source
            )));
        }
        for n in std::iter::once(&spec.name).chain(&spec.aliases) {
            if b.entries.iter().any(|e| &e.spec.name == n) {
                return Err(ModelError::Runtime(format!(
                    "registry: the name '{n}' of '{}' is already registered (give each model \
                     its own name)",
                    spec.source
                )));
            }
        }
        b.entries.push(Entry {
            spec,
            slot: Slot::Unloaded,
            footprint: None,
            busy: 0,
            last_used: 0,
            loads: 0,
            evictions: 0,
        });
        Ok(())
    }

    /// A lease on `name` (a registered name or alias), loading it first when it is not
    /// ready — after evicting idle models least recently used first when its footprint does
    /// not fit. Errors: [`ModelError::UnknownModel`], [`ModelError::NoRoom`], or what the
    /// footprint function or the loader returned.
    pub fn acquire(&self, name: &str) -> Result<Lease<T>> {
        match self.get(name, true)? {
            Some(l) => Ok(l),
            None => Err(ModelError::Runtime(format!(
                "registry: '{name}' was not loaded"
            ))),
        }
    }

    /// Load `name` if it fits without evicting anything (and is not loaded yet); returns
    /// whether it is ready afterwards. For loading models at start.
    pub fn preload(&self, name: &str) -> Result<bool> {
        Ok(self.get(name, false)?.is_some())
    }

    /// A lease on `name` only if it is ready now (never loads, never waits).
    pub fn try_acquire(&self, name: &str) -> Option<Lease<T>> {
        let mut b = self.shared.lock();
        let idx = b.find(name)?;
        let v = match &b.entries[idx].slot {
            Slot::Ready(v) => v.clone(),
            _ => return None,
        };
        Some(self.lease(&mut b, idx, v))
    }

    /// `f` on `name`'s loaded value if it is ready, under the registry's lock (keep `f` short:
    /// a stats read). Unlike a lease it does not count as a use (LRU order is unchanged).
    pub fn inspect<R>(&self, name: &str, f: impl FnOnce(&T) -> R) -> Option<R> {
        let b = self.shared.lock();
        let idx = b.find(name)?;
        match &b.entries[idx].slot {
            Slot::Ready(v) => Some(f(v)),
            _ => None,
        }
    }

    /// Evict `name` now if it is ready and idle; returns whether it was evicted.
    pub fn unload(&self, name: &str) -> Result<bool> {
        let mut b = self.shared.lock();
        let idx = b.find(name).ok_or_else(|| unknown(&b, name))?;
        if !b.entries[idx].idle_ready() {
            return Ok(false);
        }
        let victim = take_for_eviction(&mut b, idx);
        drop(b);
        self.finish_evictions(victim.into_iter().collect());
        Ok(true)
    }

    /// Every model's state, in registration order.
    pub fn status(&self) -> Vec<ModelStatus> {
        let b = self.shared.lock();
        b.entries
            .iter()
            .map(|e| ModelStatus {
                name: e.spec.name.clone(),
                state: e.slot.state(),
                busy: e.busy,
                footprint: e.footprint.clone(),
                last_used: e.last_used,
                loads: e.loads,
                evictions: e.evictions,
            })
            .collect()
    }

    /// The registered specs, in registration order.
    pub fn specs(&self) -> Vec<ModelSpec> {
        let b = self.shared.lock();
        b.entries.iter().map(|e| e.spec.clone()).collect()
    }

    /// The spec `name` resolves to.
    pub fn spec(&self, name: &str) -> Option<ModelSpec> {
        let b = self.shared.lock();
        b.find(name).map(|i| b.entries[i].spec.clone())
    }

    /// Registered names, in registration order.
    pub fn names(&self) -> Vec<String> {
        let b = self.shared.lock();
        b.entries.iter().map(|e| e.spec.name.clone()).collect()
    }

    /// Bytes reserved per device (models loading, ready or evicting).
    pub fn used(&self) -> BTreeMap<DeviceId, u64> {
        self.shared.lock().used.clone()
    }

    /// The budget per device.
    pub fn budget(&self) -> &BTreeMap<DeviceId, u64> {
        &self.shared.budget
    }

    /// Verify the accounting: `used` equals the sum of the footprints of the models holding
    /// memory, within the budget on every device, and only ready models are busy.
    pub fn check(&self) -> Result<()> {
        let b = self.shared.lock();
        let mut sum: BTreeMap<DeviceId, u64> = BTreeMap::new();
        for e in &b.entries {
            if e.busy > 0 && !matches!(e.slot, Slot::Ready(_)) {
                return Err(ModelError::Runtime(format!(
                    "registry: '{}' has {} leases but is {}",
                    e.spec.name,
                    e.busy,
                    e.slot.state().name()
                )));
            }
            if e.holds() {
                let fp = e.footprint.as_ref().ok_or_else(|| {
                    ModelError::Runtime(format!(
                        "registry: '{}' holds memory without a footprint",
                        e.spec.name
                    ))
                })?;
                for (d, n) in fp.iter() {
                    *sum.entry(d).or_insert(0) += n;
                }
            }
        }
        if sum != b.used {
            return Err(ModelError::Runtime(format!(
                "registry: used {:?} != sum of loaded footprints {sum:?}",
                b.used
            )));
        }
        for (d, u) in &b.used {
            let cap = self.shared.budget_on(*d);
            if *u > cap {
                return Err(ModelError::Runtime(format!(
                    "registry: {u} bytes used on {d}, over the budget of {cap}"
                )));
            }
        }
        Ok(())
    }

    fn lease(&self, b: &mut Book<T>, idx: usize, v: Arc<T>) -> Lease<T> {
        let t = b.tick();
        let e = &mut b.entries[idx];
        e.busy += 1;
        e.last_used = t;
        Lease {
            value: Some(v),
            idx,
            name: e.spec.name.clone(),
            shared: self.shared.clone(),
        }
    }

    /// The acquire loop; `evict == false` is `preload` (returns `None` instead of evicting
    /// or waiting for room).
    fn get(&self, name: &str, evict: bool) -> Result<Option<Lease<T>>> {
        let sh = &*self.shared;
        let mut b = sh.lock();
        let idx = b.find(name).ok_or_else(|| unknown(&b, name))?;
        loop {
            match self.decide(&mut b, idx, evict)? {
                Next::Leased(l) => return Ok(Some(l)),
                Next::Skip => return Ok(None),
                Next::Wait => b = sh.wait(b),
                Next::Footprint(spec) => {
                    drop(b);
                    let fp = (sh.footprint)(&spec)?;
                    b = sh.lock();
                    let e = &mut b.entries[idx];
                    if e.footprint.is_none() {
                        e.footprint = Some(fp);
                    }
                }
                Next::Evict(victims) => {
                    drop(b);
                    self.finish_evictions(victims);
                    b = sh.lock();
                }
                Next::Load(spec, fp) => {
                    drop(b);
                    let mut guard = LoadGuard {
                        shared: sh,
                        idx,
                        fp,
                        armed: true,
                    };
                    let value = Arc::new((sh.loader)(&spec)?);
                    b = sh.lock();
                    guard.armed = false;
                    drop(guard);
                    let e = &mut b.entries[idx];
                    e.slot = Slot::Ready(value.clone());
                    e.loads += 1;
                    let lease = self.lease(&mut b, idx, value);
                    drop(b);
                    sh.changed.notify_all();
                    return Ok(Some(lease));
                }
            }
        }
    }

    /// One decision under the lock.
    fn decide(&self, b: &mut Book<T>, idx: usize, evict: bool) -> Result<Next<T>> {
        let e = &b.entries[idx];
        match &e.slot {
            Slot::Ready(v) => {
                let v = v.clone();
                return Ok(Next::Leased(self.lease(b, idx, v)));
            }
            Slot::Loading | Slot::Evicting => return Ok(Next::Wait),
            Slot::Unloaded => {}
        }
        let Some(fp) = e.footprint.clone() else {
            return Ok(Next::Footprint(e.spec.clone()));
        };
        let sh = &*self.shared;
        let short = |b: &Book<T>, freed: &BTreeMap<DeviceId, u64>| -> Vec<DeviceId> {
            fp.iter()
                .filter(|&(d, n)| {
                    let free = freed.get(&d).copied().unwrap_or(0);
                    b.used_on(d) - free + n > sh.budget_on(d)
                })
                .map(|(d, _)| d)
                .collect()
        };
        let none = BTreeMap::new();
        if short(b, &none).is_empty() {
            b.reserve(&fp);
            b.entries[idx].slot = Slot::Loading;
            return Ok(Next::Load(b.entries[idx].spec.clone(), fp));
        }
        if !evict {
            return Ok(Next::Skip);
        }
        // Another eviction is under way: its bytes come back soon; look again then.
        if b.entries.iter().any(|e| matches!(e.slot, Slot::Evicting)) {
            return Ok(Next::Wait);
        }
        // Idle ready models, least recently used first.
        let mut idle: Vec<usize> = (0..b.entries.len())
            .filter(|&i| b.entries[i].idle_ready())
            .collect();
        idle.sort_by_key(|&i| b.entries[i].last_used);
        let mut freed: BTreeMap<DeviceId, u64> = BTreeMap::new();
        let mut victims = Vec::new();
        for i in idle {
            let still = short(b, &freed);
            if still.is_empty() {
                break;
            }
            let Some(vfp) = b.entries[i].footprint.as_ref() else {
                continue;
            };
            if still.iter().any(|d| vfp.get(*d) > 0) {
                for (d, n) in vfp.iter() {
                    *freed.entry(d).or_insert(0) += n;
                }
                victims.push(i);
            }
        }
        if let Some(&d) = short(b, &freed).first() {
            return Err(self.no_room(b, idx, d, fp.get(d)));
        }
        let taken = victims
            .into_iter()
            .filter_map(|i| take_for_eviction(b, i))
            .collect();
        Ok(Next::Evict(taken))
    }

    /// Drop evicted models (outside the lock: an engine joins its thread, device memory is
    /// freed), then return their bytes.
    fn finish_evictions(&self, victims: Vec<(usize, Arc<T>)>) {
        let mut done = Vec::with_capacity(victims.len());
        for (i, v) in victims {
            drop(v);
            done.push(i);
        }
        let mut b = self.shared.lock();
        for i in done {
            let fp = b.entries[i].footprint.clone().unwrap_or_default();
            b.unreserve(&fp);
            b.entries[i].slot = Slot::Unloaded;
        }
        drop(b);
        self.shared.changed.notify_all();
    }

    fn no_room(&self, b: &Book<T>, idx: usize, d: DeviceId, need: u64) -> ModelError {
        let mut pinned = 0;
        let mut held_by = Vec::new();
        for e in &b.entries {
            let n = e.footprint.as_ref().map_or(0, |f| f.get(d));
            if e.holds() && !e.idle_ready() && n > 0 {
                pinned += n;
                let why = if e.busy > 0 {
                    format!("{} in flight", e.busy)
                } else {
                    e.slot.state().name().to_string()
                };
                held_by.push(format!("'{}' {n} bytes, {why}", e.spec.name));
            }
        }
        let budget = self.shared.budget_on(d);
        ModelError::NoRoom {
            model: b.entries[idx].spec.name.clone(),
            device: d.to_string(),
            need,
            budget,
            pinned,
            held_by: if held_by.is_empty() {
                "none".into()
            } else {
                held_by.join("; ")
            },
            free_at_most: budget.saturating_sub(pinned),
        }
    }
}

/// Mark an idle ready model evicting and take its value out (its bytes stay reserved until
/// `finish_evictions`).
fn take_for_eviction<T>(b: &mut Book<T>, i: usize) -> Option<(usize, Arc<T>)> {
    let e = &mut b.entries[i];
    match std::mem::replace(&mut e.slot, Slot::Evicting) {
        Slot::Ready(v) => {
            e.evictions += 1;
            Some((i, v))
        }
        other => {
            e.slot = other;
            None
        }
    }
}

fn unknown<T>(b: &Book<T>, name: &str) -> ModelError {
    ModelError::UnknownModel {
        name: name.to_string(),
        known: b.names(),
    }
}

impl Registry<Served> {
    /// A registry whose models run in an [`Engine`]: `loader` loads the model and gives its
    /// engine options; the engine is started here and shut down at eviction.
    pub fn serving(
        budget: impl IntoIterator<Item = (DeviceId, u64)>,
        footprint: FootprintFn,
        loader: EngineLoaderFn,
    ) -> Registry<Served> {
        Registry::new(
            budget,
            footprint,
            Box::new(move |spec| {
                let (model, opts) = loader(spec)?;
                let engine = Engine::start(model.clone(), opts)?;
                Ok(Served { engine, model })
            }),
        )
    }
}
