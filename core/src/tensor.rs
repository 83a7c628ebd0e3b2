//! Buffers (device bytes), views (buffer + byte offset + shape + dtype), weights and host tensors.
//!
//! A `Buffer` is a handle to device memory owned by one backend; the backend stores its own
//! memory object inside and gets it back with `downcast`. Views are validated when made: the
//! bytes they cover lie inside the buffer and the offset is aligned for the dtype, so a backend
//! may use a view's range without re-checking bounds.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use crate::devices::DeviceId;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::shape::Shape;

/// Device memory: `len` bytes on `device`, held by the backend's own object.
#[derive(Clone)]
pub struct Buffer {
    mem: Arc<dyn Any + Send + Sync>,
    len: usize,
    device: DeviceId,
}

impl Buffer {
    /// For backends: wrap their memory object.
    pub fn new(mem: Arc<dyn Any + Send + Sync>, len: usize, device: DeviceId) -> Buffer {
        Buffer { mem, len, device }
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn device(&self) -> DeviceId {
        self.device
    }
    /// For backends: their memory object, if this buffer is theirs.
    pub fn downcast<T: Any>(&self) -> Option<&T> {
        self.mem.downcast_ref::<T>()
    }
    /// Whether two handles refer to the same allocation.
    pub fn same(&self, other: &Buffer) -> bool {
        Arc::ptr_eq(&self.mem, &other.mem)
    }
    /// A view of the whole buffer as `shape` × `dtype` starting at `offset`.
    pub fn view(&self, offset: usize, shape: Shape, dtype: DType) -> Result<View<'_>> {
        View::new(self, offset, shape, dtype)
    }
    pub fn view_mut(&self, offset: usize, shape: Shape, dtype: DType) -> Result<ViewMut<'_>> {
        ViewMut::new(self, offset, shape, dtype)
    }
}

impl fmt::Debug for Buffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Buffer({} bytes on {})", self.len, self.device)
    }
}

/// A read-only contiguous view.
#[derive(Clone, Copy)]
pub struct View<'a> {
    buf: &'a Buffer,
    offset: usize,
    shape: Shape,
    dtype: DType,
}

impl<'a> View<'a> {
    pub fn new(buf: &'a Buffer, offset: usize, shape: Shape, dtype: DType) -> Result<View<'a>> {
        let bytes = dtype.bytes_for(shape.numel())?;
        let end = offset.checked_add(bytes);
        if end.is_none_or(|e| e > buf.len) {
            return Err(Error::View(format!(
                "{shape} {dtype} at byte {offset} ({bytes} bytes) does not fit a buffer of {} bytes",
                buf.len
            )));
        }
        if !offset.is_multiple_of(dtype.align()) {
            return Err(Error::View(format!(
                "offset {offset} is not aligned for {dtype}"
            )));
        }
        Ok(View {
            buf,
            offset,
            shape,
            dtype,
        })
    }
    pub fn buffer(&self) -> &'a Buffer {
        self.buf
    }
    pub fn offset(&self) -> usize {
        self.offset
    }
    pub fn shape(&self) -> Shape {
        self.shape
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn numel(&self) -> usize {
        self.shape.numel()
    }
    /// Bytes covered (validated at construction, so this cannot overflow).
    pub fn bytes(&self) -> usize {
        self.dtype.bytes_for(self.shape.numel()).unwrap_or(0)
    }
    pub fn device(&self) -> DeviceId {
        self.buf.device
    }
    /// The same bytes seen with another shape of the same element count.
    pub fn reshape(&self, shape: Shape) -> Result<View<'a>> {
        if shape.numel() != self.shape.numel() {
            return Err(Error::View(format!(
                "cannot reshape {} to {shape}",
                self.shape
            )));
        }
        Ok(View { shape, ..*self })
    }
    /// Rows `start..start+len` of the outermost dim.
    pub fn narrow(&self, start: usize, len: usize) -> Result<View<'a>> {
        let (offset, shape) = narrow(self.offset, self.shape, self.dtype, start, len)?;
        View::new(self.buf, offset, shape, self.dtype)
    }
    fn range(&self) -> (usize, usize) {
        (self.offset, self.offset + self.bytes())
    }
}

/// A view an op writes into. Same data as `View`; the type marks the output.
#[derive(Clone, Copy)]
pub struct ViewMut<'a>(View<'a>);

impl<'a> ViewMut<'a> {
    pub fn new(buf: &'a Buffer, offset: usize, shape: Shape, dtype: DType) -> Result<ViewMut<'a>> {
        View::new(buf, offset, shape, dtype).map(ViewMut)
    }
    pub fn as_view(&self) -> View<'a> {
        self.0
    }
    pub fn buffer(&self) -> &'a Buffer {
        self.0.buf
    }
    pub fn offset(&self) -> usize {
        self.0.offset
    }
    pub fn shape(&self) -> Shape {
        self.0.shape
    }
    pub fn dtype(&self) -> DType {
        self.0.dtype
    }
    pub fn numel(&self) -> usize {
        self.0.numel()
    }
    pub fn bytes(&self) -> usize {
        self.0.bytes()
    }
    pub fn device(&self) -> DeviceId {
        self.0.device()
    }
    pub fn reshape(&self, shape: Shape) -> Result<ViewMut<'a>> {
        self.0.reshape(shape).map(ViewMut)
    }
    pub fn narrow(&self, start: usize, len: usize) -> Result<ViewMut<'a>> {
        self.0.narrow(start, len).map(ViewMut)
    }
    /// Error if this output shares bytes with `input` (ops never read and write the same bytes,
    /// except the in-place ones that take only a `ViewMut`).
    pub fn check_disjoint(&self, input: &View<'_>) -> Result<()> {
        if !self.0.buf.same(input.buf) {
            return Ok(());
        }
        let (a0, a1) = self.0.range();
        let (b0, b1) = input.range();
        if a0 < b1 && b0 < a1 {
            return Err(Error::View(format!(
                "output bytes {a0}..{a1} overlap input bytes {b0}..{b1} of the same buffer"
            )));
        }
        Ok(())
    }
}

fn narrow(
    offset: usize,
    shape: Shape,
    dtype: DType,
    start: usize,
    len: usize,
) -> Result<(usize, Shape)> {
    let outer = shape.dim(0);
    if start.checked_add(len).is_none_or(|e| e > outer) || shape.rank() == 0 {
        return Err(Error::View(format!(
            "narrow {start}+{len} out of range for {shape}"
        )));
    }
    let row_elems = shape.numel() / outer.max(1);
    let row_bytes = dtype.bytes_for(row_elems)?;
    let mut dims = shape.dims().to_vec();
    dims[0] = len;
    Ok((offset + start * row_bytes, Shape::new(&dims)?))
}

/// An owned view: a buffer handle with offset, shape and dtype (what the runtime keeps).
#[derive(Clone, Debug)]
pub struct Tensor {
    pub buf: Buffer,
    pub offset: usize,
    pub shape: Shape,
    pub dtype: DType,
}

impl Tensor {
    /// Validates like `View::new`.
    pub fn new(buf: Buffer, offset: usize, shape: Shape, dtype: DType) -> Result<Tensor> {
        View::new(&buf, offset, shape, dtype)?;
        Ok(Tensor {
            buf,
            offset,
            shape,
            dtype,
        })
    }
    pub fn view(&self) -> View<'_> {
        View {
            buf: &self.buf,
            offset: self.offset,
            shape: self.shape,
            dtype: self.dtype,
        }
    }
    pub fn view_mut(&self) -> ViewMut<'_> {
        ViewMut(self.view())
    }
}

/// A tensor in host memory as read from a file: dtype, row-major shape, raw bytes.
#[derive(Clone, Copy, Debug)]
pub struct HostTensor<'a> {
    pub dtype: DType,
    pub shape: Shape,
    pub data: &'a [u8],
}

impl<'a> HostTensor<'a> {
    /// Checks that `data` holds exactly `shape` × `dtype` bytes.
    pub fn new(dtype: DType, shape: Shape, data: &'a [u8]) -> Result<HostTensor<'a>> {
        let want = dtype.bytes_for(shape.numel())?;
        if data.len() != want {
            return Err(Error::View(format!(
                "{shape} {dtype} needs {want} bytes, got {}",
                data.len()
            )));
        }
        Ok(HostTensor { dtype, shape, data })
    }
}

/// A weight prepared for one device by `Backend::prepare_weight`: uploaded and, where the
/// backend wants, repacked. Shape is `[n, k]` (y = x·Wᵀ) or `[experts, n, k]`, or `[vocab, dim]`
/// for embedding tables.
#[derive(Clone)]
pub struct Weight {
    inner: Arc<dyn Any + Send + Sync>,
    shape: Shape,
    dtype: DType,
    device: DeviceId,
    bytes: usize,
}

impl Weight {
    /// For backends. `bytes` is the device memory the weight occupies (for the planner).
    pub fn new(
        inner: Arc<dyn Any + Send + Sync>,
        shape: Shape,
        dtype: DType,
        device: DeviceId,
        bytes: usize,
    ) -> Weight {
        Weight {
            inner,
            shape,
            dtype,
            device,
            bytes,
        }
    }
    pub fn shape(&self) -> Shape {
        self.shape
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn device(&self) -> DeviceId {
        self.device
    }
    pub fn bytes(&self) -> usize {
        self.bytes
    }
    pub fn downcast<T: Any>(&self) -> Option<&T> {
        self.inner.downcast_ref::<T>()
    }
}

impl fmt::Debug for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Weight({} {} on {})",
            self.shape, self.dtype, self.device
        )
    }
}
