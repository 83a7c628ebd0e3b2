//! Device buffers: a kiln `Buffer` wraps a `GpuMem` (one wgpu storage buffer). Host transfers
//! (`write`, `read`) and the binding of views to shader slots live here.
//!
//! Every allocation is rounded up to a multiple of 4 bytes (wgpu copies and bindings work on
//! words); views keep their exact byte range, shaders get element offsets in their params.

use std::sync::Arc;

use kiln_core::{Buffer, Error, OpKind, Result, View, ViewMut};

use crate::device::WgpuBackend;
use crate::error::WgpuError;

/// The memory object inside a kiln `Buffer` made by this backend.
pub(crate) struct GpuMem {
    pub(crate) buf: wgpu::Buffer,
}

/// Counts buffer and weight frees in this process: the bind-group cache (pipeline_cache.rs)
/// holds references to the buffers it binds, and drops all of them when this changes, so a
/// freed buffer's memory is released at the next dispatch.
pub(crate) static FREES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Drop for GpuMem {
    fn drop(&mut self) {
        FREES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

pub(crate) fn round4(n: u64) -> u64 {
    n.div_ceil(4) * 4
}

/// A view bound to a shader slot: the wgpu range bound and where the view starts inside it,
/// in bytes (shaders turn it into an element offset).
pub(crate) struct Bound<'a> {
    pub(crate) buf: &'a wgpu::Buffer,
    pub(crate) start: u64,
    pub(crate) size: u64,
    /// Byte offset of the view inside the bound range.
    pub(crate) rel: u64,
}

impl Bound<'_> {
    pub(crate) fn entry(&self, binding: u32) -> wgpu::BindGroupEntry<'_> {
        wgpu::BindGroupEntry {
            binding,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: self.buf,
                offset: self.start,
                size: wgpu::BufferSize::new(self.size),
            }),
        }
    }
    /// Element offset of the view for elements of `elem_bytes` bytes.
    pub(crate) fn elem_off(&self, elem_bytes: u64) -> u32 {
        (self.rel / elem_bytes) as u32
    }
}

impl WgpuBackend {
    pub(crate) fn mem<'b>(&self, op: OpKind, b: &'b Buffer) -> Result<&'b GpuMem> {
        kiln_core::backend::check::device(op, self.info.id, b.device())?;
        b.downcast::<GpuMem>().ok_or_else(|| {
            Error::View(format!(
                "a buffer on {} is not a wgpu buffer of this backend",
                b.device()
            ))
        })
    }

    pub(crate) fn alloc_mem(&self, bytes: usize, what: &str) -> Result<wgpu::Buffer> {
        let size = round4(bytes.max(4) as u64);
        let max = self.limits.max_buffer_size;
        if size > max {
            return Err(self.limit_error(format!("{what} (one buffer)"), size, max));
        }
        let _scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(what),
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if pollster::block_on(_scope.pop()).is_some() {
            return Err(Error::OutOfMemory {
                device: self.dev_name(),
                requested: size,
            });
        }
        Ok(buf)
    }

    pub(crate) fn alloc_buffer(&self, bytes: usize) -> Result<Buffer> {
        let buf = self.alloc_mem(bytes, "kiln buffer")?;
        Ok(Buffer::new(Arc::new(GpuMem { buf }), bytes, self.info.id))
    }

    /// Bind the bytes `offset..offset+len` of `buf` (whole buffer when it fits the binding
    /// limit, else an aligned window). An impossible window is an error naming the limit.
    pub(crate) fn bind_range<'a>(
        &self,
        buf: &'a wgpu::Buffer,
        offset: u64,
        len: u64,
        what: &str,
    ) -> Result<Bound<'a>> {
        let max = self.limits.max_storage_buffer_binding_size;
        let total = buf.size();
        if total <= max {
            return Ok(Bound {
                buf,
                start: 0,
                size: total,
                rel: offset,
            });
        }
        let align = u64::from(self.limits.min_storage_buffer_offset_alignment.max(4));
        let start = offset / align * align;
        let size = round4(offset + len.max(1) - start).min(total - start);
        if size > max {
            return Err(self.limit_error(
                format!("{what}: one storage binding of {len} bytes"),
                size,
                max,
            ));
        }
        Ok(Bound {
            buf,
            start,
            size,
            rel: offset - start,
        })
    }

    pub(crate) fn bind_view<'a>(&self, op: OpKind, v: &View<'a>, what: &str) -> Result<Bound<'a>> {
        let m = self.mem(op, v.buffer())?;
        self.bind_range(&m.buf, v.offset() as u64, v.bytes() as u64, what)
    }

    pub(crate) fn bind_out<'a>(
        &self,
        op: OpKind,
        v: &ViewMut<'a>,
        what: &str,
    ) -> Result<Bound<'a>> {
        self.bind_view(op, &v.as_view(), what)
    }

    /// Host → device, ordered after every op recorded so far.
    pub(crate) fn write_bytes(&self, dst: &Buffer, offset: usize, src: &[u8]) -> Result<()> {
        let m = self.mem(OpKind::Copy, dst)?;
        let end = offset.checked_add(src.len()).filter(|&e| e <= dst.len());
        if end.is_none() {
            return Err(Error::View(format!(
                "write of {} bytes at {offset} outside a buffer of {} bytes",
                src.len(),
                dst.len()
            )));
        }
        if src.is_empty() {
            return Ok(());
        }
        // Ops recorded before this write must run before it: submit them first
        // (queue.write_buffer lands before the command buffers of the *next* submit).
        self.flush();
        if offset.is_multiple_of(4) && src.len().is_multiple_of(4) {
            self.queue.write_buffer(&m.buf, offset as u64, src);
            return Ok(());
        }
        // Unaligned edges: read the covering words, patch them, write them back.
        let a0 = offset / 4 * 4;
        let a1 = (offset + src.len()).div_ceil(4) * 4;
        let mut words = vec![0u8; a1 - a0];
        self.read_words(&m.buf, a0 as u64, &mut words)?;
        words[offset - a0..offset - a0 + src.len()].copy_from_slice(src);
        self.queue.write_buffer(&m.buf, a0 as u64, &words);
        Ok(())
    }

    /// Device → host of whole words `offset..offset+dst.len()` (both multiples of 4 or the
    /// end of the buffer).
    fn read_words(&self, buf: &wgpu::Buffer, offset: u64, dst: &mut [u8]) -> Result<()> {
        let len = dst.len() as u64;
        let need = round4(len);
        let copy_len = need.min(buf.size() - offset);
        // The kept read-back buffer if it is large enough (another thread's concurrent read
        // finds none and makes its own), else a new one of this size.
        let kept = self
            .readback
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .filter(|b| b.size() >= need);
        let staging = kept.unwrap_or_else(|| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("kiln read-back"),
                size: need,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        self.record(|enc| enc.copy_buffer_to_buffer(buf, offset, &staging, 0, copy_len))?;
        self.flush();
        let (tx, rx) = std::sync::mpsc::channel();
        staging
            .slice(..need)
            .map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| WgpuError::Poll {
                device: self.dev_name(),
                msg: e.to_string(),
            })?;
        let mapped = rx.recv().map_err(|e| WgpuError::Map {
            device: self.dev_name(),
            msg: e.to_string(),
        })?;
        mapped.map_err(|e| WgpuError::Map {
            device: self.dev_name(),
            msg: e.to_string(),
        })?;
        self.check_errors()?;
        {
            let view = staging
                .slice(..need)
                .get_mapped_range()
                .map_err(|e| WgpuError::Map {
                    device: self.dev_name(),
                    msg: e.to_string(),
                })?;
            dst.copy_from_slice(&view[..dst.len()]);
        }
        staging.unmap();
        // Keep the larger of this buffer and one another thread may have put back meanwhile.
        let mut slot = self.readback.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_none_or(|b| b.size() < staging.size()) {
            *slot = Some(staging);
        }
        Ok(())
    }

    /// Device → host; waits for every op recorded so far.
    pub(crate) fn read_bytes(&self, src: &Buffer, offset: usize, dst: &mut [u8]) -> Result<()> {
        let m = self.mem(OpKind::Copy, src)?;
        let end = offset.checked_add(dst.len()).filter(|&e| e <= src.len());
        if end.is_none() {
            return Err(Error::View(format!(
                "read of {} bytes at {offset} outside a buffer of {} bytes",
                dst.len(),
                src.len()
            )));
        }
        if dst.is_empty() {
            return self.wait_idle();
        }
        let a0 = offset / 4 * 4;
        let a1 = (offset + dst.len()).div_ceil(4) * 4;
        if a0 == offset && a1 == offset + dst.len() {
            return self.read_words(&m.buf, a0 as u64, dst);
        }
        let mut words = vec![0u8; a1 - a0];
        self.read_words(&m.buf, a0 as u64, &mut words)?;
        dst.copy_from_slice(&words[offset - a0..offset - a0 + dst.len()]);
        Ok(())
    }
}
