// quant.cuh: decoders for every kiln weight type in the backend's repacked layout.
//
// Layout (written by src/buffer.rs `repack`): a weight of R rows × k elements is R·nb blocks
// (nb = k / QK) stored as two regions: BODY (R·nb × BODY bytes, every block's 16-byte-aligned
// part: quants and, for Q4_K/Q5_K, the whole block) then HEAD (R·nb × HEAD bytes: the f16 scale
// fields and other small headers that break 16-byte alignment). Q8_0 quants are stored in
// offset binary (q + 128, i.e. XOR 0x80) so every type decodes to an unsigned integer. Float
// weights (F32/F16/BF16) are "blocks" of 16 elements with no head.
//
// Each type T exposes: QK (elements per block), CHUNKS (work units per block: one thread loads
// one chunk with 16-byte loads), RUNS (runs of 16 contiguous elements per chunk), BODY, HEAD,
// HAS_MIN (whether ml can be non-zero), TABLE (needs the IQ4 value table in shared memory),
// `load(body, head, g, c, ch)` (g = global block index), `run_start(c, r)` (element offset of
// run r inside the block) and `run_q(ch, c, r, tab, q[16], dl, ml)`: the 16 elements of run r
// are w_l = dl·q_l − ml with q_l an exact small integer (as float).
//
// Exactness: q_l is produced exactly (magic-number conversion: the field ORed into the mantissa
// of 2^23, then one FFMA removes 2^23 and the field's bit offset), dl·q_l and ml are exact
// products of an f16 scale and small integers, so fmaf(dl, q, −ml) rounds once to the exactly
// representable weight: decoding is bit-exact (up to the sign of zero). The GEMV kernels use
// Σ w_l·x_l = dl·Σ q_l·x_l − ml·Σ x_l, so the per-element work is one field extraction, one FFMA
// to finish the conversion and one FFMA per activation row.
//
// Integer decode (block types only): `run_qi(ch, c, r, qw[4], dl, ml)` packs the same 16 q_l of
// run r as bytes (element l = byte l % 4 of word l / 4), unsigned 0..255, or signed for the IQ4
// types (SIGNED_Q), for `dp4a` against int8 activations (matmul_q.cu gemv8): the same exact
// integers and the same (dl, ml) as run_q, only packed instead of converted to float.
#pragma once
#include "common.cuh"

// The int8 rounding of x shared by quant_x (matmul_q.cu) and mq_quant_x (matmul_mma.cu): one
// group of x spread over 4 consecutive lanes, L values per lane. d = max|x| / 127 rounded up to
// 22 significant bits (the low 2 mantissa bits cleared, rounding up), so that 1.5·2²³·d is exact
// in f32 (the mma kernels' conversion); q = clamp(round(x / d), ±127) packed into w (byte l % 4
// of word l / 4). Returns the group's (d, d·Σq), with d = NaN when the group holds a non-finite
// x (so the product shows it instead of a silently wrong number). Every lane of the warp calls
// it (shuffles within each 4-lane group).
template <int L>
__device__ __forceinline__ float2 q8_group(const float (&v)[L], u32 (&w)[(L + 3) / 4]) {
    float amax = 0.0f;
    int finite = 1;
#pragma unroll
    for (int l = 0; l < L; l++) {
        finite &= isfinite(v[l]) ? 1 : 0;
        amax = fmaxf(amax, fabsf(v[l]));
    }
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
    finite &= __shfl_xor_sync(0xffffffffu, finite, 1);
    finite &= __shfl_xor_sync(0xffffffffu, finite, 2);
    const float d = __uint_as_float((__float_as_uint(amax / 127.0f) + 3u) & ~3u);
    const float id = amax > 0.0f ? 1.0f / d : 0.0f;
    int sum = 0;
#pragma unroll
    for (int i = 0; i < (L + 3) / 4; i++) w[i] = 0u;
#pragma unroll
    for (int l = 0; l < L; l++) {
        const int qi = max(-127, min(127, __float2int_rn(v[l] * id)));
        sum += qi;
        w[l >> 2] |= ((u32)qi & 0xffu) << (8 * (l & 3));
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const float dd = finite ? d : __uint_as_float(0x7fc00000u);
    return make_float2(dd, dd * (float)sum);
}

// 2^e for a compile-time e (folded by the compiler).
__device__ __forceinline__ float pow2f(int e) { return __uint_as_float((u32)(127 + e) << 23); }

// The exact value of the `bits`-wide unsigned field at bit p of w (p + bits ≤ 23).
__device__ __forceinline__ float field(u32 w, int p, int bits) {
    const u32 m = ((1u << bits) - 1u) << p;
    return fmaf(__uint_as_float((w & m) | 0x4B000000u), pow2f(-p), -pow2f(23 - p));
}

__device__ __forceinline__ u32 word_of(const uint4& q, int i) {
    return i == 0 ? q.x : i == 1 ? q.y : i == 2 ? q.z : q.w;
}

// Byte l (0..15) of q, seen as a word whose byte sits at bit 0 or 8: returns the word and
// sets `base` to the byte's bit offset (0 or 8), so fields stay within the low 23 bits.
__device__ __forceinline__ u32 byte_word(const uint4& q, int l, int& base) {
    u32 w = word_of(q, l >> 2);
    if (l & 2) w >>= 16;
    base = 8 * (l & 1);
    return w;
}

// Unsigned field of byte l at bit s (within the byte).
__device__ __forceinline__ float byte_field(const uint4& q, int l, int s, int bits) {
    int base;
    const u32 w = byte_word(q, l, base);
    return field(w, base + s, bits);
}

// Byte i (runtime index 0..15) of q.
__device__ __forceinline__ u32 byte_dyn(const uint4& q, int i) {
    const u32 w = (i < 4) ? q.x : (i < 8) ? q.y : (i < 12) ? q.z : q.w;
    return (w >> (8 * (i & 3))) & 0xffu;
}

// Bits 0..3 of t (t < 16) moved to bit 0 of bytes 0..3 (the four shifted copies do not overlap).
__device__ __forceinline__ u32 spread4(u32 t) { return (t * 0x00204081u) & 0x01010101u; }

// Four nibbles (one per byte of v, each < 16) mapped through the IQ4 table to signed bytes.
__device__ __forceinline__ u32 iq4_bytes(u32 v) {
    const u32 k0 = 0xBFAD9881u, k1 = 0xF6EADDCFu, k2 = 0x26190D01u, k3 = 0x71594535u;
    const u32 sel = (v & 0x7u) | ((v >> 4) & 0x70u) | ((v >> 8) & 0x700u) | ((v >> 12) & 0x7000u);
    const u32 lo = __byte_perm(k0, k1, sel), hi = __byte_perm(k2, k3, sel);
    const u32 mask = ((v >> 3) & 0x01010101u) * 0xffu;  // bytes whose nibble has bit 3 set
    return (lo & ~mask) | (hi & mask);
}

// IQ4 non-linear values {−127, −104, −83, −65, −49, −35, −22, −10, 1, 13, 25, 38, 53, 69, 89, 113}
// as bytes of four words, picked with __byte_perm (used to fill the shared-memory table).
__device__ __forceinline__ float iq4_value(u32 nib) {
    const u32 k0 = 0xBFAD9881u, k1 = 0xF6EADDCFu, k2 = 0x26190D01u, k3 = 0x71594535u;
    const u32 lo = __byte_perm(k0, k1, nib & 7u), hi = __byte_perm(k2, k3, nib & 7u);
    return (float)(signed char)((nib & 8u) ? hi : lo);
}


// Compatibility entry used by other kernel files (moe.cu): decode run r into weights without
// the shared-memory table (IQ4 types look values up with __byte_perm instead).
#define KILN_RUN_COMPAT                                                                          \
    static __device__ __forceinline__ void run(const Chunk& ch, int c, int r, float v[16]) {     \
        float q[16], dl, ml;                                                                     \
        run_q(ch, c, r, nullptr, q, dl, ml);                                                     \
        _Pragma("unroll") for (int l = 0; l < 16; l++) v[l] = fmaf(dl, q[l], -ml);               \
    }

// ---------------------------------------------------------------- float "blocks" of 16
struct TF32 {
    static constexpr int QK = 16, CHUNKS = 1, RUNS = 1, BODY = 64, HEAD = 0;
    static constexpr bool HAS_MIN = false, TABLE = false;
    struct Chunk { uint4 q[4]; };
    static __device__ __forceinline__ void load(const u8* b, const u8*, i64 g, int, Chunk& ch) {
#pragma unroll
        for (int i = 0; i < 4; i++) ch.q[i] = ld16(b + g * BODY + 16 * i);
    }
    static __device__ __forceinline__ void run_q(const Chunk& ch, int, int, const float*, float q[16], float& dl, float& ml) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            q[4 * i + 0] = __uint_as_float(ch.q[i].x);
            q[4 * i + 1] = __uint_as_float(ch.q[i].y);
            q[4 * i + 2] = __uint_as_float(ch.q[i].z);
            q[4 * i + 3] = __uint_as_float(ch.q[i].w);
        }
        dl = 1.0f;
        ml = 0.0f;
    }
    KILN_RUN_COMPAT
    static __device__ __forceinline__ int run_start(int, int) { return 0; }
};

template <bool BF>
struct THalf {
    static constexpr int QK = 16, CHUNKS = 1, RUNS = 1, BODY = 32, HEAD = 0;
    static constexpr bool HAS_MIN = false, TABLE = false;
    struct Chunk { uint4 q[2]; };
    static __device__ __forceinline__ void load(const u8* b, const u8*, i64 g, int, Chunk& ch) {
        ch.q[0] = ld16(b + g * BODY);
        ch.q[1] = ld16(b + g * BODY + 16);
    }
    static __device__ __forceinline__ float cv(u32 w, int hi) {
        if (BF) return __uint_as_float(hi ? (w & 0xffff0000u) : (w << 16));
        return h2f((u16)(hi ? (w >> 16) : (w & 0xffffu)));
    }
    static __device__ __forceinline__ void run_q(const Chunk& ch, int, int, const float*, float q[16], float& dl, float& ml) {
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const u32 w = word_of(ch.q[i >> 2], i & 3);
            q[2 * i] = cv(w, 0);
            q[2 * i + 1] = cv(w, 1);
        }
        dl = 1.0f;
        ml = 0.0f;
    }
    KILN_RUN_COMPAT
    static __device__ __forceinline__ int run_start(int, int) { return 0; }
};
typedef THalf<false> TF16;
typedef THalf<true> TBF16;

// ---------------------------------------------------------------- 32-element legacy blocks
// Q4_0: head d f16 | body qs[16]; w = d·(q − 8), low nibbles = elements 0..15.
struct TQ4_0 {
    static constexpr int QK = 32, CHUNKS = 1, RUNS = 2, BODY = 16, HEAD = 2;
    static constexpr bool HAS_MIN = true, TABLE = false, SIGNED_Q = false;
    struct Chunk { uint4 q; float d; };
    static __device__ __forceinline__ void load(const u8* b, const u8* h, i64 g, int, Chunk& ch) {
        ch.q = ld16(b + g * BODY);
        ch.d = h2f(__ldg((const u16*)(h + g * HEAD)));
    }
    static __device__ __forceinline__ void run_q(const Chunk& ch, int, int r, const float*, float q[16], float& dl, float& ml) {
#pragma unroll
        for (int l = 0; l < 16; l++) q[l] = byte_field(ch.q, l, 4 * r, 4);
        dl = ch.d;
        ml = 8.0f * ch.d;
    }
    static __device__ __forceinline__ void run_qi(const Chunk& ch, int, int r, u32 qw[4], float& dl, float& ml) {
#pragma unroll
        for (int i = 0; i < 4; i++) qw[i] = (word_of(ch.q, i) >> (4 * r)) & 0x0f0f0f0fu;
        dl = ch.d;
        ml = 8.0f * ch.d;
    }
    KILN_RUN_COMPAT
    static __device__ __forceinline__ int run_start(int, int r) { return 16 * r; }
};

// Q4_1: head d, m f16 | body qs[16]; w = d·q + m.
struct TQ4_1 {
    static constexpr int QK = 32, CHUNKS = 1, RUNS = 2, BODY = 16, HEAD = 4;
    static constexpr bool HAS_MIN = true, TABLE = false, SIGNED_Q = false;
    struct Chunk { uint4 q; float d, m; };
    static __device__ __forceinline__ void load(const u8* b, const u8* h, i64 g, int, Chunk& ch) {
        ch.q = ld16(b + g * BODY);
        const u32 dm = __ldg((const u32*)(h + g * HEAD));
        ch.d = h2f((u16)(dm & 0xffffu));
        ch.m = h2f((u16)(dm >> 16));
    }
    static __device__ __forceinline__ void run_q(const Chunk& ch, int, int r, const float*, float q[16], float& dl, float& ml) {
#pragma unroll
        for (int l = 0; l < 16; l++) q[l] = byte_field(ch.q, l, 4 * r, 4);
        dl = ch.d;
        ml = -ch.m;
    }
    static __device__ __forceinline__ void run_qi(const Chunk& ch, int, int r, u32 qw[4], float& dl, float& ml) {
#pragma unroll
        for (int i = 0; i < 4; i++) qw[i] = (word_of(ch.q, i) >> (4 * r)) & 0x0f0f0f0fu;
        dl = ch.d;
        ml = -ch.m;
    }
    KILN_RUN_COMPAT
    static __device__ __forceinline__ int run_start(int, int r) { return 16 * r; }
};

// The 5th bit of element `e` of a Q5_0/Q5_1 block (qh bit e), times 16, exactly.
__device__ __forceinline__ float q5_high(u32 qh, int e) {
    // Bring bit e into a low position with a compile-time shift (e is unrolled).
    const int sh = (e >= 16) ? 16 : 0;
    return 16.0f * field(qh >> sh, e - sh, 1);
}

// Q5_0: head d f16 @0, qh u32 @2 (stride 6, read as u16s) | body qs[16]; w = d·(q − 16).
struct TQ5_0 {
    static constexpr int QK = 32, CHUNKS = 1, RUNS = 2, BODY = 16, HEAD = 6;
    static constexpr bool HAS_MIN = true, TABLE = false, SIGNED_Q = false;
    struct Chunk { uint4 q; float d; u32 qh; };
    static __device__ __forceinline__ void load(const u8* b, const u8* h, i64 g, int, Chunk& ch) {
        ch.q = ld16(b + g * BODY);
        const u16* hp = (const u16*)(h + g * HEAD);
        ch.d = h2f(__ldg(hp));
        ch.qh = (u32)__ldg(hp + 1) | ((u32)__ldg(hp + 2) << 16);
    }
    static __device__ __forceinline__ void run_q(const Chunk& ch, int, int r, const float*, float q[16], float& dl, float& ml) {
#pragma unroll
        for (int l = 0; l < 16; l++) q[l] = byte_field(ch.q, l, 4 * r, 4) + q5_high(ch.qh, 16 * r + l);
        dl = ch.d;
        ml = 16.0f * ch.d;
    }
    static __device__ __forceinline__ void run_qi(const Chunk& ch, int, int r, u32 qw[4], float& dl, float& ml) {
#pragma unroll
        for (int i = 0; i < 4; i++)
            qw[i] = ((word_of(ch.q, i) >> (4 * r)) & 0x0f0f0f0fu) | (spread4((ch.qh >> (16 * r + 4 * i)) & 15u) << 4);
        dl = ch.d;
        ml = 16.0f * ch.d;
    }
    KILN_RUN_COMPAT
    static __device__ __forceinline__ int run_start(int, int r) { return 16 * r; }
};

// Q5_1: head d, m f16, qh u32 | body qs[16]; w = d·q + m.
struct TQ5_1 {
    static constexpr int QK = 32, CHUNKS = 1, RUNS = 2, BODY = 16, HEAD = 8;
    static constexpr bool HAS_MIN = true, TABLE = false, SIGNED_Q = false;
    struct Chunk { uint4 q; float d, m; u32 qh; };
    static __device__ __forceinline__ void load(const u8* b, const u8* h, i64 g, int, Chunk& ch) {
        ch.q = ld16(b + g * BODY);
        const uint2 hv = __ldg((const uint2*)(h + g * HEAD));
        ch.d = h2f((u16)(hv.x & 0xffffu));
        ch.m = h2f((u16)(hv.x >> 16));
        ch.qh = hv.y;
    }
    static __device__ __forceinline__ void run_q(const Chunk& ch, int, int r, const float*, float q[16], float& dl, float& ml) {
#pragma unroll
        for (int l = 0; l < 16; l++) q[l] = byte_field(ch.q, l, 4 * r, 4) + q5_high(ch.qh, 16 * r + l);
        dl = ch.d;
        ml = -ch.m;
    }
    static __device__ __forceinline__ void run_qi(const Chunk& ch, int, int r, u32 qw[4], float& dl, float& ml) {
#pragma unroll
        for (int i = 0; i < 4; i++)
            qw[i] = ((word_of(ch.q, i) >> (4 * r)) & 0x0f0f0f0fu) | (spread4((ch.qh >> (16 * r + 4 * i)) & 15u) << 4);
        dl = ch.d;
        ml = -ch.m;
    }
    KILN_RUN_COMPAT
    static __device__ __forceinline__ int run_start(int, int r) { return 16 * r; }
};

// Q8_0: head d f16 | body qs[32] in offset binary (q + 128); two chunks of 16. w = d·(u − 128).
struct TQ8_0 {
    static constexpr int QK = 32, CHUNKS = 2, RUNS = 1, BODY = 32, HEAD = 2;
    static constexpr bool HAS_MIN = true, TABLE = false, SIGNED_Q = false;
    struct Chunk { uint4 q; float d; };
    static __device__ __forceinline__ void load(const u8* b, const u8* h, i64 g, int c, Chunk& ch) {
        ch.q = ld16(b + g * BODY + 16 * c);
        ch.d = h2f(__ldg((const u16*)(h + g * HEAD)));
    }
    static __device__ __forceinline__ void run_q(const Chunk& ch, int, int, const float*, float q[16], float& dl, float& ml) {
#pragma unroll
        for (int l = 0; l < 16; l++) q[l] = byte_field(ch.q, l, 0, 8);
        dl = ch.d;
        ml = 128.0f * ch.d;
    }
    static __device__ __forceinline__ void run_qi(const Chunk& ch, int, int, u32 qw[4], float& dl, float& ml) {
        qw[0] = ch.q.x; qw[1] = ch.q.y; qw[2] = ch.q.z; qw[3] = ch.q.w;
        dl = ch.d;
        ml = 128.0f * ch.d;
    }
    KILN_RUN_COMPAT
    static __device__ __forceinline__ int run_start(int c, int) { return 16 * c; }
};

// IQ4_NL: head d f16 | body qs[16]; w = d·kvalues[nibble] (table in shared memory).
struct TIQ4_NL {
    static constexpr int QK = 32, CHUNKS = 1, RUNS = 2, BODY = 16, HEAD = 2;
    static constexpr bool HAS_MIN = false, TABLE = true, SIGNED_Q = true;
    struct Chunk { uint4 q; float d; };
    static __device__ __forceinline__ void load(const u8* b, const u8* h, i64 g, int, Chunk& ch) {
        ch.q = ld16(b + g * BODY);
        ch.d = h2f(__ldg((const u16*)(h + g * HEAD)));
    }
    static __device__ __forceinline__ void run_q(const Chunk& ch, int, int r, const float* tab, float q[16], float& dl, float& ml) {
#pragma unroll
        for (int l = 0; l < 16; l++) q[l] = tab[(byte_of(ch.q, l) >> (4 * r)) & 15u];
        dl = ch.d;
        ml = 0.0f;
    }
    static __device__ __forceinline__ void run_qi(const Chunk& ch, int, int r, u32 qw[4], float& dl, float& ml) {
#pragma unroll
        for (int i = 0; i < 4; i++) qw[i] = iq4_bytes((word_of(ch.q, i) >> (4 * r)) & 0x0f0f0f0fu);
        dl = ch.d;
        ml = 0.0f;
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
    static constexpr bool HAS_MIN = true, TABLE = false, SIGNED_Q = false;
    struct Chunk { uint4 q; uint2 sc; float d, dmin; };
    static __device__ __forceinline__ void load(const u8* b, const u8* h, i64 g, int c, Chunk& ch) {
        const int hh = c >> 1, gg = c & 1;
        ch.q = ld16(b + g * BODY + 16 + 32 * hh + 16 * gg);
        ch.sc = __ldg((const uint2*)(b + g * BODY + 8 * hh));
        const u32 dd = __ldg((const u32*)(h + g * HEAD));
        ch.d = h2f((u16)(dd & 0xffffu));
        ch.dmin = h2f((u16)(dd >> 16));
    }
    static __device__ __forceinline__ void run_s(const Chunk& ch, int c, int s, float& dl, float& ml) {
        const int i = 2 * s + (c & 1);  // scale byte inside scales[8h .. 8h+8]
        const u32 sc = ((i < 4 ? ch.sc.x : ch.sc.y) >> (8 * (i & 3))) & 0xffu;
        dl = ch.d * (float)(sc & 15u);
        ml = ch.dmin * (float)(sc >> 4);
    }
    static __device__ __forceinline__ void run_q(const Chunk& ch, int c, int s, const float*, float q[16], float& dl, float& ml) {
        run_s(ch, c, s, dl, ml);
#pragma unroll
        for (int l = 0; l < 16; l++) q[l] = byte_field(ch.q, l, 2 * s, 2);
    }
    static __device__ __forceinline__ void run_qi(const Chunk& ch, int c, int s, u32 qw[4], float& dl, float& ml) {
        run_s(ch, c, s, dl, ml);
#pragma unroll
        for (int i = 0; i < 4; i++) qw[i] = (word_of(ch.q, i) >> (2 * s)) & 0x03030303u;
    }
    KILN_RUN_COMPAT
    static __device__ __forceinline__ int run_start(int c, int s) { return 128 * (c >> 1) + 32 * s + 16 * (c & 1); }
};

// Q3_K: body hmask[32] @0, qs[64] @32 | head scales[12] @0, d f16 @12 (stride 14).
// q' = q2 + 4·hbit ∈ [0, 7] (a set hmask bit means no −4), w = dl·(q' − 4).
struct TQ3_K {
    static constexpr int QK = 256, CHUNKS = 4, RUNS = 4, BODY = 96, HEAD = 14;
    static constexpr bool HAS_MIN = true, TABLE = false, SIGNED_Q = false;
    struct Chunk { uint4 q, hm; float d; u32 s[3]; };
    static __device__ __forceinline__ void load(const u8* b, const u8* h, i64 g, int c, Chunk& ch) {
        const int hh = c >> 1, gg = c & 1;
        ch.q = ld16(b + g * BODY + 32 + 32 * hh + 16 * gg);
        uint4 hm = ld16(b + g * BODY + 16 * gg);
        // Move hmask bits 4h.. down to bit 0 of each byte once per chunk (bit s then selects run s).
        const int sh = 4 * hh;
        hm.x = (hm.x >> sh) & 0x0f0f0f0fu; hm.y = (hm.y >> sh) & 0x0f0f0f0fu;
        hm.z = (hm.z >> sh) & 0x0f0f0f0fu; hm.w = (hm.w >> sh) & 0x0f0f0f0fu;
        ch.hm = hm;
        const u16* hp = (const u16*)(h + g * HEAD);
#pragma unroll
        for (int i = 0; i < 3; i++) ch.s[i] = (u32)__ldg(hp + 2 * i) | ((u32)__ldg(hp + 2 * i + 1) << 16);
        ch.d = h2f(__ldg(hp + 6));
    }
    static __device__ __forceinline__ u32 sbyte(const Chunk& ch, int i) {
        const u32 w = (i < 4) ? ch.s[0] : (i < 8) ? ch.s[1] : ch.s[2];
        return (w >> (8 * (i & 3))) & 0xffu;
    }
    static __device__ __forceinline__ void run_s(const Chunk& ch, int c, int s, float& dl, float& ml) {
        const int hh = c >> 1, gg = c & 1;
        const int i = 8 * hh + 2 * s + gg;  // 6-bit scale index (e / 16)
        const u32 lo4 = (i < 8) ? (sbyte(ch, i) & 15u) : (sbyte(ch, i - 8) >> 4);
        const u32 hi2 = (sbyte(ch, 8 + (i & 3)) >> (2 * (i >> 2))) & 3u;
        dl = ch.d * (float)((int)(lo4 | (hi2 << 4)) - 32);
        ml = 4.0f * dl;
    }
    static __device__ __forceinline__ void run_q(const Chunk& ch, int c, int s, const float*, float q[16], float& dl, float& ml) {
        run_s(ch, c, s, dl, ml);
#pragma unroll
        for (int l = 0; l < 16; l++) q[l] = fmaf(4.0f, byte_field(ch.hm, l, s, 1), byte_field(ch.q, l, 2 * s, 2));
    }
    static __device__ __forceinline__ void run_qi(const Chunk& ch, int c, int s, u32 qw[4], float& dl, float& ml) {
        run_s(ch, c, s, dl, ml);
#pragma unroll
        for (int i = 0; i < 4; i++)
            qw[i] = ((word_of(ch.q, i) >> (2 * s)) & 0x03030303u) | (((word_of(ch.hm, i) >> s) & 0x01010101u) << 2);
    }
    KILN_RUN_COMPAT
    static __device__ __forceinline__ int run_start(int c, int s) { return 128 * (c >> 1) + 32 * s + 16 * (c & 1); }
};

// The two 6-bit (scale, min) pairs of sub-blocks 2cc and 2cc + 1 (cc runtime 0..3) of the
// 12-byte Q4_K/Q5_K scales field (words s0..s2), branch-free: byte r of *sc / *mn is sub-block
// 2cc + r's scale / min (llama.cpp's get_scale_min_k4 for j = 2cc + r, two at a time on 16-bit lanes).
__device__ __forceinline__ void k4_scale_pairs(u32 s0, u32 s1, u32 s2, int cc, u32& sc, u32& mn) {
    auto half = [&](int i) -> u32 {  // 16-bit word i (0..5) of the field
        const u32 w = (i < 2) ? s0 : (i < 4) ? s1 : s2;
        return (w >> (16 * (i & 1))) & 0xffffu;
    };
    const u32 a = half(cc & 1), b = half((cc & 1) + 2), c = half((cc & 1) + 4);
    // cc < 2: (a, b) = words cc, cc + 2; cc ≥ 2: words cc − 2, cc, cc + 2 = a, b, c.
    const u32 lo_sc = a & 0x3f3fu, lo_mn = b & 0x3f3fu;
    const u32 hi_sc = (c & 0x0f0fu) | ((a & 0xc0c0u) >> 2);
    const u32 hi_mn = ((c >> 4) & 0x0f0fu) | ((b & 0xc0c0u) >> 2);
    sc = cc < 2 ? lo_sc : hi_sc;
    mn = cc < 2 ? lo_mn : hi_mn;
}

// Q4_K: body = the whole 144-byte block: d, dmin f16 @0, scales[12] @4, qs[128] @16.
// Chunk c = 2cc + hh covers qs[32cc + 16hh .. +16]; run 0 = low nibbles (sub-block 2cc),
// run 1 = high nibbles (sub-block 2cc + 1): elements 64cc + 32r + 16hh + l.
struct TQ4_K {
    static constexpr int QK = 256, CHUNKS = 8, RUNS = 2, BODY = 144, HEAD = 0;
    static constexpr bool HAS_MIN = true, TABLE = false, SIGNED_Q = false;
    struct Chunk { uint4 q, hd; };
    static __device__ __forceinline__ void load(const u8* b, const u8*, i64 g, int c, Chunk& ch) {
        ch.hd = ld16(b + g * BODY);
        ch.q = ld16(b + g * BODY + 16 + 16 * c);
    }
    static __device__ __forceinline__ void run_s(const Chunk& ch, int c, int r, float& dl, float& ml) {
        u32 sc, mn;
        k4_scale_pairs(ch.hd.y, ch.hd.z, ch.hd.w, c >> 1, sc, mn);
        dl = h2f((u16)(ch.hd.x & 0xffffu)) * (float)((sc >> (8 * r)) & 0xffu);
        ml = h2f((u16)(ch.hd.x >> 16)) * (float)((mn >> (8 * r)) & 0xffu);
    }
    static __device__ __forceinline__ void run_q(const Chunk& ch, int c, int r, const float*, float q[16], float& dl, float& ml) {
        run_s(ch, c, r, dl, ml);
#pragma unroll
        for (int l = 0; l < 16; l++) q[l] = byte_field(ch.q, l, 4 * r, 4);
    }
    static __device__ __forceinline__ void run_qi(const Chunk& ch, int c, int r, u32 qw[4], float& dl, float& ml) {
        run_s(ch, c, r, dl, ml);
#pragma unroll
        for (int i = 0; i < 4; i++) qw[i] = (word_of(ch.q, i) >> (4 * r)) & 0x0f0f0f0fu;
    }
    KILN_RUN_COMPAT
    static __device__ __forceinline__ int run_start(int c, int r) { return 64 * (c >> 1) + 32 * r + 16 * (c & 1); }
};

// Q5_K: body = whole 176-byte block: d, dmin @0, scales @4, qh[32] @16, qs[128] @48.
struct TQ5_K {
    static constexpr int QK = 256, CHUNKS = 8, RUNS = 2, BODY = 176, HEAD = 0;
    static constexpr bool HAS_MIN = true, TABLE = false, SIGNED_Q = false;
    struct Chunk { uint4 q, hd, qh; };
    static __device__ __forceinline__ void load(const u8* b, const u8*, i64 g, int c, Chunk& ch) {
        ch.hd = ld16(b + g * BODY);
        uint4 qh = ld16(b + g * BODY + 16 + 16 * (c & 1));
        // Bits j = 2cc and 2cc + 1 of each qh byte are this chunk's; move them to bits 0, 1.
        const int sh = 2 * (c >> 1);
        qh.x = (qh.x >> sh) & 0x03030303u; qh.y = (qh.y >> sh) & 0x03030303u;
        qh.z = (qh.z >> sh) & 0x03030303u; qh.w = (qh.w >> sh) & 0x03030303u;
        ch.qh = qh;
        ch.q = ld16(b + g * BODY + 48 + 16 * c);
    }
    static __device__ __forceinline__ void run_s(const Chunk& ch, int c, int r, float& dl, float& ml) {
        u32 sc, mn;
        k4_scale_pairs(ch.hd.y, ch.hd.z, ch.hd.w, c >> 1, sc, mn);
        dl = h2f((u16)(ch.hd.x & 0xffffu)) * (float)((sc >> (8 * r)) & 0xffu);
        ml = h2f((u16)(ch.hd.x >> 16)) * (float)((mn >> (8 * r)) & 0xffu);
    }
    static __device__ __forceinline__ void run_q(const Chunk& ch, int c, int r, const float*, float q[16], float& dl, float& ml) {
        run_s(ch, c, r, dl, ml);
#pragma unroll
        for (int l = 0; l < 16; l++) q[l] = fmaf(16.0f, byte_field(ch.qh, l, r, 1), byte_field(ch.q, l, 4 * r, 4));
    }
    static __device__ __forceinline__ void run_qi(const Chunk& ch, int c, int r, u32 qw[4], float& dl, float& ml) {
        run_s(ch, c, r, dl, ml);
#pragma unroll
        for (int i = 0; i < 4; i++)
            qw[i] = ((word_of(ch.q, i) >> (4 * r)) & 0x0f0f0f0fu) | (((word_of(ch.qh, i) >> r) & 0x01010101u) << 4);
    }
    KILN_RUN_COMPAT
    static __device__ __forceinline__ int run_start(int c, int r) { return 64 * (c >> 1) + 32 * r + 16 * (c & 1); }
};

// Q6_K: body ql[128] @0, qh[64] @128, scales i8[16] @192 | head d f16. Chunk c = 2h + g:
// L0 = ql[64h + 16g], L1 = ql[64h + 32 + 16g], H = qh[32h + 16g]; run r: elements
// 128h + 32r + 16g + l, scale index 8h + 2r + g; w = d·sc·(q − 32).
struct TQ6_K {
    static constexpr int QK = 256, CHUNKS = 4, RUNS = 4, BODY = 208, HEAD = 2;
    static constexpr bool HAS_MIN = true, TABLE = false, SIGNED_Q = false;
    struct Chunk { uint4 l0, l1, qh; uint2 sc; float d; };
    static __device__ __forceinline__ void load(const u8* b, const u8* h, i64 g, int c, Chunk& ch) {
        const int hh = c >> 1, gg = c & 1;
        const u8* p = b + g * BODY;
        ch.l0 = ld16(p + 64 * hh + 16 * gg);
        ch.l1 = ld16(p + 64 * hh + 32 + 16 * gg);
        ch.qh = ld16(p + 128 + 32 * hh + 16 * gg);
        ch.sc = __ldg((const uint2*)(p + 192 + 8 * hh));
        ch.d = h2f(__ldg((const u16*)(h + g * HEAD)));
    }
    static __device__ __forceinline__ void run_s(const Chunk& ch, int c, int r, float& dl, float& ml) {
        const int i = 2 * r + (c & 1);  // scale byte inside scales[8h .. 8h+8]
        const u32 sw = (i < 4) ? ch.sc.x : ch.sc.y;
        dl = ch.d * (float)(signed char)((sw >> (8 * (i & 3))) & 0xffu);
        ml = 32.0f * dl;
    }
    static __device__ __forceinline__ void run_qi(const Chunk& ch, int c, int r, u32 qw[4], float& dl, float& ml) {
        run_s(ch, c, r, dl, ml);
        const uint4& L = (r & 1) ? ch.l1 : ch.l0;
        const int lshift = (r >> 1) * 4, hshift = 2 * r;
#pragma unroll
        for (int i = 0; i < 4; i++)
            qw[i] = ((word_of(L, i) >> lshift) & 0x0f0f0f0fu) | (((word_of(ch.qh, i) >> hshift) & 0x03030303u) << 4);
    }
    static __device__ __forceinline__ void run_q(const Chunk& ch, int c, int r, const float*, float q[16], float& dl, float& ml) {
        run_s(ch, c, r, dl, ml);
        const uint4& L = (r & 1) ? ch.l1 : ch.l0;
        const int lshift = (r >> 1) * 4, hshift = 2 * r;
#pragma unroll
        for (int l = 0; l < 16; l++) q[l] = fmaf(16.0f, byte_field(ch.qh, l, hshift, 2), byte_field(L, l, lshift, 4));
    }
    KILN_RUN_COMPAT
    static __device__ __forceinline__ int run_start(int c, int r) { return 128 * (c >> 1) + 32 * r + 16 * (c & 1); }
};

// IQ4_XS: body qs[128] | head d f16 @0, scales_h u16 @2, scales_l[4] @4. Chunk = sub-block ib.
struct TIQ4_XS {
    static constexpr int QK = 256, CHUNKS = 8, RUNS = 2, BODY = 128, HEAD = 8;
    static constexpr bool HAS_MIN = false, TABLE = true, SIGNED_Q = true;
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
    static __device__ __forceinline__ void run_q(const Chunk& ch, int, int r, const float* tab, float q[16], float& dl, float& ml) {
#pragma unroll
        for (int l = 0; l < 16; l++) q[l] = tab[(byte_of(ch.q, l) >> (4 * r)) & 15u];
        dl = ch.dl;
        ml = 0.0f;
    }
    static __device__ __forceinline__ void run_qi(const Chunk& ch, int, int r, u32 qw[4], float& dl, float& ml) {
#pragma unroll
        for (int i = 0; i < 4; i++) qw[i] = iq4_bytes((word_of(ch.q, i) >> (4 * r)) & 0x0f0f0f0fu);
        dl = ch.dl;
        ml = 0.0f;
    }
    static __device__ __forceinline__ void run(const Chunk& ch, int, int r, float v[16]) {
#pragma unroll
        for (int l = 0; l < 16; l++) v[l] = ch.dl * iq4_value((byte_of(ch.q, l) >> (4 * r)) & 15u);
    }
    static __device__ __forceinline__ int run_start(int c, int r) { return 32 * c + 16 * r; }
};

// Every kernel that decodes declares this table; IQ4 types fill it at block start.
#define KILN_DECLARE_TABLE(T)                                          \
    __shared__ float kiln_tab[16];                                     \
    if (T::TABLE) {                                                    \
        if (threadIdx.x < 16) kiln_tab[threadIdx.x] = iq4_value(threadIdx.x); \
        __syncthreads();                                               \
    }

// Decode run r of a loaded chunk into weights (exact).
template <class T>
__device__ __forceinline__ void decode_run(const typename T::Chunk& ch, int c, int r, const float* tab, float v[16]) {
    float q[16], dl, ml;
    T::run_q(ch, c, r, tab, q, dl, ml);
#pragma unroll
    for (int l = 0; l < 16; l++) v[l] = fmaf(dl, q[l], -ml);
}

// Instantiate MACRO(suffix, Type) for every weight type.
#define KILN_FOR_EACH_WEIGHT_TYPE(X) \
    X(f32, TF32) X(f16, TF16) X(bf16, TBF16) \
    X(q4_0, TQ4_0) X(q4_1, TQ4_1) X(q5_0, TQ5_0) X(q5_1, TQ5_1) X(q8_0, TQ8_0) \
    X(q2_k, TQ2_K) X(q3_k, TQ3_K) X(q4_k, TQ4_K) X(q5_k, TQ5_K) X(q6_k, TQ6_K) \
    X(iq4_nl, TIQ4_NL) X(iq4_xs, TIQ4_XS)

// Instantiate MACRO(suffix, Type) for the 12 block types (those with run_qi).
#define KILN_FOR_EACH_BLOCK_TYPE(X) \
    X(q4_0, TQ4_0) X(q4_1, TQ4_1) X(q5_0, TQ5_0) X(q5_1, TQ5_1) X(q8_0, TQ8_0) \
    X(q2_k, TQ2_K) X(q3_k, TQ3_K) X(q4_k, TQ4_K) X(q5_k, TQ5_K) X(q6_k, TQ6_K) \
    X(iq4_nl, TIQ4_NL) X(iq4_xs, TIQ4_XS)

// Instantiate MACRO(suffix, Type) for the float types.
#define KILN_FOR_EACH_FLOAT_TYPE(X) X(f32, TF32) X(f16, TF16) X(bf16, TBF16)
