//! GGUF metadata values, arrays and the ordered key → value map with typed getters.
//!
//! Integer getters accept any stored integer width whose value fits the asked type (a `u64`
//! holding 32 fits `get_u32`); a missing key or a mismatch is an error naming the file, the key,
//! the wanted type and what was found.

use std::collections::HashMap;
use std::fmt;

use crate::error::{ModelError, Result};

/// The metadata value type ids of the GGUF spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgufType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl GgufType {
    pub fn from_id(id: u32) -> Option<GgufType> {
        use GgufType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        use GgufType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }
    /// Bytes of one value of a fixed-size type (`None` for string and array).
    pub fn fixed_size(self) -> Option<usize> {
        use GgufType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            String | Array => None,
        }
    }
}

impl fmt::Display for GgufType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(GgufArray),
}

/// An array value, stored per element type (a vocabulary is a `Vec<String>`, scores a
/// `Vec<f32>`). Arrays of arrays hold each inner array with its own element type.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<GgufArray>),
}

impl GgufValue {
    pub fn value_type(&self) -> GgufType {
        use GgufValue as V;
        match self {
            V::U8(_) => GgufType::U8,
            V::I8(_) => GgufType::I8,
            V::U16(_) => GgufType::U16,
            V::I16(_) => GgufType::I16,
            V::U32(_) => GgufType::U32,
            V::I32(_) => GgufType::I32,
            V::U64(_) => GgufType::U64,
            V::I64(_) => GgufType::I64,
            V::F32(_) => GgufType::F32,
            V::F64(_) => GgufType::F64,
            V::Bool(_) => GgufType::Bool,
            V::String(_) => GgufType::String,
            V::Array(_) => GgufType::Array,
        }
    }
    /// Any integer value as i128 (every GGUF integer fits), `None` for other types.
    fn as_i128(&self) -> Option<i128> {
        use GgufValue as V;
        Some(match *self {
            V::U8(v) => v.into(),
            V::I8(v) => v.into(),
            V::U16(v) => v.into(),
            V::I16(v) => v.into(),
            V::U32(v) => v.into(),
            V::I32(v) => v.into(),
            V::U64(v) => v.into(),
            V::I64(v) => v.into(),
            _ => return None,
        })
    }
    pub fn as_u64(&self) -> Option<u64> {
        self.as_i128().and_then(|v| u64::try_from(v).ok())
    }
    pub fn as_i64(&self) -> Option<i64> {
        self.as_i128().and_then(|v| i64::try_from(v).ok())
    }
    pub fn as_u32(&self) -> Option<u32> {
        self.as_i128().and_then(|v| u32::try_from(v).ok())
    }
    pub fn as_i32(&self) -> Option<i32> {
        self.as_i128().and_then(|v| i32::try_from(v).ok())
    }
    pub fn as_usize(&self) -> Option<usize> {
        self.as_i128().and_then(|v| usize::try_from(v).ok())
    }
    /// f64, f32 or an integer, as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F64(v) => Some(v),
            GgufValue::F32(v) => Some(v.into()),
            _ => self.as_i128().map(|v| v as f64),
        }
    }
    /// f32, f64 (rounded) or an integer, as f32.
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            GgufValue::F32(v) => Some(v),
            _ => self.as_f64().map(|v| v as f32),
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&GgufArray> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
    /// Short description for error messages: `u32 7`, `string "llama"`, `array of 3 f32`.
    fn describe(&self) -> String {
        match self {
            GgufValue::String(s) if s.len() > 40 => format!("a string of {} bytes", s.len()),
            GgufValue::String(s) => format!("string {s:?}"),
            GgufValue::Array(a) => format!("an array of {} {}", a.len(), a.elem_type()),
            GgufValue::Bool(b) => format!("bool {b}"),
            GgufValue::F32(v) => format!("f32 {v}"),
            GgufValue::F64(v) => format!("f64 {v}"),
            v => format!("{} {}", v.value_type(), v.as_i128().unwrap_or_default()),
        }
    }
}

impl GgufArray {
    pub fn elem_type(&self) -> GgufType {
        use GgufArray as A;
        match self {
            A::U8(_) => GgufType::U8,
            A::I8(_) => GgufType::I8,
            A::U16(_) => GgufType::U16,
            A::I16(_) => GgufType::I16,
            A::U32(_) => GgufType::U32,
            A::I32(_) => GgufType::I32,
            A::U64(_) => GgufType::U64,
            A::I64(_) => GgufType::I64,
            A::F32(_) => GgufType::F32,
            A::F64(_) => GgufType::F64,
            A::Bool(_) => GgufType::Bool,
            A::String(_) => GgufType::String,
            A::Array(_) => GgufType::Array,
        }
    }
    pub fn len(&self) -> usize {
        use GgufArray as A;
        match self {
            A::U8(v) => v.len(),
            A::I8(v) => v.len(),
            A::U16(v) => v.len(),
            A::I16(v) => v.len(),
            A::U32(v) => v.len(),
            A::I32(v) => v.len(),
            A::U64(v) => v.len(),
            A::I64(v) => v.len(),
            A::F32(v) => v.len(),
            A::F64(v) => v.len(),
            A::Bool(v) => v.len(),
            A::String(v) => v.len(),
            A::Array(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Element `i` as a value (clones strings and inner arrays).
    pub fn get(&self, i: usize) -> Option<GgufValue> {
        use GgufArray as A;
        use GgufValue as V;
        Some(match self {
            A::U8(v) => V::U8(*v.get(i)?),
            A::I8(v) => V::I8(*v.get(i)?),
            A::U16(v) => V::U16(*v.get(i)?),
            A::I16(v) => V::I16(*v.get(i)?),
            A::U32(v) => V::U32(*v.get(i)?),
            A::I32(v) => V::I32(*v.get(i)?),
            A::U64(v) => V::U64(*v.get(i)?),
            A::I64(v) => V::I64(*v.get(i)?),
            A::F32(v) => V::F32(*v.get(i)?),
            A::F64(v) => V::F64(*v.get(i)?),
            A::Bool(v) => V::Bool(*v.get(i)?),
            A::String(v) => V::String(v.get(i)?.clone()),
            A::Array(v) => V::Array(v.get(i)?.clone()),
        })
    }
    pub fn as_strs(&self) -> Option<&[String]> {
        match self {
            GgufArray::String(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_f32s(&self) -> Option<&[f32]> {
        match self {
            GgufArray::F32(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_i32s(&self) -> Option<&[i32]> {
        match self {
            GgufArray::I32(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_bools(&self) -> Option<&[bool]> {
        match self {
            GgufArray::Bool(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_arrays(&self) -> Option<&[GgufArray]> {
        match self {
            GgufArray::Array(v) => Some(v),
            _ => None,
        }
    }
    /// Any integer array as i64 (`None` for other element types or a u64 above i64::MAX).
    pub fn to_i64s(&self) -> Option<Vec<i64>> {
        use GgufArray as A;
        fn conv<T: Copy + TryInto<i64>>(v: &[T]) -> Option<Vec<i64>> {
            v.iter().map(|&x| x.try_into().ok()).collect()
        }
        match self {
            A::U8(v) => conv(v),
            A::I8(v) => conv(v),
            A::U16(v) => conv(v),
            A::I16(v) => conv(v),
            A::U32(v) => conv(v),
            A::I32(v) => conv(v),
            A::U64(v) => conv(v),
            A::I64(v) => conv(v),
            _ => None,
        }
    }
}

/// The metadata of a GGUF file: keys in file order, looked up by name.
#[derive(Clone, Debug, Default)]
pub struct Metadata {
    file: String,
    entries: Vec<(String, GgufValue)>,
    index: HashMap<String, usize>,
}

impl Metadata {
    pub(crate) fn new(file: &str) -> Metadata {
        Metadata {
            file: file.to_string(),
            ..Metadata::default()
        }
    }
    /// Insert; `false` if the key already exists (the caller reports the duplicate).
    pub(crate) fn insert(&mut self, key: String, value: GgufValue) -> bool {
        if self.index.contains_key(&key) {
            return false;
        }
        self.index.insert(key.clone(), self.entries.len());
        self.entries.push((key, value));
        true
    }
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    /// Entries in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &GgufValue)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.index
            .get(key)
            .and_then(|&i| self.entries.get(i))
            .map(|(_, v)| v)
    }
    pub fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    fn typed<'a, T>(
        &'a self,
        key: &str,
        want: &str,
        f: impl Fn(&'a GgufValue) -> Option<T>,
    ) -> Result<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => f(v).map(Some).ok_or_else(|| {
                ModelError::metadata(
                    &self.file,
                    key,
                    format!("expected {want}, found {}", v.describe()),
                )
            }),
        }
    }
    fn need<T>(&self, key: &str, v: Result<Option<T>>) -> Result<T> {
        v?.ok_or_else(|| ModelError::metadata(&self.file, key, "missing"))
    }
}

macro_rules! getters {
    ($( $get:ident, $opt:ident, $ty:ty, $want:literal, $conv:expr; )*) => {
        impl Metadata {
            $(
                #[doc = concat!("The value of `key` as ", $want, "; error if missing or of another type.")]
                pub fn $get(&self, key: &str) -> Result<$ty> {
                    self.need(key, self.$opt(key))
                }
                #[doc = concat!("The value of `key` as ", $want, ", `None` if absent; error if of another type.")]
                pub fn $opt(&self, key: &str) -> Result<Option<$ty>> {
                    self.typed(key, $want, $conv)
                }
            )*
        }
    };
}

getters! {
    get_u32, opt_u32, u32, "an integer in u32 range", GgufValue::as_u32;
    get_i32, opt_i32, i32, "an integer in i32 range", GgufValue::as_i32;
    get_u64, opt_u64, u64, "an integer in u64 range", GgufValue::as_u64;
    get_i64, opt_i64, i64, "an integer in i64 range", GgufValue::as_i64;
    get_usize, opt_usize, usize, "a non-negative integer", GgufValue::as_usize;
    get_f32, opt_f32, f32, "a number", GgufValue::as_f32;
    get_f64, opt_f64, f64, "a number", GgufValue::as_f64;
    get_bool, opt_bool, bool, "a bool", GgufValue::as_bool;
    get_str, opt_str, &str, "a string", GgufValue::as_str;
    get_arr, opt_arr, &GgufArray, "an array", GgufValue::as_array;
}
