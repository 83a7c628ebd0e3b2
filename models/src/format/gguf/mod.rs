//! GGUF (llama.cpp's model format), versions 2 and 3, little-endian.
//!
//! [`GgufFile::open`] memory-maps the file and validates all of it before returning: header,
//! every metadata value, every tensor info (name, dims, type, offset), the alignment, and that
//! each tensor's data lies inside the file without overlapping another. Tensors of ggml types
//! kiln cannot compute with (Q8_K, IQ2_XXS, ...) do not stop a file from opening: they are
//! listed with their type name, and [`GgufFile::tensor`] refuses them by name.
//!
//! Shapes are kiln's row-major order: the reverse of ggml's `ne` (`ne = [in, out]` is the
//! shape `[out, in]`).

mod ggml;
mod parse;
mod value;

use std::collections::HashMap;
use std::path::Path;

use kiln_core::{DType, HostTensor, Shape};

pub use ggml::{ggml_type_layout, ggml_type_name};
pub use parse::{DEFAULT_ALIGNMENT, MAX_ARRAY_DEPTH};
pub use value::{GgufArray, GgufType, GgufValue, Metadata};

use super::{Bytes, map_file};
use crate::error::{ModelError, Result};

/// One tensor as described by the file (validated).
#[derive(Clone, Debug, PartialEq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// The ggml type id as stored.
    pub ggml_type: u32,
    /// The kiln dtype, `None` if kiln does not support this ggml type.
    pub dtype: Option<DType>,
    /// Dims as stored (innermost first).
    pub ne: Vec<u64>,
    /// Row-major shape (reverse of `ne`).
    pub shape: Shape,
    /// Byte offset relative to the start of the data section, as stored.
    pub offset: usize,
    /// Bytes of data; `None` only for a ggml type id kiln has no size for.
    pub size: Option<usize>,
    /// Absolute byte offset of the data in the file.
    pub data_start: usize,
}

impl GgufTensorInfo {
    /// The ggml type name (`Q8_0`, `F16`, `IQ2_XXS`, `ggml type 40`).
    pub fn type_name(&self) -> String {
        ggml_type_name(self.ggml_type)
    }
    pub fn numel(&self) -> usize {
        self.shape.numel()
    }
}

/// An open, validated GGUF file.
pub struct GgufFile {
    file: String,
    bytes: Bytes,
    version: u32,
    metadata: Metadata,
    tensors: Vec<GgufTensorInfo>,
    index: HashMap<String, usize>,
    alignment: usize,
    data_start: usize,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "GgufFile({}, v{}, {} keys, {} tensors)",
            self.file,
            self.version,
            self.metadata.len(),
            self.tensors.len()
        )
    }
}

impl GgufFile {
    /// Map and validate `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let bytes = map_file(path)?;
        GgufFile::from_storage(bytes, path.display().to_string())
    }

    /// Validate a GGUF file held in memory (errors say `<memory>` for the file).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile> {
        GgufFile::from_storage(Bytes::Owned(bytes), "<memory>".into())
    }

    fn from_storage(bytes: Bytes, file: String) -> Result<GgufFile> {
        let layout = parse::parse(&bytes, &file)?;
        Ok(GgufFile {
            file,
            bytes,
            version: layout.version,
            metadata: layout.metadata,
            tensors: layout.tensors,
            index: layout.index,
            alignment: layout.alignment,
            data_start: layout.data_start,
        })
    }

    /// The path the file was opened from (`<memory>` for `from_bytes`).
    pub fn path(&self) -> &str {
        &self.file
    }
    pub fn version(&self) -> u32 {
        self.version
    }
    pub fn file_size(&self) -> usize {
        self.bytes.len()
    }
    /// `general.alignment`, or 32.
    pub fn alignment(&self) -> usize {
        self.alignment
    }
    /// Absolute offset of the data section.
    pub fn data_start(&self) -> usize {
        self.data_start
    }
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }
    /// `general.architecture` (`llama`, `qwen2`, `gemma3`, ...).
    pub fn architecture(&self) -> Result<&str> {
        self.metadata.get_str("general.architecture")
    }
    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }
    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.index.get(name).and_then(|&i| self.tensors.get(i))
    }
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The tensor's bytes, borrowed from the map, with its kiln dtype and row-major shape.
    /// Errors: no such tensor, or a ggml type kiln does not support (named).
    pub fn tensor(&self, name: &str) -> Result<HostTensor<'_>> {
        let info = self.tensor_info(name).ok_or_else(|| ModelError::NoTensor {
            file: self.file.clone(),
            name: name.to_string(),
        })?;
        let (Some(dtype), Some(size)) = (info.dtype, info.size) else {
            return Err(ModelError::UnsupportedType {
                file: self.file.clone(),
                name: name.to_string(),
                type_name: info.type_name(),
            });
        };
        let data = info
            .data_start
            .checked_add(size)
            .and_then(|end| self.bytes.get(info.data_start..end))
            .ok_or_else(|| {
                ModelError::tensor(&self.file, name, "data range lies outside the file")
            })?;
        HostTensor::new(dtype, info.shape, data)
            .map_err(|e| ModelError::tensor(&self.file, name, e.to_string()))
    }
}

macro_rules! delegate {
    ($( $f:ident -> $ty:ty; )*) => {
        impl GgufFile {
            $(
                #[doc = concat!("Shorthand for `self.metadata().", stringify!($f), "(key)`.")]
                pub fn $f(&self, key: &str) -> Result<$ty> {
                    self.metadata.$f(key)
                }
            )*
        }
    };
}

delegate! {
    get_u32 -> u32; get_i32 -> i32; get_u64 -> u64; get_i64 -> i64; get_usize -> usize;
    get_f32 -> f32; get_f64 -> f64; get_bool -> bool; get_str -> &str; get_arr -> &GgufArray;
    opt_u32 -> Option<u32>; opt_i32 -> Option<i32>; opt_u64 -> Option<u64>;
    opt_i64 -> Option<i64>; opt_usize -> Option<usize>; opt_f32 -> Option<f32>;
    opt_f64 -> Option<f64>; opt_bool -> Option<bool>; opt_str -> Option<&str>;
    opt_arr -> Option<&GgufArray>;
}
