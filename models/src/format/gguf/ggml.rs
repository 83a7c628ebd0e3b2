//! Sizes and names of every ggml tensor type a GGUF file may carry, including the ones kiln
//! cannot compute with (so their data ranges are still validated when a file is opened).
//! Block sizes and block bytes are those of ggml's `type_traits` (ggml-common.h structs).

use kiln_core::DType;

/// (elements per block, bytes per block) of ggml type `id`, or `None` for an id that is not a
/// ggml type (removed types such as Q4_2 or the repacked Q4_0_4_4 included).
pub fn ggml_type_layout(id: u32) -> Option<(usize, usize)> {
    if let Some(d) = DType::from_ggml_id(id) {
        return Some((d.block_size(), d.block_bytes()));
    }
    Some(match id {
        9 => (32, 36),    // Q8_1: d, s (f16) + 32 × i8
        15 => (256, 292), // Q8_K: d (f32) + 256 × i8 + 16 × i16 bsums
        16 => (256, 66),  // IQ2_XXS: d + 32 × u16
        17 => (256, 74),  // IQ2_XS: d + 32 × u16 + 8 scales
        18 => (256, 98),  // IQ3_XXS: d + 96 bytes
        19 => (256, 50),  // IQ1_S: d + 32 qs + 8 × u16 qh
        21 => (256, 110), // IQ3_S: d + 64 qs + 8 qh + 32 signs + 4 scales
        22 => (256, 82),  // IQ2_S: d + 64 qs + 8 qh + 8 scales
        24 => (1, 1),     // I8
        25 => (1, 2),     // I16
        27 => (1, 8),     // I64
        28 => (1, 8),     // F64
        29 => (256, 56),  // IQ1_M: 32 qs + 16 qh + 8 scales
        34 => (256, 54),  // TQ1_0: 48 qs + 4 qh + d
        35 => (256, 66),  // TQ2_0: 64 qs + d
        39 => (32, 17),   // MXFP4: e (u8) + 16 qs
        _ => return None,
    })
}

/// The ggml name of type `id` (`Q4_K`, `IQ2_XXS`), or `ggml type 40` for ids kiln does not know.
pub fn ggml_type_name(id: u32) -> String {
    match id {
        34 => "TQ1_0".to_string(),
        35 => "TQ2_0".to_string(),
        39 => "MXFP4".to_string(),
        _ => match DType::ggml_name(id) {
            "unknown" => format!("ggml type {id}"),
            name => name.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_cover_kiln_types_and_known_others() {
        for d in DType::WEIGHT_TYPES {
            let id = d.ggml_id().unwrap_or(u32::MAX);
            assert_eq!(
                ggml_type_layout(id),
                Some((d.block_size(), d.block_bytes()))
            );
        }
        assert_eq!(ggml_type_layout(15), Some((256, 292)));
        assert_eq!(ggml_type_layout(4), None);
        assert_eq!(ggml_type_layout(31), None);
        assert_eq!(ggml_type_name(16), "IQ2_XXS");
        assert_eq!(ggml_type_name(4000), "ggml type 4000");
    }
}
