//! Device I/O for cases: every tensor sits at byte offset [`GUARD`] inside a buffer whose other
//! bytes are poison (0xFF: a NaN in f32, f16 and bf16; −1 in i32).
//! - Inputs: an op that reads past its input view picks up NaN, which reaches its output.
//! - Outputs: the whole buffer is poisoned before the op, so an element the op does not write
//!   reads back as NaN, and [`read_out`] fails if any guard byte around the view changed (a
//!   write outside the view).
//! - A view at a non-zero offset also catches a backend that ignores `View::offset`.

use kiln_core::{Backend, DType, Shape, Tensor, Weight};

use crate::data::{self, HostWeight};
use crate::harness::context;

/// Bytes of poison before and after every tensor (a multiple of every alignment a backend may
/// want for a binding offset).
pub const GUARD: usize = 256;
/// The poison byte.
pub const POISON: u8 = 0xFF;

/// A tensor of `shape` × `dtype` holding `bytes`, at offset GUARD in a poisoned buffer.
pub fn upload(b: &dyn Backend, dtype: DType, shape: &[usize], bytes: &[u8]) -> Tensor {
    let shape = Shape::new(shape).unwrap();
    let n = dtype.bytes_for(shape.numel()).unwrap();
    assert_eq!(n, bytes.len(), "upload: {shape} {dtype} needs {n} bytes");
    let mut all = vec![POISON; GUARD + n + GUARD];
    all[GUARD..GUARD + n].copy_from_slice(bytes);
    let buf = b
        .alloc(all.len())
        .unwrap_or_else(|e| panic!("alloc {} bytes: {e} ({})", all.len(), context()));
    b.write(&buf, 0, &all)
        .unwrap_or_else(|e| panic!("write: {e} ({})", context()));
    Tensor::new(buf, GUARD, shape, dtype).unwrap()
}

/// Float values stored as `dtype` (f32/f16/bf16, rounded to nearest even).
pub fn upload_floats(b: &dyn Backend, dtype: DType, shape: &[usize], v: &[f32]) -> Tensor {
    upload(b, dtype, shape, &data::float_bytes(dtype, v))
}

pub fn upload_f32(b: &dyn Backend, shape: &[usize], v: &[f32]) -> Tensor {
    upload_floats(b, DType::F32, shape, v)
}

pub fn upload_i32(b: &dyn Backend, shape: &[usize], v: &[i32]) -> Tensor {
    upload(b, DType::I32, shape, &data::i32_bytes(v))
}

/// An output: the whole buffer (guards and view) is poison.
pub fn output(b: &dyn Backend, dtype: DType, shape: &[usize]) -> Tensor {
    let shape_s = Shape::new(shape).unwrap();
    let n = dtype.bytes_for(shape_s.numel()).unwrap();
    upload(b, dtype, shape, &vec![POISON; n])
}

/// A scratch buffer of `bytes` (None if 0), as a U8 view.
pub fn scratch(b: &dyn Backend, bytes: usize) -> Option<Tensor> {
    (bytes > 0).then(|| output(b, DType::U8, &[bytes]))
}

/// Read every byte of the tensor's buffer.
fn read_all(b: &dyn Backend, t: &Tensor) -> Vec<u8> {
    let mut all = vec![0u8; t.buf.len()];
    b.read(&t.buf, 0, &mut all)
        .unwrap_or_else(|e| panic!("read: {e} ({})", context()));
    all
}

/// The view's bytes.
pub fn read_bytes(b: &dyn Backend, t: &Tensor) -> Vec<u8> {
    let all = read_all(b, t);
    all[t.offset..t.offset + t.view().bytes()].to_vec()
}

/// Panic if any byte outside the view changed from poison.
fn check_guards(all: &[u8], t: &Tensor, what: &str) {
    let end = t.offset + t.view().bytes();
    let bad = all[..t.offset]
        .iter()
        .enumerate()
        .chain(all[end..].iter().enumerate().map(|(i, v)| (i + end, v)))
        .find(|(_, v)| **v != POISON);
    if let Some((i, v)) = bad {
        panic!(
            "{what}: the op wrote outside its output view: buffer byte {i} = {v:#04x} \
             (view covers bytes {}..{end}) ({})",
            t.offset,
            context()
        );
    }
}

/// An output's values as f32 after checking its guards (f32/f16/bf16 outputs).
pub fn read_out(b: &dyn Backend, t: &Tensor, what: &str) -> Vec<f32> {
    let all = read_all(b, t);
    check_guards(&all, t, what);
    data::decode_floats(t.dtype, &all[t.offset..t.offset + t.view().bytes()])
}

/// A float tensor's values (no guard check: for in-place ops and caches).
pub fn read_floats(b: &dyn Backend, t: &Tensor) -> Vec<f32> {
    data::decode_floats(t.dtype, &read_bytes(b, t))
}

/// `prepare_weight` on a host weight.
pub fn prepare(b: &dyn Backend, w: &HostWeight) -> Weight {
    b.prepare_weight(&w.host_tensor()).unwrap_or_else(|e| {
        panic!(
            "prepare_weight {} {}: {e} ({})",
            w.shape,
            w.dtype,
            context()
        )
    })
}

/// Unwrap an op's result with the case context.
pub fn ok(what: &str, r: kiln_core::Result<()>) {
    if let Err(e) = r {
        panic!("{what} returned Err: {e} ({})", context());
    }
}

/// A device that is never the one under test (`reference:7`), for "view on another device"
/// checks: its buffers must be refused with `Error::WrongDevice`.
pub fn foreign() -> &'static dyn Backend {
    static F: std::sync::OnceLock<kiln_core::ReferenceBackend> = std::sync::OnceLock::new();
    F.get_or_init(|| kiln_core::ReferenceBackend::new(7))
}

fn call_catching(what: &str, f: impl FnOnce() -> kiln_core::Result<()>) -> kiln_core::Error {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Err(_) => panic!(
            "{what}: the op panicked instead of returning Err ({})",
            context()
        ),
        Ok(Ok(())) => panic!("{what}: the op returned Ok, expected Err ({})", context()),
        Ok(Err(e)) => e,
    }
}

/// The call must return Err (not Ok, not a panic).
pub fn expect_err(what: &str, f: impl FnOnce() -> kiln_core::Result<()>) {
    let e = call_catching(what, f);
    println!("ok: {what}: Err({e})");
}

/// The call gets a view on another device: it must return `Error::WrongDevice` (any Err if
/// the backend does not support the op at all, since that check may come first).
pub fn expect_wrong_device(
    b: &dyn Backend,
    op: kiln_core::OpKind,
    dt: DType,
    what: &str,
    f: impl FnOnce() -> kiln_core::Result<()>,
) {
    let e = call_catching(what, f);
    if b.supports(op, dt) && !matches!(e, kiln_core::Error::WrongDevice { .. }) {
        panic!(
            "{what}: expected Error::WrongDevice, got {e:?} ({})",
            context()
        );
    }
    println!("ok: {what}: Err({e})");
}
