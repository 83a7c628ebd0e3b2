#!/usr/bin/env python3
"""Seed corpora for the fuzz targets (written to models/fuzz/corpus/<target>/, which git ignores).

Seeds: small hand-built valid files (every GGUF value type, nested arrays, F32/Q8_0/Q8_K
tensors; a two-tensor safetensors file; shard indexes), the zoo's files, and truncated
variants of them. Usage: python3 models/fuzz/make_corpus.py [ZOO_DIR]
"""
import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ZOO = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "../../../shared/testdata/zoo")


def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def kv(key, ty, payload):
    return gstr(key) + struct.pack("<I", ty) + payload


def arr(ty, n, payload):
    return struct.pack("<IQ", ty, n) + payload


def tinfo(name, ne, ty, off):
    return gstr(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne) + struct.pack("<IQ", ty, off)


def gguf(kvs, infos, data, align=32, version=3):
    h = b"GGUF" + struct.pack("<IQQ", version, len(infos), len(kvs)) + b"".join(kvs) + b"".join(infos)
    h += b"\0" * (-len(h) % align)
    return h + data


def synthetic_gguf():
    kvs = [
        kv("general.architecture", 8, gstr("llama")),
        kv("general.alignment", 4, struct.pack("<I", 32)),
        kv("u8", 0, b"\x07"), kv("i8", 1, b"\xfe"), kv("u16", 2, b"\x01\x02"), kv("i16", 3, b"\xff\xff"),
        kv("i32", 5, struct.pack("<i", -3)), kv("f32", 6, struct.pack("<f", 1.5)), kv("b", 7, b"\x01"),
        kv("u64", 10, struct.pack("<Q", 9)), kv("i64", 11, struct.pack("<q", -9)), kv("f64", 12, struct.pack("<d", 0.5)),
        kv("tokens", 9, arr(8, 2, gstr("<s>") + gstr("a"))),
        kv("pattern", 9, arr(7, 2, b"\x01\x00")),
        kv("nested", 9, arr(9, 2, arr(0, 2, b"\x01\x02") + arr(6, 1, struct.pack("<f", 2.0)))),
    ]
    data = bytearray(32 * 2)
    data += bytes(range(34)) + b"\0" * 30   # Q8_0 block at 64
    data += b"\0" * 292 + b"\0" * 28         # Q8_K block at 128
    infos = [tinfo("a", [4, 2], 0, 0), tinfo("q", [32], 8, 64), tinfo("k", [256], 15, 128)]
    return gguf(kvs, infos, bytes(data))


def st(header, data):
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def main():
    g = synthetic_gguf()
    write("gguf", "synthetic", g)
    write("gguf", "synthetic_v2", g[:4] + struct.pack("<I", 2) + g[8:])
    write("gguf", "empty_v3", gguf([], [], b""))
    s = st({"__metadata__": {"format": "pt"},
            "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "b": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [8, 16]},
            "c": {"dtype": "I64", "shape": [1], "data_offsets": [16, 24]}}, bytes(24))
    write("safetensors", "synthetic", s)
    idx = {"metadata": {"total_size": 14},
           "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    write("st_index", "index", json.dumps(idx).encode())
    write("st_index", "bad_path", json.dumps({"weight_map": {"a": "../x"}}).encode())
    if os.path.isdir(ZOO):
        for m in sorted(os.listdir(ZOO)):
            md = os.path.join(ZOO, m)
            if not os.path.isdir(md):
                continue
            q8 = os.path.join(md, "model-q8_0.gguf")
            if os.path.exists(q8):
                b = open(q8, "rb").read()
                for cut in (64, 1024, 4096, 16384):
                    write("gguf", f"{m}_q8_cut{cut}", b[:cut])
                if m == "mistral":  # the smallest zoo GGUF, whole
                    write("gguf", f"{m}_q8_full", b)
            b = open(os.path.join(md, "model.safetensors"), "rb").read()
            n = struct.unpack("<Q", b[:8])[0]
            write("safetensors", f"{m}_header", b[: 8 + n])
            if m == "qwen2":  # the smallest zoo safetensors, whole
                write("safetensors", f"{m}_full", b)
            write("st_index", f"{m}_config", open(os.path.join(md, "config.json"), "rb").read())
    for t in ("gguf", "safetensors", "st_index"):
        print(t, len(os.listdir(os.path.join(HERE, "corpus", t))), "seeds")


if __name__ == "__main__":
    main()
