// quant.cuh: decoders for every kiln weight type in the backend's repacked layout.
//
// Layout (written by src/buffer.rs `repack`): a weight of R rows × k elements is R·nb blocks
// (nb = k / QK) stored as two regions: BODY (R·nb × BODY bytes, every block's 16-byte-aligned
// part: quants and, for Q4_K/Q5_K, the whole block) then HEAD (R·nb × HEAD bytes: the f16 scale
// fields and other small headers that break 16-byte alignment). Float weights (F32/F16/BF16) are
// "blocks" of 16 elements with no head.
//
// Each type T exposes: QK (elements per block), CHUNKS (work units per block: one thread loads
// one chunk with 16-byte loads), RUNS (runs of 16 contiguous elements per chunk), BODY, HEAD,
// `load(body, head, g, c, ch)` (g = global block index), `run(ch, c, r, v[16])` decoding run r
// into 16 floats, and `run_start(c, r)` (element offset of run r inside the block).
// Decoding is exact: every product (d·sc·q, dmin·m, d·kvalue) is exact in f32, so the only
// rounding is the final add/subtract of the types with a min.
#pragma once
#include "common.cuh"

// ---------------------------------------------------------------- float "blocks" of 16
struct TF32 {
    static constexpr int QK = 16, CHUNKS = 1, RUNS = 1, BODY = 64, HEAD = 0;
    struct Chunk { uint4 q[4]; };
    static __device__ __forceinline__ void load(const u8* b, const u8*, i64 g, int, Chunk& ch) {
#pragma unroll
        for (int i = 0; i < 4; i++) ch.q[i] = ld16(b + g * BODY + 16 * i);
    }
    static __device__ __forceinline__ void run(const Chunk& ch, int, int, float v[16]) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            v[4 * i + 0] = __uint_as_float(ch.q[i].x);
            v[4 * i + 1] = __uint_as_float(ch.q[i].y);
            v[4 * i + 2] = __uint_as_float(ch.q[i].z);
            v[4 * i + 3] = __uint_as_float(ch.q[i].w);
        }
    }
    static __device__ __forceinline__ int run_start(int, int) { return 0; }
};

template <bool BF>
struct THalf {
    static constexpr int QK = 16, CHUNKS = 1, RUNS = 1, BODY = 32, HEAD = 0;
    struct Chunk { uint4 q[2]; };
    static __device__ __forceinline__ void load(const u8* b, const u8*, i64 g, int, Chunk& ch) {
        ch.q[0] = ld16(b + g * BODY);
        ch.q[1] = ld16(b + g * BODY + 16);
    }
    static __device__ __forceinline__ float cv(u32 w, int hi) {
        const u16 h = (u16)(hi ? (w >> 16) : (w & 0xffffu));
        return BF ? bf2f(h) : h2f(h);
    }
    static __device__ __forceinline__ void run(const Chunk& ch, int, int, float v[16]) {
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const uint4 q = ch.q[i];
            v[8 * i + 0] = cv(q.x, 0); v[8 * i + 1] = cv(q.x, 1);
            v[8 * i + 2] = cv(q.y, 0); v[8 * i + 3] = cv(q.y, 1);
            v[8 * i + 4] = cv(q.z, 0); v[8 * i + 5] = cv(q.z, 1);
            v[8 * i + 6] = cv(q.w, 0); v[8 * i + 7] = cv(q.w, 1);
        }
    }
    static __device__ __forceinline__ int run_start(int, int) { return 0; }
};
typedef THalf<false> TF16;
typedef THalf<true> TBF16;

// ---------------------------------------------------------------- 32-element legacy blocks
// Q4_0: head d f16 | body qs[16]; w = d·(q − 8), low nibbles = elements 0..15.
struct TQ4_0 {
    static constexpr int QK = 32, CHUNKS = 1, RUNS = 2, BODY = 16, HEAD = 2;
    struct Chunk { uint4 q; float d; };
    static __device__ __forceinline__ void load(const u8* b, const u8* h, i64 g, int, Chunk& ch) {
        ch.q = ld16(b + g * BODY);
        ch.d = h2f(__ldg((const u16*)(h + g * HEAD)));
    }
    static __device__ __forceinline__ void run(const Chunk& ch, int, int r, float v[16]) {
#pragma unroll
        for (int l = 0; l < 16; l++) v[l] = ch.d * (float)((int)((byte_of(ch.q, l) >> (4 * r)) & 15u) - 8);
    }
    static __device__ __forceinline__ int run_start(int, int r) { return 16 * r; }
};

// Q4_1: head d, m f16 | body qs[16]; w = d·q + m.
struct TQ4_1 {
    static constexpr int QK = 32, CHUNKS = 1, RUNS = 2, BODY = 16, HEAD = 4;
    struct Chunk { uint4 q; float d, m; };
    static __device__ __forceinline__ void load(const u8* b, const u8* h, i64 g, int, Chunk& ch) {
        ch.q = ld16(b + g * BODY);
        const u32 dm = __ldg((const u32*)(h + g * HEAD));
        ch.d = h2f((u16)(dm & 0xffffu));
        ch.m = h2f((u16)(dm >> 16));
    }
    static __device__ __forceinline__ void run(const Chunk& ch, int, int r, float v[16]) {
#pragma unroll
        for (int l = 0; l < 16; l++) v[l] = ch.d * (float)((byte_of(ch.q, l) >> (4 * r)) & 15u) + ch.m;
    }
    static __device__ __forceinline__ int run_start(int, int r) { return 16 * r; }
};

// Q5_0: head d f16 @0, qh u32 @2 (stride 6, read as u16s) | body qs[16]; w = d·(q − 16).
struct TQ5_0 {
    static constexpr int QK = 32, CHUNKS = 1, RUNS = 2, BODY = 16, HEAD = 6;
    struct Chunk { uint4 q; float d; u32 qh; };
    static __device__ __forceinline__ void load(const u8* b, const u8* h, i64 g, int, Chunk& ch) {
        ch.q = ld16(b + g * BODY);
        const u16* hp = (const u16*)(h + g * HEAD);
        ch.d = h2f(__ldg(hp));
        ch.qh = (u32)__ldg(hp + 1) | ((u32)__ldg(hp + 2) << 16);
    }
    static __device__ __forceinline__ void run(const Chunk& ch, int, int r, float v[16]) {
#pragma unroll
        for (int l = 0; l < 16; l++) {
            const u32 q = ((byte_of(ch.q, l) >> (4 * r)) & 15u) | (((ch.qh >> (16 * r + l)) & 1u) << 4);
            v[l] = ch.d * (float)((int)q - 16);
        }
    }
    static __device__ __forceinline__ int run_start(int, int r) { return 16 * r; }
};

// Q5_1: head d, m f16, qh u32 | body qs[16]; w = d·q + m.
struct TQ5_1 {
    static constexpr int QK = 32, CHUNKS = 1, RUNS = 2, BODY = 16, HEAD = 8;
    struct Chunk { uint4 q; float d, m; u32 qh; };
    static __device__ __forceinline__ void load(const u8* b, const u8* h, i64 g, int, Chunk& ch) {
        ch.q = ld16(b + g * BODY);
        const uint2 hv = __ldg((const uint2*)(h + g * HEAD));
        ch.d = h2f((u16)(hv.x & 0xffffu));
        ch.m = h2f((u16)(hv.x >> 16));
        ch.qh = hv.y;
    }
    static __device__ __forceinline__ void run(const Chunk& ch, int, int r, float v[16]) {
#pragma unroll
        for (int l = 0; l < 16; l++) {
            const u32 q = ((byte_of(ch.q, l) >> (4 * r)) & 15u) | (((ch.qh >> (16 * r + l)) & 1u) << 4);
            v[l] = ch.d * (float)q + ch.m;
        }
    }
    static __device__ __forceinline__ int run_start(int, int r) { return 16 * r; }
};

// Q8_0: head d f16 | body qs i8[32]; two chunks of 16.
struct TQ8_0 {
    static constexpr int QK = 32, CHUNKS = 2, RUNS = 1, BODY = 32, HEAD = 2;
    struct Chunk { uint4 q; float d; };
    static __device__ __forceinline__ void load(const u8* b, const u8* h, i64 g, int c, Chunk& ch) {
        ch.q = ld16(b + g * BODY + 16 * c);
        ch.d = h2f(__ldg((const u16*)(h + g * HEAD)));
    }
    static __device__ __forceinline__ void run(const Chunk& ch, int, int, float v[16]) {
#pragma unroll
        for (int l = 0; l < 16; l++) v[l] = ch.d * (float)(signed char)byte_of(ch.q, l);
    }
    static __device__ __forceinline__ int run_start(int c, int) { return 16 * c; }
};

// IQ4 non-linear values {−127, −104, −83, −65, −49, −35, −22, −10, 1, 13, 25, 38, 53, 69, 89, 113}
// as bytes of four words, picked with __byte_perm (registers only, no divergent table reads).
__device__ __forceinline__ float iq4_value(u32 nib) {
    const u32 k0 = 0xBFAD9881u, k1 = 0xF6EADDCFu, k2 = 0x26190D01u, k3 = 0x71594535u;
    const u32 lo = __byte_perm(k0, k1, nib & 7u), hi = __byte_perm(k2, k3, nib & 7u);
    return (float)(signed char)((nib & 8u) ? hi : lo);
}

// IQ4_NL: head d f16 | body qs[16]; w = d·kvalues[nibble].
struct TIQ4_NL {
    static constexpr int QK = 32, CHUNKS = 1, RUNS = 2, BODY = 16, HEAD = 2;
    struct Chunk { uint4 q; float d; };
    static __device__ __forceinline__ void load(const u8* b, const u8* h, i64 g, int, Chunk& ch) {
        ch.q = ld16(b + g * BODY);
        ch.d = h2f(__ldg((const u16*)(h + g * HEAD)));
    }
    static __device__ __forceinline__ void run(const Chunk& ch, int, int r, float v[16]) {
#pragma unroll
        for (int l = 0; l < 16; l++) v[l] = ch.d * iq4_value((byte_of(ch.q, l) >> (4 * r)) & 15u);
    }
    static __device__ __forceinline__ int run_start(int, int r) { return 16 * r; }
};

// ---------------------------------------------------------------- 256-element k-quants
// Q2_K: body scales[16] @0, qs[64] @16 | head d, dmin f16. Chunk c = 2h + g covers
// qs[32h + 16g .. +16]; run s is shift 2s: elements 128h + 32s + 16g + l.
struct TQ2_K {
    static constexpr int QK = 256, CHUNKS = 4, RUNS = 4, BODY = 80, HEAD = 4;
    struct Chunk { uint4 q; uint2 sc; float d, dmin; };
    static __device__ __forceinline__ void load(const u8* b, const u8* h, i64 g, int c, Chunk& ch) {
        const int hh = c >> 1, gg = c & 1;
        ch.q = ld16(b + g * BODY + 16 + 32 * hh + 16 * gg);
        ch.sc = __ldg((const uint2*)(b + g * BODY + 8 * hh));
        const u32 dd = __ldg((const u32*)(h + g * HEAD));
        ch.d = h2f((u16)(dd & 0xffffu));
        ch.dmin = h2f((u16)(dd >> 16));
    }
    static __device__ __forceinline__ void run(const Chunk& ch, int c, int s, float v[16]) {
        const int gg = c & 1, i = 2 * s + gg;  // scale byte inside scales[8h .. 8h+8]
        const u32 sc = ((i < 4 ? ch.sc.x : ch.sc.y) >> (8 * (i & 3))) & 0xffu;
        const float dl = ch.d * (float)(sc & 15u), ml = ch.dmin * (float)(sc >> 4);
#pragma unroll
        for (int l = 0; l < 16; l++) v[l] = dl * (float)((byte_of(ch.q, l) >> (2 * s)) & 3u) - ml;
    }
    static __device__ __forceinline__ int run_start(int c, int s) { return 128 * (c >> 1) + 32 * s + 16 * (c & 1); }
};

// Q3_K: body hmask[32] @0, qs[64] @32 | head scales[12] @0, d f16 @12 (stride 14).
struct TQ3_K {
    static constexpr int QK = 256, CHUNKS = 4, RUNS = 4, BODY = 96, HEAD = 14;
    struct Chunk { uint4 q, hm; float d; u32 s[3]; };
    static __device__ __forceinline__ void load(const u8* b, const u8* h, i64 g, int c, Chunk& ch) {
        const int hh = c >> 1, gg = c & 1;
        ch.q = ld16(b + g * BODY + 32 + 32 * hh + 16 * gg);
        ch.hm = ld16(b + g * BODY + 16 * gg);
        const u16* hp = (const u16*)(h + g * HEAD);
#pragma unroll
        for (int i = 0; i < 3; i++) ch.s[i] = (u32)__ldg(hp + 2 * i) | ((u32)__ldg(hp + 2 * i + 1) << 16);
        ch.d = h2f(__ldg(hp + 6));
    }
    static __device__ __forceinline__ u32 sbyte(const Chunk& ch, int i) { return (ch.s[i >> 2] >> (8 * (i & 3))) & 0xffu; }
    static __device__ __forceinline__ void run(const Chunk& ch, int c, int s, float v[16]) {
        const int hh = c >> 1, gg = c & 1;
        const int i = 8 * hh + 2 * s + gg;  // 6-bit scale index (e / 16)
        const u32 lo4 = (i < 8) ? (sbyte(ch, i) & 15u) : (sbyte(ch, i - 8) >> 4);
        const u32 hi2 = (sbyte(ch, 8 + (i & 3)) >> (2 * (i >> 2))) & 3u;
        const float dl = ch.d * (float)((int)(lo4 | (hi2 << 4)) - 32);
        const int hbit = 4 * hh + s;
#pragma unroll
        for (int l = 0; l < 16; l++) {
            const int q2 = (int)((byte_of(ch.q, l) >> (2 * s)) & 3u);
            const int q = q2 - (((byte_of(ch.hm, l) >> hbit) & 1u) ? 0 : 4);
            v[l] = dl * (float)q;
        }
    }
    static __device__ __forceinline__ int run_start(int c, int s) { return 128 * (c >> 1) + 32 * s + 16 * (c & 1); }
};

// 6-bit (scale, min) pair j of the 12-byte Q4_K/Q5_K scales field (held in three words).
__device__ __forceinline__ void k4_scale_min(const u32 s[3], int j, float& sc, float& m) {
    auto byte = [&](int i) -> u32 { return (s[i >> 2] >> (8 * (i & 3))) & 0xffu; };
    if (j < 4) {
        sc = (float)(byte(j) & 63u);
        m = (float)(byte(j + 4) & 63u);
    } else {
        sc = (float)((byte(j + 4) & 15u) | ((byte(j - 4) >> 6) << 4));
        m = (float)((byte(j + 4) >> 4) | ((byte(j) >> 6) << 4));
    }
}

// Q4_K: body = the whole 144-byte block: d, dmin f16 @0, scales[12] @4, qs[128] @16.
// Chunk c = 2cc + hh covers qs[32cc + 16hh .. +16]; run 0 = low nibbles (sub-block 2cc),
// run 1 = high nibbles (sub-block 2cc + 1): elements 64cc + 32r + 16hh + l.
struct TQ4_K {
    static constexpr int QK = 256, CHUNKS = 8, RUNS = 2, BODY = 144, HEAD = 0;
    struct Chunk { uint4 q, hd; };
    static __device__ __forceinline__ void load(const u8* b, const u8*, i64 g, int c, Chunk& ch) {
        ch.hd = ld16(b + g * BODY);
        ch.q = ld16(b + g * BODY + 16 + 16 * c);
    }
    static __device__ __forceinline__ void run(const Chunk& ch, int c, int r, float v[16]) {
        const u32 s[3] = {ch.hd.y, ch.hd.z, ch.hd.w};
        float sc, m;
        k4_scale_min(s, 2 * (c >> 1) + r, sc, m);
        const float d = h2f((u16)(ch.hd.x & 0xffffu)), dmin = h2f((u16)(ch.hd.x >> 16));
        const float dl = d * sc, ml = dmin * m;
#pragma unroll
        for (int l = 0; l < 16; l++) v[l] = dl * (float)((byte_of(ch.q, l) >> (4 * r)) & 15u) - ml;
    }
    static __device__ __forceinline__ int run_start(int c, int r) { return 64 * (c >> 1) + 32 * r + 16 * (c & 1); }
};

// Q5_K: body = whole 176-byte block: d, dmin @0, scales @4, qh[32] @16, qs[128] @48.
struct TQ5_K {
    static constexpr int QK = 256, CHUNKS = 8, RUNS = 2, BODY = 176, HEAD = 0;
    struct Chunk { uint4 q, hd, qh; };
    static __device__ __forceinline__ void load(const u8* b, const u8*, i64 g, int c, Chunk& ch) {
        ch.hd = ld16(b + g * BODY);
        ch.qh = ld16(b + g * BODY + 16 + 16 * (c & 1));
        ch.q = ld16(b + g * BODY + 48 + 16 * c);
    }
    static __device__ __forceinline__ void run(const Chunk& ch, int c, int r, float v[16]) {
        const u32 s[3] = {ch.hd.y, ch.hd.z, ch.hd.w};
        const int j = 2 * (c >> 1) + r;
        float sc, m;
        k4_scale_min(s, j, sc, m);
        const float d = h2f((u16)(ch.hd.x & 0xffffu)), dmin = h2f((u16)(ch.hd.x >> 16));
        const float dl = d * sc, ml = dmin * m;
#pragma unroll
        for (int l = 0; l < 16; l++) {
            const u32 q = ((byte_of(ch.q, l) >> (4 * r)) & 15u) | (((byte_of(ch.qh, l) >> j) & 1u) << 4);
            v[l] = dl * (float)q - ml;
        }
    }
    static __device__ __forceinline__ int run_start(int c, int r) { return 64 * (c >> 1) + 32 * r + 16 * (c & 1); }
};

// Q6_K: body ql[128] @0, qh[64] @128, scales i8[16] @192 | head d f16. Chunk c = 2h + g:
// L0 = ql[64h + 16g], L1 = ql[64h + 32 + 16g], H = qh[32h + 16g]; run r: elements
// 128h + 32r + 16g + l, scale index 8h + 2r + g; w = d·sc·(q − 32).
struct TQ6_K {
    static constexpr int QK = 256, CHUNKS = 4, RUNS = 4, BODY = 208, HEAD = 2;
    struct Chunk { uint4 l0, l1, qh, sc; float d; };
    static __device__ __forceinline__ void load(const u8* b, const u8* h, i64 g, int c, Chunk& ch) {
        const int hh = c >> 1, gg = c & 1;
        const u8* p = b + g * BODY;
        ch.l0 = ld16(p + 64 * hh + 16 * gg);
        ch.l1 = ld16(p + 64 * hh + 32 + 16 * gg);
        ch.qh = ld16(p + 128 + 32 * hh + 16 * gg);
        ch.sc = ld16(p + 192);
        ch.d = h2f(__ldg((const u16*)(h + g * HEAD)));
    }
    static __device__ __forceinline__ void run(const Chunk& ch, int c, int r, float v[16]) {
        const int hh = c >> 1, gg = c & 1;
        const float dl = ch.d * (float)(signed char)byte_of(ch.sc, 8 * hh + 2 * r + gg);
        const uint4& L = (r & 1) ? ch.l1 : ch.l0;
        const int lshift = (r >> 1) * 4, hshift = 2 * r;
#pragma unroll
        for (int l = 0; l < 16; l++) {
            const int q = (int)(((byte_of(L, l) >> lshift) & 15u) | (((byte_of(ch.qh, l) >> hshift) & 3u) << 4));
            v[l] = dl * (float)(q - 32);
        }
    }
    static __device__ __forceinline__ int run_start(int c, int r) { return 128 * (c >> 1) + 32 * r + 16 * (c & 1); }
};

// IQ4_XS: body qs[128] | head d f16 @0, scales_h u16 @2, scales_l[4] @4. Chunk = sub-block ib.
struct TIQ4_XS {
    static constexpr int QK = 256, CHUNKS = 8, RUNS = 2, BODY = 128, HEAD = 8;
    struct Chunk { uint4 q; float dl; };
    static __device__ __forceinline__ void load(const u8* b, const u8* h, i64 g, int c, Chunk& ch) {
        ch.q = ld16(b + g * BODY + 16 * c);
        const uint2 hv = __ldg((const uint2*)(h + g * HEAD));
        const float d = h2f((u16)(hv.x & 0xffffu));
        const u32 sh = hv.x >> 16;
        const u32 sl = (hv.y >> (8 * (c >> 1))) & 0xffu;
        const u32 ls = ((sl >> (4 * (c & 1))) & 15u) | (((sh >> (2 * c)) & 3u) << 4);
        ch.dl = d * (float)((int)ls - 32);
    }
    static __device__ __forceinline__ void run(const Chunk& ch, int, int r, float v[16]) {
#pragma unroll
        for (int l = 0; l < 16; l++) v[l] = ch.dl * iq4_value((byte_of(ch.q, l) >> (4 * r)) & 15u);
    }
    static __device__ __forceinline__ int run_start(int c, int r) { return 32 * c + 16 * r; }
};

// Instantiate MACRO(suffix, Type) for every weight type.
#define KILN_FOR_EACH_WEIGHT_TYPE(X) \
    X(f32, TF32) X(f16, TF16) X(bf16, TBF16) \
    X(q4_0, TQ4_0) X(q4_1, TQ4_1) X(q5_0, TQ5_0) X(q5_1, TQ5_1) X(q8_0, TQ8_0) \
    X(q2_k, TQ2_K) X(q3_k, TQ3_K) X(q4_k, TQ4_K) X(q5_k, TQ5_K) X(q6_k, TQ6_K) \
    X(iq4_nl, TIQ4_NL) X(iq4_xs, TIQ4_XS)
