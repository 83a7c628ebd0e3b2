//! A real zoo GGUF, damaged: truncated at every byte of its header and tensor-info region and
//! then strided through the data, bytes flipped, and individual fields rewritten (huge counts,
//! lengths and dims, bad types, misaligned and out-of-file offsets). Every case must give an
//! `Err` naming the problem, never a panic or an out-of-bounds read.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use common::*;
use kiln_models::GgufFile;

fn load() -> Option<Vec<u8>> {
    match zoo() {
        Some(z) => Some(std::fs::read(z.join("llama3/model-q8_0.gguf")).unwrap()),
        None => {
            println!("skipped: zoo not found");
            None
        }
    }
}

/// Position of tensor `name`'s info: returns the offset of its n_dims field.
fn find_info(b: &[u8], name: &str) -> usize {
    let mut needle = (name.len() as u64).to_le_bytes().to_vec();
    needle.extend(name.as_bytes());
    let at = b.windows(needle.len()).position(|w| w == needle).unwrap();
    at + needle.len()
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn truncated_everywhere_is_an_error() {
    let Some(full) = load() else { return };
    let g = GgufFile::from_bytes(full.clone()).unwrap();
    let data_start = g.data_start();
    let mut cases = 0;
    // every byte of the header + tensor infos (+ the padding), then strided through the data
    let lens = (0..=data_start).chain((data_start..full.len()).step_by(997));
    for len in lens {
        let e = GgufFile::from_bytes(full[..len].to_vec());
        let msg = e
            .expect_err(&format!("prefix of {len} bytes opened"))
            .to_string();
        assert!(msg.starts_with("<memory>: "), "{msg}");
        assert!(
            msg.contains("truncated")
                || msg.contains("exceeds file size")
                || msg.contains("bytes are left"),
            "prefix {len}: {msg}"
        );
        cases += 1;
    }
    assert!(GgufFile::from_bytes(full[..full.len() - 1].to_vec()).is_err());
    println!(
        "{cases} truncations of a {} byte file (data at {data_start}) all refused",
        full.len()
    );
    assert!(cases > data_start);
}

#[test]
fn flipped_bytes_never_panic() {
    let Some(full) = load() else { return };
    let data_start = GgufFile::from_bytes(full.clone()).unwrap().data_start();
    let (mut ok, mut err) = (0, 0);
    // every header byte inverted, then some bit flips
    for i in 0..data_start {
        for mask in [0xffu8, 0x01] {
            let mut b = full.clone();
            b[i] ^= mask;
            match GgufFile::from_bytes(b) {
                Ok(g) => {
                    ok += 1;
                    for t in g.tensors() {
                        let _ = g.tensor(&t.name);
                    }
                }
                Err(e) => {
                    assert!(!e.to_string().is_empty());
                    err += 1;
                }
            }
        }
    }
    println!(
        "{} header byte flips: {ok} still valid, {err} refused",
        ok + err
    );
    assert!(err > 0);
}

#[test]
fn rewritten_fields_are_refused_by_name() {
    let Some(full) = load() else { return };
    let name = "blk.0.attn_q.weight";
    let at = find_info(&full, name);
    assert_eq!(u32::from_le_bytes(full[at..at + 4].try_into().unwrap()), 2);
    let (ne0, ne1, ty, off) = (at + 4, at + 12, at + 20, at + 24);
    let original_offset = u64::from_le_bytes(full[off..off + 8].try_into().unwrap());
    let named = |b: Vec<u8>, parts: &[&str]| {
        let mut p = vec![name];
        p.extend(parts);
        err_has(GgufFile::from_bytes(b), &p);
    };

    let mut b = full.clone();
    put_u32(&mut b, at, 5);
    named(b, &["n_dims is 5"]);
    let mut b = full.clone();
    put_u64(&mut b, ne1, u64::MAX);
    named(b, &["too large"]);
    let mut b = full.clone();
    put_u64(&mut b, ne1, 1 << 40);
    named(b, &["exceeds file size"]);
    let mut b = full.clone();
    put_u64(&mut b, ne0, 100);
    named(b, &["ne[0] = 100", "block size 32"]);
    let mut b = full.clone();
    put_u64(&mut b, off, original_offset + 1);
    named(b, &["not a multiple of the alignment 32"]);
    let mut b = full.clone();
    put_u64(&mut b, off, original_offset + 32);
    let msg = err_has(GgufFile::from_bytes(b), &["overlaps"]);
    assert!(msg.contains(name), "{msg}");
    let mut b = full.clone();
    put_u64(&mut b, off, full.len() as u64 / 32 * 32);
    named(b, &["data range", "exceeds file size"]);
    // An unknown type id of unknown size still opens; the tensor is refused when used.
    let mut b = full.clone();
    put_u32(&mut b, ty, 4000);
    let g = GgufFile::from_bytes(b).unwrap();
    err_has(
        g.tensor(name),
        &[name, "ggml type 4000", "does not support"],
    );
    // A known type kiln cannot compute with (IQ2_XXS, 66 bytes / 256) also opens.
    let mut b = full.clone();
    put_u64(&mut b, ne0, 256);
    put_u64(&mut b, ne1, 128);
    put_u32(&mut b, ty, 16);
    let g = GgufFile::from_bytes(b).unwrap();
    err_has(g.tensor(name), &[name, "IQ2_XXS"]);

    // header counts and the first key's length
    let mut b = full.clone();
    put_u64(&mut b, 8, u64::MAX);
    err_has(GgufFile::from_bytes(b), &["tensor count"]);
    let mut b = full.clone();
    put_u64(&mut b, 16, 1 << 50);
    err_has(GgufFile::from_bytes(b), &["metadata key count"]);
    let mut b = full.clone();
    put_u64(&mut b, 24, u64::MAX - 3);
    err_has(
        GgufFile::from_bytes(b),
        &["metadata key #0", "string length"],
    );
    let mut b = full;
    b[4] = 1;
    err_has(GgufFile::from_bytes(b), &["version 1"]);
}
