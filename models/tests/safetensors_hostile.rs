//! safetensors and shard-index readers: valid single and sharded models, and malformed files
//! (bad header length, bad JSON, offsets out of range, truncation, flipped bytes, unsupported
//! dtypes, bad indexes, missing shards and tensors).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use common::*;
use kiln_core::DType;
use kiln_models::{HfDir, SafetensorsFile, SafetensorsModel, parse_index};

fn open(b: Vec<u8>) -> Result<SafetensorsFile, kiln_models::ModelError> {
    SafetensorsFile::from_bytes(b)
}

const TWO: &str = r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"BF16","shape":[2,2],"data_offsets":[8,16]}}"#;

#[test]
fn valid_file() {
    let data: Vec<u8> = (0..16).collect();
    let f = open(st(TWO, &data)).unwrap();
    assert_eq!(
        f.user_metadata(),
        &[("format".to_string(), "pt".to_string())]
    );
    let names: Vec<&str> = f.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    let a = f.tensor("a").unwrap();
    assert_eq!(
        (a.dtype, a.shape.dims(), a.data),
        (DType::F32, &[2][..], &data[..8])
    );
    let b = f.tensor("b").unwrap();
    assert_eq!(
        (b.dtype, b.shape.dims(), b.data),
        (DType::BF16, &[2, 2][..], &data[8..])
    );
    err_has(f.tensor("c"), &["<memory>", "no tensor named 'c'"]);
}

#[test]
fn malformed_headers() {
    let data = [0u8; 16];
    err_has(open(vec![1, 2, 3]), &["truncated", "header length"]);
    let mut b = st(TWO, &data);
    b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    err_has(open(b), &["header length 18446744073709551615 exceeds"]);
    let mut b = st(TWO, &data);
    b[..8].copy_from_slice(&1000u64.to_le_bytes());
    err_has(open(b), &["header length 1000 exceeds"]);
    let mut b = st(TWO, &data);
    b[..8].copy_from_slice(&0u64.to_le_bytes());
    err_has(open(b), &["invalid safetensors header"]);
    let mut b = st(TWO, &data);
    b[8] = b'x';
    err_has(open(b), &["invalid JSON"]);
    let mut b = st(TWO, &data);
    b[9] = 0xff;
    err_has(open(b), &["invalid safetensors header"]);
    err_has(open(st("[1,2]", &[])), &["invalid safetensors header"]);
    // offsets past the data, gaps, overlaps, sizes that do not match shape × dtype
    let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#;
    err_has(
        open(st(h, &[0; 8])),
        &["invalid safetensors header", "data section has 8 bytes"],
    );
    err_has(
        open(st(h, &[0; 24])),
        &["invalid safetensors header", "data section has 24 bytes"],
    );
    let h = r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
    err_has(
        open(st(h, &[0; 8])),
        &["tensor 'a'", "shape [3] of F32", "[0, 8]"],
    );
    let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
    err_has(open(st(h, &[0; 12])), &["invalid offset for tensor `b`"]);
    let h = r#"{"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,8]}}"#;
    err_has(open(st(h, &[0; 8])), &["invalid safetensors header"]);
    let h = r#"{"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}}"#;
    err_has(open(st(h, &[0; 8])), &["invalid JSON"]);
}

#[test]
fn unsupported_dtype_and_rank_fail_on_use() {
    let h = r#"{"i":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},"r":{"dtype":"F32","shape":[1,1,1,1,2],"data_offsets":[8,16]}}"#;
    let f = open(st(h, &[0; 16])).unwrap();
    assert_eq!(f.tensor_info("i").unwrap().type_name, "I64");
    err_has(f.tensor("i"), &["tensor 'i'", "I64", "does not support"]);
    err_has(f.tensor("r"), &["tensor 'r'", "more than 4 dims"]);
}

#[test]
fn zoo_file_damaged() {
    let Some(z) = zoo() else {
        println!("skipped: zoo not found");
        return;
    };
    let full = std::fs::read(z.join("llama3/model.safetensors")).unwrap();
    let n = u64::from_le_bytes(full[..8].try_into().unwrap()) as usize;
    assert!(open(full.clone()).is_ok());
    let mut refused = 0;
    for len in (0..8 + n + 64).chain((8 + n..full.len()).step_by(1009)) {
        err_has(open(full[..len].to_vec()), &["<memory>"]);
        refused += 1;
    }
    let mut flips = 0;
    for i in 0..8 + n {
        let mut b = full.clone();
        b[i] ^= 0x20;
        if let Ok(f) = open(b) {
            for t in f.tensors() {
                let _ = f.tensor(&t.name);
            }
        }
        flips += 1;
    }
    println!("{refused} truncations refused, {flips} header flips without a panic");
}

fn write(dir: &std::path::Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap();
}

const SHARD1: &str = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
const SHARD2: &str = r#"{"b":{"dtype":"F16","shape":[3],"data_offsets":[0,6]}}"#;

fn sharded_dir(name: &str, index: &str) -> std::path::PathBuf {
    let d = scratch(name);
    write(
        &d,
        "model-00001-of-00002.safetensors",
        &st(SHARD1, &f32s(&[1.0, 2.0])),
    );
    write(
        &d,
        "model-00002-of-00002.safetensors",
        &st(SHARD2, &[1, 2, 3, 4, 5, 6]),
    );
    write(&d, "model.safetensors.index.json", index.as_bytes());
    write(
        &d,
        "config.json",
        br#"{"model_type":"llama","hidden_size":4}"#,
    );
    d
}

const INDEX: &str = r#"{"metadata":{"total_size":14},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}}"#;

#[test]
fn sharded_model_and_hf_dir() {
    let d = sharded_dir("sharded_ok", INDEX);
    let m = SafetensorsModel::open(&d).unwrap();
    assert_eq!(m.shards().len(), 2);
    assert_eq!(m.len(), 2);
    assert_eq!(m.tensor("a").unwrap().data, &f32s(&[1.0, 2.0])[..]);
    let b = m.tensor("b").unwrap();
    assert_eq!((b.dtype, b.data), (DType::F16, &[1u8, 2, 3, 4, 5, 6][..]));
    let listed: Vec<(usize, String)> = m.tensors().map(|(s, t)| (s, t.name.clone())).collect();
    assert_eq!(listed, [(0, "a".to_string()), (1, "b".to_string())]);
    err_has(m.tensor("zz"), &["index.json", "no tensor named 'zz'"]);
    let hf = HfDir::open(&d).unwrap();
    assert_eq!(hf.model_type(), Some("llama"));
    assert!(hf.tokenizer_json().is_none() && hf.chat_template().unwrap().is_none());
    assert_eq!(hf.weights().len(), 2);
}

#[test]
fn bad_indexes() {
    let f = "idx.json";
    err_has(parse_index(b"{", f), &["idx.json", "invalid JSON"]);
    err_has(parse_index(b"[]", f), &["not a JSON object"]);
    err_has(parse_index(b"{}", f), &["no 'weight_map'"]);
    err_has(
        parse_index(br#"{"weight_map":[]}"#, f),
        &["'weight_map' is not an object"],
    );
    err_has(
        parse_index(br#"{"weight_map":{}}"#, f),
        &["'weight_map' is empty"],
    );
    err_has(
        parse_index(br#"{"weight_map":{"a":3}}"#, f),
        &["weight_map['a']", "not a file name"],
    );
    for bad in ["../x.safetensors", "/etc/passwd", "", "a/../../b", "./"] {
        let j = format!(r#"{{"weight_map":{{"a":"{bad}"}}}}"#);
        err_has(
            parse_index(j.as_bytes(), f),
            &["weight_map['a']", "not a relative file name"],
        );
    }
    err_has(
        parse_index(
            br#"{"metadata":{"total_size":-1},"weight_map":{"a":"x"}}"#,
            f,
        ),
        &["metadata.total_size"],
    );
    let ok = parse_index(INDEX.as_bytes(), f).unwrap();
    assert_eq!(ok.shards.len(), 2);
    assert_eq!(ok.total_size, Some(14));

    // a missing shard names the index, the shard and a tensor listed in it
    let d = sharded_dir("missing_shard", INDEX);
    std::fs::remove_file(d.join("model-00002-of-00002.safetensors")).unwrap();
    err_has(
        SafetensorsModel::open(&d),
        &[
            "model.safetensors.index.json",
            "shard 'model-00002-of-00002.safetensors'",
            "tensor 'b'",
        ],
    );
    // a tensor listed in a shard that does not have it names both
    let idx = INDEX.replace(r#""b":"model-00002"#, r#""b":"model-00001"#);
    let d = sharded_dir("absent_tensor", &idx);
    err_has(
        SafetensorsModel::open(&d),
        &[
            "tensor 'b' is listed in shard 'model-00001-of-00002.safetensors'",
            "does not contain it",
        ],
    );
    // a damaged shard is reported with the shard's own path
    let d = sharded_dir("bad_shard", INDEX);
    write(&d, "model-00002-of-00002.safetensors", b"garbage!");
    err_has(
        SafetensorsModel::open(&d),
        &["model-00002-of-00002.safetensors", "header length"],
    );
    // an HF dir needs config.json, and a valid one
    let d = sharded_dir("bad_config", INDEX);
    write(&d, "config.json", b"{oops");
    err_has(HfDir::open(&d), &["config.json", "invalid JSON"]);
    std::fs::remove_file(d.join("config.json")).unwrap();
    err_has(HfDir::open(&d), &["no config.json"]);
}
