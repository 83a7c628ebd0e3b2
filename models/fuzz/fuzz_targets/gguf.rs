//! GGUF reader on arbitrary bytes: parsing must return Ok or Err, never panic or read out of
//! bounds; on Ok, every tensor and every typed getter must also answer without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(g) = kiln_models::GgufFile::from_bytes(data.to_vec()) else {
        return;
    };
    for (k, v) in g.metadata().iter() {
        let _ = (
            g.get_u32(k),
            g.get_i64(k),
            g.get_f32(k),
            g.get_str(k),
            g.get_bool(k),
        );
        if let Some(a) = v.as_array() {
            let _ = (a.len(), a.get(0), a.to_i64s());
        }
    }
    for t in g.tensors() {
        if let Ok(h) = g.tensor(&t.name) {
            assert_eq!(Some(h.data.len()), t.size);
            // touch the first and last byte: they must lie inside the buffer
            let _ = (h.data.first(), h.data.last());
        }
    }
});
