//! [`Engine`]: a [`Scheduler`] on its own thread. Callers submit requests from any thread and
//! receive events through a [`RequestHandle`] (a channel) or their own [`EventSink`]; the
//! thread steps while there is work and sleeps on its command channel when idle.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::scheduler::{EngineOptions, EngineStats, Scheduler, validate};
use super::{Event, EventSink, RequestId};
use crate::error::{ModelError, Result};
use crate::runtime::Model;
use crate::runtime::generate::GenerateOptions;

/// What to do with requests in flight at shutdown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownMode {
    /// Finish every queued and running request, then stop.
    Drain,
    /// Cancel them (each gets its `Finished` event with `Cancelled`), then stop.
    Cancel,
}

enum Cmd {
    Submit {
        id: RequestId,
        prompt: Vec<u32>,
        opts: GenerateOptions,
        sink: Box<dyn EventSink>,
        cancel: Arc<AtomicBool>,
    },
    Shutdown(ShutdownMode),
}

/// Facts fixed at start, for validation on the caller's thread.
#[derive(Clone, Copy, Debug)]
struct Limits {
    vocab: usize,
    context: usize,
    block_size: usize,
    total_blocks: usize,
    max_queue: usize,
}

/// A scheduler running on its own thread (see the module docs).
pub struct Engine {
    tx: Sender<Cmd>,
    thread: Option<JoinHandle<()>>,
    queued: Arc<AtomicUsize>,
    next_id: AtomicU64,
    stats: Arc<Mutex<EngineStats>>,
    limits: Limits,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("limits", &self.limits)
            .finish()
    }
}

/// A submitted request: its events, and cancellation (also on drop).
pub struct RequestHandle {
    pub id: RequestId,
    events: Receiver<Event>,
    cancel: Arc<AtomicBool>,
}

impl std::fmt::Debug for RequestHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RequestHandle({})", self.id)
    }
}

impl RequestHandle {
    /// The next event; `None` once the request has finished and every event was received.
    pub fn recv(&self) -> Option<Event> {
        self.events.recv().ok()
    }
    /// The next event if one arrives within `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Event> {
        self.events.recv_timeout(timeout).ok()
    }
    /// Ask the engine to cancel the request; its blocks are freed at the next step and a
    /// `Finished` event with `Cancelled` follows.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

impl Drop for RequestHandle {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

impl Engine {
    /// Start an engine for `model` on a new thread (the runtime is built there; a failure to
    /// build it is returned here).
    pub fn start(model: Arc<Model>, opts: EngineOptions) -> Result<Engine> {
        let (tx, rx) = channel::<Cmd>();
        let (ready_tx, ready_rx) = channel::<Result<(Limits, Arc<AtomicUsize>)>>();
        let stats = Arc::new(Mutex::new(EngineStats::default()));
        let thread_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name("kiln-engine".into())
            .spawn(move || {
                let sched = match Scheduler::new(&model, opts) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let limits = Limits {
                    vocab: model.config().vocab,
                    context: sched.context(),
                    block_size: sched.runtime().kv().block_size(),
                    total_blocks: sched.total_blocks(),
                    max_queue: sched.options().max_queue,
                };
                publish(&sched, &thread_stats);
                if ready_tx.send(Ok((limits, sched.queued_counter()))).is_err() {
                    return;
                }
                serve(sched, &rx, &thread_stats);
            })
            .map_err(|e| ModelError::Runtime(format!("starting the engine thread: {e}")))?;
        let (limits, queued) = ready_rx
            .recv()
            .map_err(|_| ModelError::Runtime("the engine thread ended while starting".into()))??;
        Ok(Engine {
            tx,
            thread: Some(thread),
            queued,
            next_id: AtomicU64::new(0),
            stats,
            limits,
        })
    }

    /// Tokens per sequence.
    pub fn context(&self) -> usize {
        self.limits.context
    }

    /// The state after the last step.
    pub fn stats(&self) -> EngineStats {
        self.stats.lock().map(|s| *s).unwrap_or_default()
    }

    /// Submit a request; events come through the returned handle (dropping it cancels).
    pub fn submit(&self, prompt: Vec<u32>, opts: GenerateOptions) -> Result<RequestHandle> {
        let (tx, rx) = channel();
        let (id, cancel) = self.submit_with(prompt, opts, Box::new(tx))?;
        Ok(RequestHandle {
            id,
            events: rx,
            cancel,
        })
    }

    /// Submit a request whose events go to `sink` (a closed sink cancels it). Returns its
    /// id and cancel flag. Refused with [`ModelError::QueueFull`] when `max_queue` requests wait, and
    /// with a runtime error when the prompt cannot be served.
    pub fn submit_with(
        &self,
        prompt: Vec<u32>,
        opts: GenerateOptions,
        sink: Box<dyn EventSink>,
    ) -> Result<(RequestId, Arc<AtomicBool>)> {
        let l = self.limits;
        validate(&prompt, l.vocab, l.context, l.block_size, l.total_blocks)?;
        if self.queued.fetch_add(1, Ordering::SeqCst) >= l.max_queue {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(ModelError::QueueFull { max: l.max_queue });
        }
        let cancel = Arc::new(AtomicBool::new(false));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let cmd = Cmd::Submit {
            id,
            prompt,
            opts,
            sink,
            cancel: cancel.clone(),
        };
        if self.tx.send(cmd).is_err() {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(ModelError::Runtime("the engine has stopped".into()));
        }
        Ok((id, cancel))
    }

    /// Stop the engine: drain or cancel what is in flight, then join the thread.
    pub fn shutdown(mut self, mode: ShutdownMode) {
        self.stop(mode);
    }

    fn stop(&mut self, mode: ShutdownMode) {
        let _ = self.tx.send(Cmd::Shutdown(mode));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop(ShutdownMode::Cancel);
    }
}

/// The engine thread's loop.
fn serve(mut sched: Scheduler<'_>, rx: &Receiver<Cmd>, stats: &Mutex<EngineStats>) {
    let mut stopping = None;
    loop {
        // Take every command waiting; block for one only when there is nothing to do.
        loop {
            let cmd = if sched.is_idle() && stopping.is_none() {
                match rx.recv() {
                    Ok(c) => Some(c),
                    Err(_) => {
                        stopping = Some(ShutdownMode::Cancel);
                        None
                    }
                }
            } else {
                match rx.try_recv() {
                    Ok(c) => Some(c),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => {
                        stopping.get_or_insert(ShutdownMode::Cancel);
                        None
                    }
                }
            };
            match cmd {
                Some(Cmd::Submit {
                    id,
                    prompt,
                    opts,
                    sink,
                    cancel,
                }) => {
                    sched.enqueue(id, prompt, opts, sink, cancel);
                }
                Some(Cmd::Shutdown(m)) => {
                    stopping = Some(m);
                }
                None => break,
            }
        }
        if stopping == Some(ShutdownMode::Cancel) {
            sched.cancel_all();
        }
        if stopping.is_some() && sched.is_idle() {
            publish(&sched, stats);
            return;
        }
        if let Err(e) = sched.step() {
            // The running requests got an error event; the engine goes on with the rest.
            log_step_error(&e);
        }
        publish(&sched, stats);
    }
}

fn publish(sched: &Scheduler<'_>, stats: &Mutex<EngineStats>) {
    if let Ok(mut s) = stats.lock() {
        *s = sched.stats();
    }
}

/// A failed step is reported to its requests; this notes it on stderr for the operator.
fn log_step_error(e: &ModelError) {
    eprintln!("kiln engine: {e}");
}
