//! safetensors reader on arbitrary bytes: Ok or Err, never a panic; on Ok every tensor is
//! readable or refused with an error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(f) = kiln_models::SafetensorsFile::from_bytes(data.to_vec()) else {
        return;
    };
    for t in f.tensors() {
        if let Ok(h) = f.tensor(&t.name) {
            assert_eq!(h.data.len(), t.size);
            let _ = (h.data.first(), h.data.last());
        }
    }
});
