//! Element types of buffers and weights: plain scalars and GGUF block formats in one enum.
//!
//! A buffer is bytes plus a `DType`. Scalar types have block size 1; GGUF block types pack
//! `block_size()` elements into `block_bytes()` bytes (layouts in `crate::quant`).

use std::fmt;

use crate::error::{Error, Result};

#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    F32,
    F16,
    BF16,
    I32,
    U32,
    U8,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    IQ4_NL,
    IQ4_XS,
}

impl DType {
    /// Every dtype, scalars first.
    pub const ALL: [DType; 18] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::I32,
        DType::U32,
        DType::U8,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q8_0,
        DType::Q2_K,
        DType::Q3_K,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
        DType::IQ4_NL,
        DType::IQ4_XS,
    ];

    /// The 15 types a GGUF weight can have in kiln (float weights and the 12 block formats).
    pub const WEIGHT_TYPES: [DType; 15] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q8_0,
        DType::Q2_K,
        DType::Q3_K,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
        DType::IQ4_NL,
        DType::IQ4_XS,
    ];

    /// Elements per block (1 for scalar types).
    pub const fn block_size(self) -> usize {
        use DType::*;
        match self {
            F32 | F16 | BF16 | I32 | U32 | U8 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | IQ4_NL => 32,
            Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | IQ4_XS => 256,
        }
    }

    /// Bytes per block (the element size for scalar types).
    pub const fn block_bytes(self) -> usize {
        use DType::*;
        match self {
            F32 | I32 | U32 => 4,
            F16 | BF16 => 2,
            U8 => 1,
            Q4_0 => 18,
            Q4_1 => 20,
            Q5_0 => 22,
            Q5_1 => 24,
            Q8_0 => 34,
            Q2_K => 84,
            Q3_K => 110,
            Q4_K => 144,
            Q5_K => 176,
            Q6_K => 210,
            IQ4_NL => 18,
            IQ4_XS => 136,
        }
    }

    pub const fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// f32, f16 or bf16.
    pub const fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }

    /// Required alignment of a view's byte offset (element size for scalars, 1 for blocks).
    pub const fn align(self) -> usize {
        if self.is_quantized() {
            1
        } else {
            self.block_bytes()
        }
    }

    /// Bytes needed for `n` elements, overflow-checked; `n` must be a whole number of blocks.
    pub fn bytes_for(self, n: usize) -> Result<usize> {
        let bs = self.block_size();
        if !n.is_multiple_of(bs) {
            return Err(Error::Quant {
                dtype: self,
                msg: format!("{n} elements is not a multiple of the block size {bs}"),
            });
        }
        (n / bs)
            .checked_mul(self.block_bytes())
            .ok_or_else(|| Error::Quant {
                dtype: self,
                msg: format!("{n} elements overflow the address space"),
            })
    }

    /// The ggml type id used in GGUF tensor infos (`None` for U32/U8, which GGUF does not have).
    pub const fn ggml_id(self) -> Option<u32> {
        use DType::*;
        Some(match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q5_0 => 6,
            Q5_1 => 7,
            Q8_0 => 8,
            Q2_K => 10,
            Q3_K => 11,
            Q4_K => 12,
            Q5_K => 13,
            Q6_K => 14,
            IQ4_NL => 20,
            IQ4_XS => 23,
            I32 => 26,
            BF16 => 30,
            U32 | U8 => return None,
        })
    }

    pub fn from_ggml_id(id: u32) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.ggml_id() == Some(id))
    }

    /// The ggml name of a ggml type id kiln does not support (for error messages).
    pub fn ggml_name(id: u32) -> &'static str {
        match id {
            9 => "Q8_1",
            15 => "Q8_K",
            16 => "IQ2_XXS",
            17 => "IQ2_XS",
            18 => "IQ3_XXS",
            19 => "IQ1_S",
            21 => "IQ3_S",
            22 => "IQ2_S",
            24 => "I8",
            25 => "I16",
            27 => "I64",
            28 => "F64",
            29 => "IQ1_M",
            _ => DType::from_ggml_id(id)
                .map(|d| d.name())
                .unwrap_or("unknown"),
        }
    }

    /// The name as llama.cpp writes it (`Q4_K`, `BF16`, ...).
    pub const fn name(self) -> &'static str {
        use DType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            BF16 => "BF16",
            I32 => "I32",
            U32 => "U32",
            U8 => "U8",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q2_K => "Q2_K",
            Q3_K => "Q3_K",
            Q4_K => "Q4_K",
            Q5_K => "Q5_K",
            Q6_K => "Q6_K",
            IQ4_NL => "IQ4_NL",
            IQ4_XS => "IQ4_XS",
        }
    }

    /// Parse a name, case-insensitively (`q4_k`, `BF16`).
    pub fn parse(s: &str) -> Option<DType> {
        DType::ALL
            .into_iter()
            .find(|d| d.name().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_sizes_match_ggml() {
        for d in DType::ALL {
            if let Some(id) = d.ggml_id() {
                assert_eq!(DType::from_ggml_id(id), Some(d));
            }
            assert_eq!(DType::parse(&d.name().to_lowercase()), Some(d));
        }
        // ggml_type_size / ggml_blck_size from ggml.c
        assert_eq!(DType::Q4_K.bytes_for(512).unwrap(), 288);
        assert_eq!(DType::Q8_0.bytes_for(64).unwrap(), 68);
        assert!(DType::Q8_0.bytes_for(33).is_err());
        assert!(DType::F32.bytes_for(usize::MAX).is_err());
        assert_eq!(DType::ggml_name(15), "Q8_K");
    }
}
