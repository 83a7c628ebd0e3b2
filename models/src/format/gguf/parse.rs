//! GGUF v2/v3 parsing and validation over a byte slice (little-endian only).
//!
//! Layout: magic "GGUF" | u32 version | u64 tensor count | u64 kv count | kv pairs (string key,
//! u32 value type, value) | tensor infos (string name, u32 n_dims, u64 ne[n_dims], u32 ggml
//! type, u64 offset) | padding to `general.alignment` | tensor data. A string is a u64 byte
//! length then UTF-8 bytes; an array is a u32 element type, a u64 count, then the elements.
//!
//! Every length and count is checked against the bytes left before anything is allocated, so a
//! hostile length cannot make the reader allocate more than a small multiple of the file size;
//! every size/offset computation is checked; array nesting is bounded (no stack overflow).

use std::collections::HashMap;

use kiln_core::{DType, Shape};

use super::GgufTensorInfo;
use super::ggml::{ggml_type_layout, ggml_type_name};
use super::value::{GgufArray, GgufType, GgufValue, Metadata};
use crate::error::{ModelError, Result};

/// Arrays of arrays nested deeper than this are refused.
pub const MAX_ARRAY_DEPTH: usize = 16;
/// `general.alignment` when the key is absent.
pub const DEFAULT_ALIGNMENT: usize = 32;
/// Smallest encoding of a tensor info (empty name, 0 dims) and of a kv pair (empty key, u8).
const MIN_TENSOR_INFO_BYTES: usize = 8 + 4 + 4 + 8;
const MIN_KV_BYTES: usize = 8 + 4 + 1;

pub(super) struct Layout {
    pub version: u32,
    pub metadata: Metadata,
    pub tensors: Vec<GgufTensorInfo>,
    pub index: HashMap<String, usize>,
    pub alignment: usize,
    pub data_start: usize,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    file: &'a str,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }
    fn err(&self, msg: String) -> ModelError {
        ModelError::format(self.file, msg)
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let slice = self
            .pos
            .checked_add(n)
            .and_then(|end| self.buf.get(self.pos..end));
        match slice {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(self.err(format!(
                "truncated: {what} at byte {} needs {n} bytes, {} left",
                self.pos,
                self.left()
            ))),
        }
    }
    fn bytes<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        self.bytes(what).map(u32::from_le_bytes)
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        self.bytes(what).map(u64::from_le_bytes)
    }
    /// A u64 count of items of at least `min_bytes` each, checked against the bytes left.
    fn count(&mut self, what: &str, min_bytes: usize) -> Result<usize> {
        let at = self.pos;
        let n = self.u64(what)?;
        let need = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(min_bytes.max(1)));
        match need {
            Some(need) if need <= self.left() => Ok(n as usize),
            _ => Err(self.err(format!(
                "{what} at byte {at} is {n}, but only {} bytes are left in the file",
                self.left()
            ))),
        }
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.count(&format!("{what}: string length"), 1)?;
        let at = self.pos;
        let raw = self.take(n, what)?;
        std::str::from_utf8(raw).map(str::to_owned).map_err(|e| {
            self.err(format!(
                "{what}: string at byte {at} is not valid UTF-8 ({e})"
            ))
        })
    }
    fn fixed<const N: usize, T>(
        &mut self,
        n: usize,
        what: &str,
        f: fn([u8; N]) -> T,
    ) -> Result<Vec<T>> {
        let total = n
            .checked_mul(N)
            .ok_or_else(|| self.err(format!("{what}: {n} elements overflow")))?;
        let raw = self.take(total, what)?;
        Ok(raw
            .chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                f(a)
            })
            .collect())
    }
    fn bool(&mut self, what: &str) -> Result<bool> {
        let at = self.pos;
        match self.bytes::<1>(what)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(self.err(format!("{what}: bool at byte {at} is {b:#04x}, not 0 or 1"))),
        }
    }

    fn value(&mut self, ty: GgufType, what: &str) -> Result<GgufValue> {
        use GgufValue as V;
        Ok(match ty {
            GgufType::U8 => V::U8(self.bytes::<1>(what)?[0]),
            GgufType::I8 => V::I8(i8::from_le_bytes(self.bytes(what)?)),
            GgufType::U16 => V::U16(u16::from_le_bytes(self.bytes(what)?)),
            GgufType::I16 => V::I16(i16::from_le_bytes(self.bytes(what)?)),
            GgufType::U32 => V::U32(u32::from_le_bytes(self.bytes(what)?)),
            GgufType::I32 => V::I32(i32::from_le_bytes(self.bytes(what)?)),
            GgufType::U64 => V::U64(u64::from_le_bytes(self.bytes(what)?)),
            GgufType::I64 => V::I64(i64::from_le_bytes(self.bytes(what)?)),
            GgufType::F32 => V::F32(f32::from_le_bytes(self.bytes(what)?)),
            GgufType::F64 => V::F64(f64::from_le_bytes(self.bytes(what)?)),
            GgufType::Bool => V::Bool(self.bool(what)?),
            GgufType::String => V::String(self.string(what)?),
            GgufType::Array => V::Array(self.array(what, 0)?),
        })
    }

    fn array(&mut self, what: &str, depth: usize) -> Result<GgufArray> {
        use GgufArray as A;
        if depth >= MAX_ARRAY_DEPTH {
            return Err(self.err(format!(
                "{what}: arrays nested deeper than {MAX_ARRAY_DEPTH} levels"
            )));
        }
        let at = self.pos;
        let tid = self.u32(what)?;
        let ty = GgufType::from_id(tid).ok_or_else(|| {
            self.err(format!(
                "{what}: unknown array element type id {tid} at byte {at}"
            ))
        })?;
        // Smallest element: its fixed size, a string's u64 length, an array's type + count.
        let min = match ty {
            GgufType::String => 8,
            GgufType::Array => 12,
            t => t.fixed_size().unwrap_or(1),
        };
        let n = self.count(&format!("{what}: array length"), min)?;
        Ok(match ty {
            GgufType::U8 => A::U8(self.take(n, what)?.to_vec()),
            GgufType::I8 => A::I8(self.fixed(n, what, i8::from_le_bytes)?),
            GgufType::U16 => A::U16(self.fixed(n, what, u16::from_le_bytes)?),
            GgufType::I16 => A::I16(self.fixed(n, what, i16::from_le_bytes)?),
            GgufType::U32 => A::U32(self.fixed(n, what, u32::from_le_bytes)?),
            GgufType::I32 => A::I32(self.fixed(n, what, i32::from_le_bytes)?),
            GgufType::U64 => A::U64(self.fixed(n, what, u64::from_le_bytes)?),
            GgufType::I64 => A::I64(self.fixed(n, what, i64::from_le_bytes)?),
            GgufType::F32 => A::F32(self.fixed(n, what, f32::from_le_bytes)?),
            GgufType::F64 => A::F64(self.fixed(n, what, f64::from_le_bytes)?),
            GgufType::Bool => A::Bool((0..n).map(|_| self.bool(what)).collect::<Result<_>>()?),
            GgufType::String => {
                A::String((0..n).map(|_| self.string(what)).collect::<Result<_>>()?)
            }
            GgufType::Array => A::Array(
                (0..n)
                    .map(|_| self.array(what, depth + 1))
                    .collect::<Result<_>>()?,
            ),
        })
    }
}

/// Parse and validate a whole GGUF file held in `buf`; `file` labels error messages.
pub(super) fn parse(buf: &[u8], file: &str) -> Result<Layout> {
    let mut c = Cursor { buf, pos: 0, file };
    let magic = c.take(4, "the magic")?;
    if magic != b"GGUF" {
        return Err(c.err(format!(
            "not a GGUF file: magic is {magic:02x?}, expected \"GGUF\""
        )));
    }
    let version = c.u32("the version")?;
    check_version(version).map_err(|m| c.err(m))?;
    let n_tensors = c.count("the tensor count", MIN_TENSOR_INFO_BYTES)?;
    let n_kv = c.count("the metadata key count", MIN_KV_BYTES)?;

    let mut metadata = Metadata::new(file);
    for i in 0..n_kv {
        let key = c.string(&format!("metadata key #{i}"))?;
        if key.is_empty() {
            return Err(c.err(format!("metadata key #{i} is empty")));
        }
        let what = format!("key '{key}'");
        let at = c.pos;
        let tid = c.u32(&what)?;
        let ty = GgufType::from_id(tid).ok_or_else(|| {
            ModelError::metadata(
                file,
                &key,
                format!("unknown value type id {tid} at byte {at}"),
            )
        })?;
        let value = c.value(ty, &what)?;
        if !metadata.insert(key.clone(), value) {
            return Err(ModelError::metadata(file, &key, "appears twice"));
        }
    }
    let alignment = alignment(&metadata, file)?;

    let mut tensors = Vec::with_capacity(n_tensors);
    let mut index = HashMap::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let name = c.string(&format!("the name of tensor #{i}"))?;
        let what = format!("tensor '{name}'");
        let n_dims = c.u32(&what)?;
        if n_dims as usize > kiln_core::shape::MAX_RANK {
            return Err(ModelError::tensor(
                file,
                &name,
                format!(
                    "n_dims is {n_dims}, the maximum is {}",
                    kiln_core::shape::MAX_RANK
                ),
            ));
        }
        let ne = (0..n_dims)
            .map(|_| c.u64(&what))
            .collect::<Result<Vec<u64>>>()?;
        let type_id = c.u32(&what)?;
        let offset = c.u64(&what)?;
        if index.contains_key(&name) {
            return Err(ModelError::tensor(file, &name, "appears twice"));
        }
        let info = tensor_info(file, name, ne, type_id, offset, alignment)?;
        index.insert(info.name.clone(), i);
        tensors.push(info);
    }

    let data_start = c
        .pos
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| c.err("the data section start overflows".into()))?;
    place_tensors(&mut tensors, data_start, buf.len(), file)?;
    Ok(Layout {
        version,
        metadata,
        tensors,
        index,
        alignment,
        data_start,
    })
}

fn check_version(v: u32) -> Result<(), String> {
    match v {
        2 | 3 => Ok(()),
        1 => Err(
            "GGUF version 1 is not supported (kiln reads versions 2 and 3; \
                  convert the model again with a current llama.cpp)"
                .into(),
        ),
        v if (1..=3).contains(&v.swap_bytes()) => Err(format!(
            "big-endian GGUF (version {}) is not supported",
            v.swap_bytes()
        )),
        v => Err(format!(
            "unsupported GGUF version {v} (kiln reads versions 2 and 3)"
        )),
    }
}

fn alignment(md: &Metadata, file: &str) -> Result<usize> {
    const KEY: &str = "general.alignment";
    let Some(v) = md.get(KEY) else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    match v.as_u32() {
        Some(a) if a.is_power_of_two() => Ok(a as usize),
        Some(a) => Err(ModelError::metadata(
            file,
            KEY,
            format!("{a} is not a power of two"),
        )),
        None => Err(ModelError::metadata(
            file,
            KEY,
            format!("expected a u32 power of two, found a {}", v.value_type()),
        )),
    }
}

/// Validate one tensor info: dims, type, block divisibility, byte size and offset alignment.
fn tensor_info(
    file: &str,
    name: String,
    ne: Vec<u64>,
    ggml_type: u32,
    offset: u64,
    alignment: usize,
) -> Result<GgufTensorInfo> {
    let bad = |msg: String| ModelError::tensor(file, &name, msg);
    let mut dims = Vec::with_capacity(ne.len());
    for &d in ne.iter().rev() {
        // ggml stores dims as int64; beyond that (or beyond usize) the file is hostile.
        let d = usize::try_from(d)
            .ok()
            .filter(|&d| d as u64 <= i64::MAX as u64)
            .ok_or_else(|| bad(format!("dimension {d} in ne {ne:?} is too large")))?;
        dims.push(d);
    }
    let shape = Shape::new(&dims).map_err(|_| {
        bad(format!(
            "ne {ne:?}: the element count overflows the address space"
        ))
    })?;
    let numel = shape.numel();
    let size = match ggml_type_layout(ggml_type) {
        Some((block, block_bytes)) => {
            let ne0 = ne.first().copied().unwrap_or(1);
            if ne0 % block as u64 != 0 {
                return Err(bad(format!(
                    "ne[0] = {ne0} is not a multiple of the {} block size {block}",
                    ggml_type_name(ggml_type)
                )));
            }
            let bytes = (numel / block).checked_mul(block_bytes).ok_or_else(|| {
                bad(format!(
                    "ne {ne:?} of {}: the byte size overflows",
                    ggml_type_name(ggml_type)
                ))
            })?;
            Some(bytes)
        }
        None => None,
    };
    let offset = usize::try_from(offset)
        .ok()
        .ok_or_else(|| bad(format!("offset {offset} is too large")))?;
    if offset % alignment != 0 {
        return Err(bad(format!(
            "offset {offset} is not a multiple of the alignment {alignment}"
        )));
    }
    Ok(GgufTensorInfo {
        dtype: DType::from_ggml_id(ggml_type),
        ggml_type,
        ne,
        shape,
        offset,
        size,
        data_start: 0,
        name,
    })
}

/// Resolve absolute data ranges, check they lie inside the file and do not overlap.
fn place_tensors(
    tensors: &mut [GgufTensorInfo],
    data_start: usize,
    file_len: usize,
    file: &str,
) -> Result<()> {
    let mut ranges = Vec::with_capacity(tensors.len());
    for (i, t) in tensors.iter_mut().enumerate() {
        let start = data_start.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.size.unwrap_or(0)));
        let (Some(start), Some(end)) = (start, end) else {
            return Err(ModelError::tensor(
                file,
                &t.name,
                format!("offset {} overflows the address space", t.offset),
            ));
        };
        if end > file_len || (t.size.is_none() && start > file_len) {
            let what = match t.size {
                Some(_) => format!("data range {start}..{end}"),
                None => format!("data offset {start}"),
            };
            return Err(ModelError::tensor(
                file,
                &t.name,
                format!("{what} exceeds file size {file_len}"),
            ));
        }
        t.data_start = start;
        if end > start {
            ranges.push((start, end, i));
        }
    }
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        let ((a0, a1, ai), (b0, b1, bi)) = (w[0], w[1]);
        if a1 > b0 {
            let an = tensors.get(ai).map_or("?", |t| t.name.as_str());
            let bn = tensors.get(bi).map_or("?", |t| t.name.as_str());
            return Err(ModelError::tensor(
                file,
                bn,
                format!("data range {b0}..{b1} overlaps tensor '{an}' ({a0}..{a1})"),
            ));
        }
    }
    Ok(())
}
