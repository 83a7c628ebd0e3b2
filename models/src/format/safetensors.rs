//! safetensors files, single or sharded (`model.safetensors.index.json`), read with the
//! `safetensors` crate over a memory map.
//!
//! The crate validates the header (length, UTF-8 JSON, dtypes, that shape × dtype matches each
//! tensor's byte range, that the ranges are contiguous and cover the whole data section). kiln
//! adds messages that name the field and the tensor, the shard index, and the mapping to
//! kiln dtypes: BF16, F16 and F32 can be read; other dtypes are listed and refused when used.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use kiln_core::{DType, HostTensor, Shape};
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, SafeTensorError};

use super::{Bytes, map_file};
use crate::error::{ModelError, Result};

/// One tensor of a safetensors file (validated).
#[derive(Clone, Debug, PartialEq)]
pub struct SafetensorsTensorInfo {
    pub name: String,
    /// The kiln dtype; `None` for dtypes kiln does not read (I64, F8_E4M3, ...).
    pub dtype: Option<DType>,
    /// The safetensors dtype name (`BF16`, `I64`, ...).
    pub type_name: String,
    /// Row-major shape as stored (any rank; kiln tensors allow up to 4).
    pub shape: Vec<usize>,
    /// Bytes of data.
    pub size: usize,
    /// Absolute byte offset of the data in its file.
    pub data_start: usize,
}

/// An open, validated single safetensors file.
pub struct SafetensorsFile {
    file: String,
    bytes: Bytes,
    tensors: Vec<SafetensorsTensorInfo>,
    index: HashMap<String, usize>,
    user_metadata: Vec<(String, String)>,
}

impl std::fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SafetensorsFile({}, {} tensors)",
            self.file,
            self.tensors.len()
        )
    }
}

fn kiln_dtype(d: Dtype) -> Option<DType> {
    match d {
        Dtype::F32 => Some(DType::F32),
        Dtype::F16 => Some(DType::F16),
        Dtype::BF16 => Some(DType::BF16),
        _ => None,
    }
}

impl SafetensorsFile {
    pub fn open(path: impl AsRef<Path>) -> Result<SafetensorsFile> {
        let path = path.as_ref();
        let bytes = map_file(path)?;
        SafetensorsFile::from_storage(bytes, path.display().to_string())
    }

    /// Validate a safetensors file held in memory (errors say `<memory>`).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<SafetensorsFile> {
        SafetensorsFile::from_storage(Bytes::Owned(bytes), "<memory>".into())
    }

    fn from_storage(bytes: Bytes, file: String) -> Result<SafetensorsFile> {
        let len = bytes.len();
        let Some(head) = bytes.get(..8) else {
            return Err(ModelError::format(
                &file,
                format!("truncated: the 8-byte header length needs 8 bytes, the file has {len}"),
            ));
        };
        let mut n8 = [0u8; 8];
        n8.copy_from_slice(head);
        let n = u64::from_le_bytes(n8);
        if n > (len - 8) as u64 {
            return Err(ModelError::format(
                &file,
                format!(
                    "header length {n} exceeds the {} bytes after it (file size {len})",
                    len - 8
                ),
            ));
        }
        let (header_len, meta) =
            SafeTensors::read_metadata(&bytes).map_err(|e| explain(&file, &bytes, e))?;
        let data_base = 8 + header_len;
        let mut tensors = Vec::new();
        let mut index = HashMap::new();
        for name in meta.offset_keys() {
            let Some(info) = meta.info(&name) else {
                continue;
            };
            let (s, e) = info.data_offsets;
            let start = data_base.checked_add(s);
            let end = data_base.checked_add(e);
            match (start, end) {
                (Some(start), Some(end)) if start <= end && end <= len => {
                    index.insert(name.clone(), tensors.len());
                    tensors.push(SafetensorsTensorInfo {
                        dtype: kiln_dtype(info.dtype),
                        type_name: info.dtype.to_string(),
                        shape: info.shape.clone(),
                        size: end - start,
                        data_start: start,
                        name,
                    });
                }
                _ => {
                    return Err(ModelError::tensor(
                        &file,
                        &name,
                        format!("data_offsets [{s}, {e}] lie outside the file ({len} bytes)"),
                    ));
                }
            }
        }
        let mut user_metadata: Vec<(String, String)> = meta
            .metadata()
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        user_metadata.sort();
        Ok(SafetensorsFile {
            file,
            bytes,
            tensors,
            index,
            user_metadata,
        })
    }

    pub fn path(&self) -> &str {
        &self.file
    }
    pub fn file_size(&self) -> usize {
        self.bytes.len()
    }
    /// Tensors in data order.
    pub fn tensors(&self) -> &[SafetensorsTensorInfo] {
        &self.tensors
    }
    pub fn tensor_info(&self, name: &str) -> Option<&SafetensorsTensorInfo> {
        self.index.get(name).and_then(|&i| self.tensors.get(i))
    }
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
    /// The `__metadata__` string map, sorted by key.
    pub fn user_metadata(&self) -> &[(String, String)] {
        &self.user_metadata
    }

    /// The tensor's bytes, borrowed from the map. Errors: no such tensor, a dtype kiln does
    /// not read, or more than 4 dims.
    pub fn tensor(&self, name: &str) -> Result<HostTensor<'_>> {
        let info = self.tensor_info(name).ok_or_else(|| ModelError::NoTensor {
            file: self.file.clone(),
            name: name.to_string(),
        })?;
        let Some(dtype) = info.dtype else {
            return Err(ModelError::UnsupportedType {
                file: self.file.clone(),
                name: name.to_string(),
                type_name: info.type_name.clone(),
            });
        };
        let shape = Shape::new(&info.shape)
            .map_err(|e| ModelError::tensor(&self.file, name, e.to_string()))?;
        let data = info
            .data_start
            .checked_add(info.size)
            .and_then(|end| self.bytes.get(info.data_start..end))
            .ok_or_else(|| ModelError::tensor(&self.file, name, "data lies outside the file"))?;
        HostTensor::new(dtype, shape, data)
            .map_err(|e| ModelError::tensor(&self.file, name, e.to_string()))
    }
}

/// Turn a crate error into a message naming the field (and tensor, where the crate does not).
fn explain(file: &str, bytes: &[u8], e: SafeTensorError) -> ModelError {
    let header = bytes
        .get(..8)
        .and_then(|h| <[u8; 8]>::try_from(h).ok())
        .map(u64::from_le_bytes)
        .and_then(|n| usize::try_from(n).ok())
        .and_then(|n| bytes.get(8..8usize.checked_add(n)?));
    let detail = match (&e, header) {
        (
            SafeTensorError::TensorInvalidInfo | SafeTensorError::MetadataIncompleteBuffer,
            Some(h),
        ) => diagnose(h, bytes.len().saturating_sub(8 + h.len())),
        _ => None,
    };
    let msg = match detail {
        Some(d) => format!("invalid safetensors header: {e}: {d}"),
        None => format!("invalid safetensors header: {e}"),
    };
    ModelError::format(file, msg)
}

/// Find the tensor whose byte range does not match its shape × dtype, or the coverage gap.
fn diagnose(header: &[u8], data_len: usize) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(header).ok()?;
    let mut end_max = 0u64;
    for (name, t) in v.as_object()? {
        if name == "__metadata__" {
            continue;
        }
        let offs = t.get("data_offsets")?.as_array()?;
        let (s, e) = (offs.first()?.as_u64()?, offs.get(1)?.as_u64()?);
        end_max = end_max.max(e);
        let dtype: Dtype = serde_json::from_value(t.get("dtype")?.clone()).ok()?;
        let shape: Vec<u64> = serde_json::from_value(t.get("shape")?.clone()).ok()?;
        let bits = shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .and_then(|n| n.checked_mul(dtype.bitsize() as u64));
        if bits.map(|b| b / 8) != e.checked_sub(s) {
            return Some(format!(
                "tensor '{name}': shape {shape:?} of {dtype} does not match data_offsets [{s}, {e}]"
            ));
        }
    }
    (end_max != data_len as u64).then(|| {
        format!("the tensors end at data byte {end_max}, but the data section has {data_len} bytes")
    })
}

/// A parsed `model.safetensors.index.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardIndex {
    /// (tensor name, shard file name), sorted by tensor name.
    pub weight_map: Vec<(String, String)>,
    /// Distinct shard file names, sorted.
    pub shards: Vec<String>,
    /// `metadata.total_size`, if present.
    pub total_size: Option<u64>,
}

/// Parse and validate an index: a JSON object whose `weight_map` maps tensor names to shard
/// file names; a shard name must be a relative path inside the model directory.
pub fn parse_index(bytes: &[u8], file: &str) -> Result<ShardIndex> {
    let v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ModelError::format(file, format!("invalid JSON: {e}")))?;
    let root = v
        .as_object()
        .ok_or_else(|| ModelError::format(file, "the top level is not a JSON object"))?;
    let wm = root
        .get("weight_map")
        .ok_or_else(|| ModelError::format(file, "no 'weight_map' field"))?
        .as_object()
        .ok_or_else(|| ModelError::format(file, "'weight_map' is not an object"))?;
    if wm.is_empty() {
        return Err(ModelError::format(file, "'weight_map' is empty"));
    }
    let total_size = match root.get("metadata").and_then(|m| m.get("total_size")) {
        None => None,
        Some(t) => Some(t.as_u64().ok_or_else(|| {
            ModelError::format(
                file,
                format!("metadata.total_size is {t}, not a byte count"),
            )
        })?),
    };
    let mut weight_map = Vec::with_capacity(wm.len());
    let mut shards: Vec<String> = Vec::new();
    for (name, shard) in wm {
        let shard = shard.as_str().ok_or_else(|| {
            ModelError::format(
                file,
                format!("weight_map['{name}'] is {shard}, not a file name"),
            )
        })?;
        let p = Path::new(shard);
        let plain = !shard.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
        if !plain {
            return Err(ModelError::format(
                file,
                format!(
                    "weight_map['{name}'] = '{shard}' is not a relative file name inside the model \
                     directory"
                ),
            ));
        }
        weight_map.push((name.clone(), shard.to_string()));
        shards.push(shard.to_string());
    }
    shards.sort();
    shards.dedup();
    Ok(ShardIndex {
        weight_map,
        shards,
        total_size,
    })
}

pub const INDEX_FILE: &str = "model.safetensors.index.json";
pub const SINGLE_FILE: &str = "model.safetensors";

/// The safetensors weights of a model: one file, or the shards named by an index.
#[derive(Debug)]
pub struct SafetensorsModel {
    label: String,
    index_path: Option<PathBuf>,
    shards: Vec<SafetensorsFile>,
    /// tensor name → (shard, position in that shard's list).
    map: HashMap<String, (usize, usize)>,
    /// Listing order: shard order, then data order within a shard.
    order: Vec<(usize, usize)>,
}

impl SafetensorsModel {
    /// A `.safetensors` file, a `*.index.json`, or a directory holding `model.safetensors.index.json`
    /// (preferred) or `model.safetensors`.
    pub fn open(path: impl AsRef<Path>) -> Result<SafetensorsModel> {
        let path = path.as_ref();
        if path.is_dir() {
            let index = path.join(INDEX_FILE);
            if index.is_file() {
                return SafetensorsModel::open_index(&index);
            }
            let single = path.join(SINGLE_FILE);
            if single.is_file() {
                return Ok(SafetensorsModel::single(SafetensorsFile::open(&single)?));
            }
            return Err(ModelError::format(
                &path.display().to_string(),
                format!("no {SINGLE_FILE} or {INDEX_FILE} in this directory"),
            ));
        }
        if path.to_string_lossy().ends_with(".json") {
            return SafetensorsModel::open_index(path);
        }
        Ok(SafetensorsModel::single(SafetensorsFile::open(path)?))
    }

    pub fn single(file: SafetensorsFile) -> SafetensorsModel {
        let map = file
            .tensors()
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), (0, i)))
            .collect();
        let order = (0..file.tensors().len()).map(|i| (0, i)).collect();
        SafetensorsModel {
            label: file.path().to_string(),
            index_path: None,
            shards: vec![file],
            map,
            order,
        }
    }

    /// Open an index and every shard it names (each validated); every tensor it lists must be
    /// in its shard.
    pub fn open_index(index_path: &Path) -> Result<SafetensorsModel> {
        let label = index_path.display().to_string();
        let text = std::fs::read(index_path).map_err(|e| ModelError::io(index_path, e))?;
        let index = parse_index(&text, &label)?;
        let dir = index_path.parent().unwrap_or(Path::new("."));
        let mut shards = Vec::with_capacity(index.shards.len());
        for shard in &index.shards {
            let listed_for = index
                .weight_map
                .iter()
                .find(|(_, s)| s == shard)
                .map_or("", |(t, _)| t.as_str());
            let f = SafetensorsFile::open(dir.join(shard)).map_err(|e| match e {
                ModelError::Io { path, source } => ModelError::format(
                    &label,
                    format!("shard '{shard}' (listed for tensor '{listed_for}'): {path}: {source}"),
                ),
                other => other,
            })?;
            shards.push(f);
        }
        let mut map = HashMap::with_capacity(index.weight_map.len());
        for (name, shard) in &index.weight_map {
            let si = index.shards.binary_search(shard).map_err(|_| {
                ModelError::format(
                    &label,
                    format!("shard '{shard}' of tensor '{name}' is not open"),
                )
            })?;
            let ti = shards
                .get(si)
                .and_then(|f| f.index.get(name).copied())
                .ok_or_else(|| {
                    ModelError::format(
                        &label,
                        format!("tensor '{name}' is listed in shard '{shard}', which does not contain it"),
                    )
                })?;
            map.insert(name.clone(), (si, ti));
        }
        let mut order: Vec<(usize, usize)> = map.values().copied().collect();
        order.sort_unstable();
        Ok(SafetensorsModel {
            label,
            index_path: Some(index_path.to_path_buf()),
            shards,
            map,
            order,
        })
    }

    /// The file or index this model was opened from.
    pub fn path(&self) -> &str {
        &self.label
    }
    pub fn index_path(&self) -> Option<&Path> {
        self.index_path.as_deref()
    }
    pub fn shards(&self) -> &[SafetensorsFile] {
        &self.shards
    }
    pub fn len(&self) -> usize {
        self.order.len()
    }
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }
    /// Every tensor with the index of its shard, shard by shard in data order.
    pub fn tensors(&self) -> impl Iterator<Item = (usize, &SafetensorsTensorInfo)> {
        self.order
            .iter()
            .filter_map(|&(s, t)| Some((s, self.shards.get(s)?.tensors().get(t)?)))
    }
    pub fn tensor_info(&self, name: &str) -> Option<&SafetensorsTensorInfo> {
        let &(s, t) = self.map.get(name)?;
        self.shards.get(s)?.tensors().get(t)
    }
    pub fn tensor(&self, name: &str) -> Result<HostTensor<'_>> {
        let shard = self
            .map
            .get(name)
            .and_then(|&(s, _)| self.shards.get(s))
            .ok_or_else(|| ModelError::NoTensor {
                file: self.label.clone(),
                name: name.to_string(),
            })?;
        shard.tensor(name)
    }
}
