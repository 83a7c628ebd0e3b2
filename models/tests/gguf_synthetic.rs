//! GGUF reader on hand-built files: every value type, getters, and each kind of malformed file
//! (huge lengths and counts, bad dims, bad types, misaligned or out-of-file offsets, overlaps,
//! duplicates, bad alignment, deep nesting, bad UTF-8/bools, wrong versions).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use common::*;
use kiln_core::DType;
use kiln_models::{GgufArray, GgufFile, GgufValue, ModelError};

fn open(b: Vec<u8>) -> Result<GgufFile, ModelError> {
    GgufFile::from_bytes(b)
}

/// A valid file with one F32 tensor `a` (ne [4, 2] → shape [2, 4]) at offset 0.
fn one_tensor(info: Vec<u8>, data: &[u8]) -> Vec<u8> {
    gguf(
        3,
        &[kv_str("general.architecture", "llama")],
        &[info],
        32,
        data,
    )
}

#[test]
fn every_value_type_and_getter() {
    let mut nested = Vec::new();
    // [[1u8, 2u8], ["x"]]
    nested.extend(arr(0, 2, &[1, 2]));
    let mut one_str = Vec::new();
    s(&mut one_str, "x");
    nested.extend(arr(8, 1, &one_str));
    let mut strs = Vec::new();
    s(&mut strs, "<s>");
    s(&mut strs, "é");
    let kvs = vec![
        kv("u8", 0, &[200]),
        kv("i8", 1, &(-5i8).to_le_bytes()),
        kv("u16", 2, &60000u16.to_le_bytes()),
        kv("i16", 3, &(-300i16).to_le_bytes()),
        kv_u32("u32", 7),
        kv("i32", 5, &(-7i32).to_le_bytes()),
        kv("f32", 6, &1.5f32.to_le_bytes()),
        kv("bool", 7, &[1]),
        kv_str("str", "llama"),
        kv("u64", 10, &(1u64 << 40).to_le_bytes()),
        kv("i64", 11, &(-1i64).to_le_bytes()),
        kv("f64", 12, &0.25f64.to_le_bytes()),
        kv("arr_bool", 9, &arr(7, 2, &[1, 0])),
        kv("arr_f32", 9, &arr(6, 2, &f32s(&[0.5, -1.0]))),
        kv("arr_str", 9, &arr(8, 2, &strs)),
        kv("nested", 9, &arr(9, 2, &nested)),
        kv("empty", 9, &arr(4, 0, &[])),
    ];
    let g = open(gguf(3, &kvs, &[], 32, &[])).unwrap();
    assert_eq!(g.version(), 3);
    let keys: Vec<&str> = g.metadata().iter().map(|(k, _)| k).collect();
    assert_eq!(keys[0], "u8");
    assert_eq!(keys.len(), 17);
    // integer getters accept any width that fits
    assert_eq!(g.get_u32("u8").unwrap(), 200);
    assert_eq!(g.get_i32("i8").unwrap(), -5);
    assert_eq!(g.get_u64("u16").unwrap(), 60000);
    assert_eq!(g.get_i64("i16").unwrap(), -300);
    assert_eq!(g.get_usize("u32").unwrap(), 7);
    assert_eq!(g.get_u64("u64").unwrap(), 1 << 40);
    assert_eq!(g.get_i32("i64").unwrap(), -1);
    assert_eq!(g.get_f32("f32").unwrap(), 1.5);
    assert_eq!(g.get_f32("f64").unwrap(), 0.25);
    assert_eq!(g.get_f64("u32").unwrap(), 7.0);
    assert!(g.get_bool("bool").unwrap());
    assert_eq!(g.get_str("str").unwrap(), "llama");
    assert_eq!(
        g.get_arr("arr_bool").unwrap().as_bools().unwrap(),
        &[true, false]
    );
    assert_eq!(
        g.get_arr("arr_f32").unwrap().as_f32s().unwrap(),
        &[0.5, -1.0]
    );
    assert_eq!(
        g.get_arr("arr_str").unwrap().as_strs().unwrap(),
        &["<s>", "é"]
    );
    let n = g.get_arr("nested").unwrap().as_arrays().unwrap();
    assert_eq!(n[0], GgufArray::U8(vec![1, 2]));
    assert_eq!(n[1], GgufArray::String(vec!["x".into()]));
    assert!(g.get_arr("empty").unwrap().is_empty());
    assert_eq!(g.metadata().get("i16"), Some(&GgufValue::I16(-300)));
    // mismatches and ranges name the key and what was found
    err_has(g.get_u32("i8"), &["<memory>", "key 'i8'", "u32", "i8 -5"]);
    err_has(g.get_u32("u64"), &["key 'u64'", "u32 range"]);
    err_has(
        g.get_str("u32"),
        &["key 'u32'", "expected a string", "u32 7"],
    );
    err_has(g.get_u32("missing.key"), &["key 'missing.key'", "missing"]);
    assert_eq!(g.opt_u32("missing.key").unwrap(), None);
    assert!(g.opt_str("u32").is_err());
    assert_eq!(g.get_arr("arr_str").unwrap().to_i64s(), None);
    assert_eq!(
        g.get_arr("nested")
            .unwrap()
            .get(0)
            .unwrap()
            .as_array()
            .unwrap()
            .to_i64s(),
        Some(vec![1, 2])
    );
}

#[test]
fn tensors_shapes_and_data() {
    let data: Vec<f32> = (0..8).map(|i| i as f32).collect();
    let mut bytes = f32s(&data);
    bytes.resize(32, 0); // pad to alignment
    let q8: Vec<u8> = (0..34).map(|i| i as u8).collect();
    bytes.extend(&q8);
    let g = open(gguf(
        2,
        &[],
        &[tinfo("a", &[4, 2], 0, 0), tinfo("q", &[32], 8, 32)],
        32,
        &bytes,
    ))
    .unwrap();
    assert_eq!(g.version(), 2);
    let a = g.tensor("a").unwrap();
    assert_eq!(a.dtype, DType::F32);
    assert_eq!(a.shape.dims(), &[2, 4]);
    assert_eq!(a.data, &f32s(&data)[..]);
    let q = g.tensor("q").unwrap();
    assert_eq!(
        (q.dtype, q.shape.dims(), q.data),
        (DType::Q8_0, &[32][..], &q8[..])
    );
    let info = g.tensor_info("q").unwrap();
    assert_eq!(
        (info.offset, info.size, info.data_start % 32),
        (32, Some(34), 0)
    );
    err_has(g.tensor("nope"), &["<memory>", "no tensor named 'nope'"]);
}

#[test]
fn alignment_key() {
    let info = tinfo("a", &[4], 0, 0);
    let g = open(gguf(
        3,
        &[kv_u32("general.alignment", 64)],
        std::slice::from_ref(&info),
        64,
        &f32s(&[1.0; 4]),
    ))
    .unwrap();
    assert_eq!(g.alignment(), 64);
    assert_eq!(g.data_start() % 64, 0);
    assert_eq!(g.tensor("a").unwrap().data, &f32s(&[1.0; 4])[..]);
    for bad in [0u32, 3, 48] {
        let b = gguf(
            3,
            &[kv_u32("general.alignment", bad)],
            std::slice::from_ref(&info),
            32,
            &[0; 16],
        );
        err_has(open(b), &["general.alignment", "power of two"]);
    }
    let b = gguf(
        3,
        &[kv_str("general.alignment", "32")],
        &[info],
        32,
        &[0; 16],
    );
    err_has(open(b), &["general.alignment", "string"]);
}

#[test]
fn versions_and_magic() {
    err_has(
        open(gguf(1, &[], &[], 32, &[])),
        &["version 1 is not supported"],
    );
    err_has(
        open(gguf(4, &[], &[], 32, &[])),
        &["unsupported GGUF version 4"],
    );
    err_has(
        open(gguf(3u32.swap_bytes(), &[], &[], 32, &[])),
        &["big-endian"],
    );
    let mut b = gguf(3, &[], &[], 32, &[]);
    b[0] = b'X';
    err_has(open(b), &["not a GGUF file", "magic"]);
    err_has(open(Vec::new()), &["truncated", "magic"]);
    err_has(open(b"GGUF\x03\x00".to_vec()), &["truncated", "version"]);
}

#[test]
fn hostile_lengths_and_counts() {
    // key length u64::MAX
    let mut k = Vec::new();
    k.extend(u64::MAX.to_le_bytes());
    k.extend([0u8; 16]);
    err_has(
        open(gguf_counts(3, 1, 0, &[k], &[], 1, &[])),
        &["string length", "bytes are left"],
    );
    // string value length far past the end
    let mut v = Vec::new();
    v.extend((1u64 << 62).to_le_bytes());
    err_has(
        open(gguf(3, &[kv("k", 8, &v)], &[], 1, &[])),
        &["key 'k'", "string length", "bytes are left"],
    );
    // array lengths: u64::MAX of u32, 2^61 strings, 2^60 nested arrays
    for ty in [4u32, 8, 9, 0, 12] {
        let b = gguf(3, &[kv("k", 9, &arr(ty, u64::MAX / 2, &[]))], &[], 1, &[]);
        err_has(open(b), &["key 'k'", "array length", "bytes are left"]);
    }
    // counts
    err_has(
        open(gguf_counts(3, u64::MAX, 0, &[], &[], 1, &[])),
        &["metadata key count"],
    );
    err_has(
        open(gguf_counts(3, 0, u64::MAX, &[], &[], 1, &[])),
        &["tensor count"],
    );
    err_has(
        open(gguf_counts(3, 0, 1 << 40, &[], &[], 1, &[])),
        &["tensor count"],
    );
    // one more kv than present
    err_has(
        open(gguf_counts(3, 2, 0, &[kv_u32("a", 1)], &[], 1, &[0; 13])),
        &["metadata key #1"],
    );
}

#[test]
fn hostile_tensor_infos() {
    let d = [0u8; 64];
    err_has(
        open(one_tensor(tinfo("a", &[1, 1, 1, 1, 1], 0, 0), &d)),
        &["tensor 'a'", "n_dims is 5"],
    );
    err_has(
        open(one_tensor(tinfo("a", &[1 << 33, 1 << 33], 0, 0), &d)),
        &["tensor 'a'", "overflow"],
    );
    err_has(
        open(one_tensor(tinfo("a", &[u64::MAX], 0, 0), &d)),
        &["tensor 'a'", "too large"],
    );
    err_has(
        open(one_tensor(tinfo("a", &[1 << 62], 1, 0), &d)),
        &["tensor 'a'", "exceeds file size"],
    );
    err_has(
        open(one_tensor(tinfo("a", &[33], 8, 0), &d)),
        &["tensor 'a'", "ne[0] = 33", "Q8_0 block size 32"],
    );
    err_has(
        open(one_tensor(tinfo("a", &[4], 0, 4), &d)),
        &["tensor 'a'", "offset 4", "alignment 32"],
    );
    err_has(
        open(one_tensor(tinfo("a", &[32], 0, 0), &d)),
        &["tensor 'a'", "data range", "exceeds file size"],
    );
    err_has(
        open(one_tensor(tinfo("a", &[4], 0, 1 << 40), &d)),
        &["tensor 'a'", "exceeds file size"],
    );
    err_has(
        open(one_tensor(tinfo("a", &[4], 0, u64::MAX - 31), &d)),
        &["tensor 'a'"],
    );
    // overlap and duplicates
    let b = gguf(
        3,
        &[],
        &[tinfo("a", &[16], 0, 0), tinfo("b", &[4], 0, 32)],
        32,
        &[0; 96],
    );
    err_has(open(b), &["overlaps tensor 'a'"]);
    let b = gguf(
        3,
        &[],
        &[tinfo("a", &[4], 0, 0), tinfo("a", &[4], 0, 32)],
        32,
        &[0; 64],
    );
    err_has(open(b), &["tensor 'a'", "appears twice"]);
    let b = gguf(3, &[kv_u32("x", 1), kv_u32("x", 2)], &[], 32, &[]);
    err_has(open(b), &["key 'x'", "appears twice"]);
    let b = gguf(3, &[kv_u32("", 1)], &[], 32, &[]);
    err_has(open(b), &["metadata key #0 is empty"]);
}

#[test]
fn unsupported_types_open_and_fail_on_use() {
    // Q8_K (15): 256 elements in 292 bytes; IQ2_XXS (16): 66 bytes; id 4000: unknown to kiln.
    let data = vec![0u8; 416 + 32];
    let b = gguf(
        3,
        &[],
        &[
            tinfo("k", &[256], 15, 0),
            tinfo("x", &[256], 16, 320),
            tinfo("u", &[8], 4000, 416),
        ],
        32,
        &data,
    );
    let g = open(b).unwrap();
    let k = g.tensor_info("k").unwrap();
    assert_eq!(
        (k.dtype, k.size, k.type_name().as_str()),
        (None, Some(292), "Q8_K")
    );
    err_has(g.tensor("k"), &["tensor 'k'", "Q8_K", "does not support"]);
    err_has(g.tensor("x"), &["tensor 'x'", "IQ2_XXS"]);
    err_has(g.tensor("u"), &["tensor 'u'", "ggml type 4000"]);
    // ... but their data ranges are still validated when the size is known
    let b = gguf(3, &[], &[tinfo("k", &[512], 15, 0)], 32, &[0; 292]);
    err_has(open(b), &["tensor 'k'", "exceeds file size"]);
}

#[test]
fn nesting_utf8_bools_and_types() {
    // 3 levels deep is fine; 200 levels is refused without recursion blowing the stack
    let mut v = arr(4, 1, &5u32.to_le_bytes());
    for _ in 0..2 {
        v = arr(9, 1, &v);
    }
    let g = open(gguf(3, &[kv("n", 9, &v)], &[], 1, &[])).unwrap();
    assert_eq!(g.get_arr("n").unwrap().len(), 1);
    let mut v = arr(4, 0, &[]);
    for _ in 0..200 {
        v = arr(9, 1, &v);
    }
    err_has(
        open(gguf(3, &[kv("n", 9, &v)], &[], 1, &[])),
        &["key 'n'", "nested deeper"],
    );

    let mut bad = Vec::new();
    bad.extend(2u64.to_le_bytes());
    bad.extend([0xff, 0xfe]);
    err_has(
        open(gguf(3, &[kv("k", 8, &bad)], &[], 1, &[])),
        &["key 'k'", "not valid UTF-8"],
    );
    err_has(
        open(gguf(3, &[kv("b", 7, &[2])], &[], 1, &[])),
        &["key 'b'", "not 0 or 1"],
    );
    err_has(
        open(gguf(3, &[kv("b", 9, &arr(7, 2, &[0, 9]))], &[], 1, &[])),
        &["key 'b'", "not 0 or 1"],
    );
    err_has(
        open(gguf(3, &[kv("t", 13, &[0; 8])], &[], 1, &[])),
        &["key 't'", "unknown value type id 13"],
    );
    err_has(
        open(gguf(3, &[kv("t", 9, &arr(99, 0, &[]))], &[], 1, &[])),
        &["key 't'", "element type id 99"],
    );
}

#[test]
fn no_tensors_and_zero_size() {
    // A vocab-only file ends right after its metadata (no padding): fine.
    let g = open(gguf(3, &[kv_u32("a", 1)], &[], 1, &[])).unwrap();
    assert!(g.tensors().is_empty());
    // A zero-element tensor has an empty range and overlaps nothing.
    let b = gguf(
        3,
        &[],
        &[tinfo("z", &[0, 4], 0, 0), tinfo("a", &[4], 0, 0)],
        32,
        &[0; 16],
    );
    let g = open(b).unwrap();
    assert!(g.tensor("z").unwrap().data.is_empty());
    assert_eq!(g.tensor("a").unwrap().data.len(), 16);
}
