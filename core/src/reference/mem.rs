//! Host memory for the reference backend, and the access guard ops use.
//!
//! Soundness: a `HostMem` is only read or written while its device's queue lock is held (an
//! `Access` holds it), so no two threads touch device memory at once. Inside one op, the
//! `Access` records every range it hands out and refuses an output that overlaps any other
//! range, or an input that overlaps an output: `&[u8]` and `&mut [u8]` never alias.

use std::cell::{RefCell, UnsafeCell};
use std::sync::MutexGuard;

use crate::devices::DeviceId;
use crate::error::{Error, Result};
use crate::tensor::{Buffer, View, ViewMut};

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; 64]);

/// `len` bytes, 64-byte aligned, zero-initialised.
pub(crate) struct HostMem {
    data: UnsafeCell<Box<[Line]>>,
    len: usize,
}

// SAFETY: every access goes through `Access`, which holds the owning device's queue mutex, so
// accesses from different threads are serialised.
unsafe impl Sync for HostMem {}
// SAFETY: the memory is plain bytes with no thread affinity.
unsafe impl Send for HostMem {}

impl HostMem {
    pub(crate) fn new(len: usize) -> Result<HostMem> {
        let lines = len.div_ceil(64);
        let mut v = Vec::new();
        v.try_reserve_exact(lines).map_err(|_| Error::OutOfMemory {
            device: "reference".into(),
            requested: len as u64,
        })?;
        v.resize(lines, Line([0; 64]));
        Ok(HostMem {
            data: UnsafeCell::new(v.into_boxed_slice()),
            len,
        })
    }

    fn base(&self) -> *mut u8 {
        // SAFETY: taking the pointer of the boxed slice does not create a reference to its
        // contents; the box lives as long as self.
        unsafe { (*self.data.get()).as_mut_ptr().cast::<u8>() }
    }
}

/// Exclusive access to one reference device's memory for the duration of one op.
pub(crate) struct Access<'g> {
    _queue: MutexGuard<'g, ()>,
    device: DeviceId,
    /// (buffer base address, start, end, is_output) of every range handed out.
    issued: RefCell<Vec<(usize, usize, usize, bool)>>,
}

impl<'g> Access<'g> {
    pub(crate) fn new(queue: MutexGuard<'g, ()>, device: DeviceId) -> Access<'g> {
        Access {
            _queue: queue,
            device,
            issued: RefCell::new(Vec::new()),
        }
    }

    fn mem<'b>(&self, buf: &'b Buffer) -> Result<&'b HostMem> {
        if buf.device() != self.device {
            return Err(Error::View(format!(
                "buffer of {} used on {}",
                buf.device(),
                self.device
            )));
        }
        buf.downcast::<HostMem>().ok_or_else(|| {
            Error::View(format!(
                "buffer on {} is not reference host memory",
                self.device
            ))
        })
    }

    fn claim(&self, mem: &HostMem, start: usize, len: usize, out: bool) -> Result<*mut u8> {
        let end = start
            .checked_add(len)
            .filter(|&e| e <= mem.len)
            .ok_or_else(|| {
                Error::View(format!(
                    "bytes {start}+{len} outside a buffer of {} bytes",
                    mem.len
                ))
            })?;
        let base = mem.base() as usize;
        let mut issued = self.issued.borrow_mut();
        for &(b, s, e, o) in issued.iter() {
            if b == base && s < end && start < e && (o || out) {
                return Err(Error::View(format!(
                    "bytes {start}..{end} overlap bytes {s}..{e} of the same buffer, and one of them is an output"
                )));
            }
        }
        issued.push((base, start, end, out));
        // SAFETY: start + len ≤ mem.len was checked above, so the offset stays in the allocation.
        Ok(unsafe { mem.base().add(start) })
    }

    /// Raw bytes `offset..offset+len` of `buf` for reading.
    pub(crate) fn bytes(&self, buf: &Buffer, offset: usize, len: usize) -> Result<&[u8]> {
        let mem = self.mem(buf)?;
        let p = self.claim(mem, offset, len, false)?;
        // SAFETY: in bounds (claim), no overlapping output was or will be issued in this op
        // (claim), and the queue lock keeps other threads out.
        Ok(unsafe { std::slice::from_raw_parts(p, len) })
    }

    /// Raw bytes for writing.
    #[allow(clippy::mut_from_ref)]
    pub(crate) fn bytes_mut(&self, buf: &Buffer, offset: usize, len: usize) -> Result<&mut [u8]> {
        let mem = self.mem(buf)?;
        let p = self.claim(mem, offset, len, true)?;
        // SAFETY: as in `bytes`; additionally no other range of these bytes was handed out.
        Ok(unsafe { std::slice::from_raw_parts_mut(p, len) })
    }

    pub(crate) fn input(&self, v: &View<'_>) -> Result<&[u8]> {
        self.bytes(v.buffer(), v.offset(), v.bytes())
    }

    #[allow(clippy::mut_from_ref)]
    pub(crate) fn output(&self, v: &ViewMut<'_>) -> Result<&mut [u8]> {
        self.bytes_mut(v.buffer(), v.offset(), v.bytes())
    }

    /// An f32 view as `&[f32]` (views are aligned by construction, buffers 64-byte aligned).
    pub(crate) fn f32s(&self, v: &View<'_>) -> Result<&[f32]> {
        bytemuck::try_cast_slice(self.input(v)?).map_err(|e| Error::View(format!("f32 view: {e}")))
    }

    #[allow(clippy::mut_from_ref)]
    pub(crate) fn f32s_mut(&self, v: &ViewMut<'_>) -> Result<&mut [f32]> {
        bytemuck::try_cast_slice_mut(self.output(v)?)
            .map_err(|e| Error::View(format!("f32 view: {e}")))
    }

    pub(crate) fn i32s(&self, v: &View<'_>) -> Result<&[i32]> {
        bytemuck::try_cast_slice(self.input(v)?).map_err(|e| Error::View(format!("i32 view: {e}")))
    }
}
