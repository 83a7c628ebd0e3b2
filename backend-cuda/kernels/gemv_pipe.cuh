// gemv_pipe.cuh: the m ≤ 4 GEMV of the block types with the weight streamed through shared
// memory by the bulk copy engine (`gemvp_<type>`, `_m2` / `_m4` for 2 / 4 x rows; included by
// matmul_q.cu after gemv8, whose dp4a/dot16/reduce_store it uses; host side
// src/ops/matmul_q/pipe.rs). x is quant_x's int8 x.
// Kiln instantiates Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS and the 32-element Q4_0, Q4_1, Q5_0, Q5_1,
// IQ4_NL
// (`gemvp_<type>`, the default for m = 1 where it applies; `gemvps_<type>` and `gemvpg_<type>`
// for weight groups — q/k/v, gate/up with the GLU — as gemv8s_/gemv8g_, host
// src/ops/matmul_q/group.rs), all decoded 64 weights per lane in TQ4_K2's x order
// (GP<TW>::step; the 32-element types as superblocks of 8 blocks, X8 below); the lab
// (backend-cuda/labs/gemv) also runs Q6_K and Q8_0 through the generic per-run decode. Q8_0 as
// X8 superblocks (272 bytes: one 139 KB block per SM) made the decode step slower (stop 23).
//
// Why: gemv8 loads each lane's chunks into registers and then decodes them, so a warp has bytes
// in flight only between its loads and its first use (ncu, Q4_K 14336×4096: 45 % DRAM
// throughput, 0.51 issued warp-instructions per scheduler per cycle, 33 % occupancy at 79
// registers). Here every warp owns a ring of D shared-memory stages; lane 0 issues the
// `cp.async.bulk` copies of a stage (one per W row, plus one per row for the head bytes), which
// complete on the stage's mbarrier, D − 1 stages ahead of the one the warp decodes.
//
// Thread mapping: block NT threads = NT/32 warps; a group is R consecutive W rows and M x rows
// (M = 1, 2 or 4: each lane decodes its shared-memory chunk of a W row once and does the dp4a
// and scale work against every x row; x rows past m read row m − 1 and are not stored; measured
// on an H200 against gemv8 and the mma kernels, BENCHMARKS.md stop 25); S warps of a
// block (host-chosen, S divides NT/32) share a group and split its steps into contiguous ranges
// (warp `sub` takes steps [sub·P, sub·P + P), P = ceil(steps / S)); warps stride over groups
// (persistent grid). A step is 32 chunks of each of the R rows: BPS = 32 / CHUNKS whole blocks
// per row (Q4_K 8 × 144 bytes, Q6_K 8 × (208 + 2), Q8_0 16 × (32 + 2)), contiguous in the body
// region and in the head region; a stage is U steps: per row one bulk copy of U·BPS·BODY bytes
// (+ one of U·BPS·HEAD). Lane L decodes chunk L of each step (block L / CHUNKS, chunk
// L % CHUNKS) of the R rows from shared memory against quant_x's units (unit (G·RUNS + r)·32 + L,
// L1/L2): 4 dp4a per 16 weights and row. Warp shuffles, then shared memory across the S warps.
// Kiln's types decode in the lane order of TQ4_K2 (below: 64 weights per lane, a whole pair of
// 32-element sub-blocks or blocks, so the scale unpack and the block header are paid once per 64
// weights with lane-constant selects; Q4_K uses its high nibbles in place with ×1/16 folded
// into the x scale); quant_x_q4_k2 writes x in that order (the plain element order 64c + 16r + l
// of chunk c, run r: it serves every 256-element type decoded this way).
// Bytes per 64 weights and lane: Q4_K 36 (16 + 32 loaded from shared memory), Q5_K 44 (16 + 32
// + 32), Q6_K 52 (96 + 4 + 2 loaded; lanes c, c ^ 1 share ql/qh), Q3_K 27.5 (64 + 10 loaded),
// IQ4_XS 34 (8 + 32),
// 32-element types 32 + 2·HEAD (Q4_0 36 … Q5_1 48).
// Requires (host-checked): nb = k / QK a multiple of BPS (whole steps: every copy is whole
// 16-byte words), body and head 16-byte aligned; sm_90 for the copy engine (below sm_90 the ring
// is filled by ordinary warp loads: correct, unpipelined, not dispatched by the host).
// Bytes: W once (n·k·bpw from DRAM), x 1.5·k·M per group from L1/L2, y m·n·4. FLOPs 2·m·n·k.
// Shared memory per warp: D·R·U·BPS·(BODY + HEAD) + round16(8·D) (GP_SMEM).
#pragma once
#include "quant.cuh"
#include "bulk.cuh"

// The 64-weight lane order (the x layout quant_x_q4_k2 writes and every gemvp_<type> reads):
// chunk c (0..3) of a 256-element block, runs r = 0..3: elements 64c + 32·(r >> 1) + 16·(r & 1)
// + l = 64c + 16r + l (for Q4_K: run 0/1 the low nibbles of qs[32c ..] bytes 0..15 / 16..31, run
// 2/3 their high nibbles).
struct TQ4_K2 {
    static constexpr int QK = 256, CHUNKS = 4, RUNS = 4, BODY = 144, HEAD = 0;
    static __device__ __forceinline__ int run_start(int c, int r) { return 64 * c + 32 * (r >> 1) + 16 * (r & 1); }
};

// Whether A and B are the same type (NVRTC has no <type_traits>).
template <class A, class B> struct gp_same { static constexpr bool v = false; };
template <class A> struct gp_same<A, A> { static constexpr bool v = true; };

#define GP_BULK KILN_BULK

// Per-type stage geometry and the shared-memory form of T::load (sb: this row's body bytes in
// the stage, sh: its head bytes, lb: block within the stage, c: chunk within the block).
template <class T> struct GP;
// Q6_K (body ql[128] @0, qh[64] @128, scales i8[16] @192 | head d): in TQ4_K2's order lane c
// covers elements 64c .. 64c + 63 = half h = c >> 1, quarter pair odd = c & 1: its runs are the
// low (odd = 0) or high (odd = 1) nibbles of ql[64h .. +16], [+16 .. +32], [+32 .. +48],
// [+48 .. +64] with qh[32h .. +16], [+16 .. +32] (twice) bits 2·(2·odd + (r >> 1)) .. + 1 as
// bits 4, 5; its 4 scales are bytes 4c .. 4c + 3 of scales. w = d·sc·(q − 32). Lanes c and c ^ 1
// read the same ql/qh (one broadcast load each). The lab's TQ6_K-ordered kernels use load().
template <> struct GP<TQ6_K> {
    typedef TQ6_K T;
    static constexpr bool K2 = true;
    template <int R, int RB, int RH>
    static __device__ __forceinline__ void step(const u8* sb, const u8* sh, int lane, const uint4 (&xv)[4],
                                                const float2 (&xs)[4], float (&acc)[R][1]) {
        const int lb = lane >> 2, c = lane & 3, hh = c >> 1, odd = c & 1;
        const int ls = 4 * odd, hs = 4 * odd;  // nibble shift; qh shift of runs 0, 1 (+2 for runs 2, 3)
#pragma unroll
        for (int rr = 0; rr < R; rr++) {
            const u8* p = sb + rr * RB + lb * 208;
            const uint4 a0 = *(const uint4*)(p + 64 * hh), a1 = *(const uint4*)(p + 64 * hh + 16);
            const uint4 b0 = *(const uint4*)(p + 64 * hh + 32), b1 = *(const uint4*)(p + 64 * hh + 48);
            const uint4 h0 = *(const uint4*)(p + 128 + 32 * hh), h1 = *(const uint4*)(p + 128 + 32 * hh + 16);
            const u32 sc4 = *(const u32*)(p + 192 + 4 * c);
            const float d = h2f(*(const u16*)(sh + rr * RH + 2 * lb));
            auto w6 = [&](u32 q, u32 h, int s) { return ((q >> ls) & 0x0f0f0f0fu) | (((h >> s) & 0x03030303u) << 4); };
            const int i0 = dp4a_us(w6(a0.w, h0.w, hs), xv[0].w, dp4a_us(w6(a0.z, h0.z, hs), xv[0].z,
                           dp4a_us(w6(a0.y, h0.y, hs), xv[0].y, dp4a_us(w6(a0.x, h0.x, hs), xv[0].x, 0))));
            const int i1 = dp4a_us(w6(a1.w, h1.w, hs), xv[1].w, dp4a_us(w6(a1.z, h1.z, hs), xv[1].z,
                           dp4a_us(w6(a1.y, h1.y, hs), xv[1].y, dp4a_us(w6(a1.x, h1.x, hs), xv[1].x, 0))));
            const int i2 = dp4a_us(w6(b0.w, h0.w, hs + 2), xv[2].w, dp4a_us(w6(b0.z, h0.z, hs + 2), xv[2].z,
                           dp4a_us(w6(b0.y, h0.y, hs + 2), xv[2].y, dp4a_us(w6(b0.x, h0.x, hs + 2), xv[2].x, 0))));
            const int i3 = dp4a_us(w6(b1.w, h1.w, hs + 2), xv[3].w, dp4a_us(w6(b1.z, h1.z, hs + 2), xv[3].z,
                           dp4a_us(w6(b1.y, h1.y, hs + 2), xv[3].y, dp4a_us(w6(b1.x, h1.x, hs + 2), xv[3].x, 0))));
            const float s0 = (float)(signed char)(sc4 & 0xffu), s1 = (float)(signed char)((sc4 >> 8) & 0xffu);
            const float s2 = (float)(signed char)((sc4 >> 16) & 0xffu), s3 = (float)(signed char)(sc4 >> 24);
            float t = s0 * fmaf(xs[0].x, (float)i0, -32.0f * xs[0].y);
            t = fmaf(s1, fmaf(xs[1].x, (float)i1, -32.0f * xs[1].y), t);
            t = fmaf(s2, fmaf(xs[2].x, (float)i2, -32.0f * xs[2].y), t);
            t = fmaf(s3, fmaf(xs[3].x, (float)i3, -32.0f * xs[3].y), t);
            acc[rr][0] = fmaf(d, t, acc[rr][0]);
        }
    }
    static __device__ __forceinline__ void load(const u8* sb, const u8* sh, int lb, int c, T::Chunk& ch) {
        const int hh = c >> 1, gg = c & 1;
        const u8* p = sb + lb * T::BODY;
        ch.l0 = *(const uint4*)(p + 64 * hh + 16 * gg);
        ch.l1 = *(const uint4*)(p + 64 * hh + 32 + 16 * gg);
        ch.qh = *(const uint4*)(p + 128 + 32 * hh + 16 * gg);
        ch.sc = *(const uint2*)(p + 192 + 8 * hh);
        ch.d = h2f(*(const u16*)(sh + 2 * lb));
    }
};
template <> struct GP<TQ8_0> {
    typedef TQ8_0 T;
    static constexpr bool K2 = false;
    static __device__ __forceinline__ void load(const u8* sb, const u8* sh, int lb, int c, T::Chunk& ch) {
        ch.q = *(const uint4*)(sb + lb * T::BODY + 16 * c);
        ch.d = h2f(*(const u16*)(sh + 2 * lb));
    }
};

// The exact float value of byte 0 of v (PRMT into the mantissa of 2^23, one FADD).
__device__ __forceinline__ float gp_byte0(u32 v) { return __uint_as_float(__byte_perm(v, 0x4B000000u, 0x7650u)) - 8388608.0f; }
__device__ __forceinline__ float gp_byte1(u32 v) { return __uint_as_float(__byte_perm(v, 0x4B000000u, 0x7651u)) - 8388608.0f; }
__device__ __forceinline__ float gp_byte2(u32 v) { return __uint_as_float(__byte_perm(v, 0x4B000000u, 0x7652u)) - 8388608.0f; }
__device__ __forceinline__ float gp_byte3(u32 v) { return __uint_as_float(__byte_perm(v, 0x4B000000u, 0x7653u)) - 8388608.0f; }

// The 6-bit (scale, min) pairs of sub-blocks 2c (byte 0) and 2c + 1 (byte 1) of a Q4_K / Q5_K
// block from its header words hd.y..hd.w (k4_scale_pairs with lane-constant selects).
__device__ __forceinline__ void gp_k4_pairs(const uint4& hd, int c, u32& sc, u32& mn) {
    const int sh16 = 16 * (c & 1);
    const u32 a = hd.y >> sh16, b = hd.z >> sh16, e = hd.w >> sh16;
    sc = c < 2 ? (a & 0x3f3fu) : ((e & 0x0f0fu) | ((a >> 2) & 0x3030u));
    mn = c < 2 ? (b & 0x3f3fu) : (((e >> 4) & 0x0f0fu) | ((b >> 2) & 0x3030u));
}

// The 64-weight steps (K2 = true: a TQ4_K2-ordered x): step<R, RB, RH>(sb, sh, lane, xv, xs, acc)
// adds this lane's 64 products of each of the R rows, sb / sh: the step's body / head bytes of
// row 0 (row rr at + rr·RB / + rr·RH), lane L: block L / 4 of the step, sub-block pair c = L % 4.
template <> struct GP<TQ4_K> {
    typedef TQ4_K T;
    static constexpr bool K2 = true;
    static __device__ __forceinline__ void load(const u8* sb, const u8*, int lb, int c, T::Chunk& ch) {
        ch.hd = *(const uint4*)(sb + lb * T::BODY);
        ch.q = *(const uint4*)(sb + lb * T::BODY + 16 + 16 * c);
    }
    // Lane c: sub-block pair (2c: low nibbles, 2c + 1: high nibbles); acc[rr] += d·(sc0·(dx0·i0 +
    // dx1·i1) + sc1·(dx2·i2 + dx3·i3)/16) − dmin·(m0·Σx01 + m1·Σx23), i_r the dp4a sums of run r
    // (i2, i3 on the high nibbles in place: 16× the value, exact in int32).
    template <int R, int RB, int RH>
    static __device__ __forceinline__ void step(const u8* sb, const u8*, int lane, const uint4 (&xv)[4],
                                                const float2 (&xs)[4], float (&acc)[R][1]) {
        const int lb = lane >> 2, c = lane & 3;
        const float dx0 = xs[0].x, dx1 = xs[1].x, dx2 = xs[2].x * 0.0625f, dx3 = xs[3].x * 0.0625f;
        const float sy01 = xs[0].y + xs[1].y, sy23 = xs[2].y + xs[3].y;
#pragma unroll
        for (int rr = 0; rr < R; rr++) {
            const u8* p = sb + rr * RB + lb * 144;
            const uint4 hd = *(const uint4*)p;
            const uint4 q0 = *(const uint4*)(p + 16 + 32 * c);
            const uint4 q1 = *(const uint4*)(p + 32 + 32 * c);
            u32 sc, mn;
            gp_k4_pairs(hd, c, sc, mn);
            const int i0 = dp4a_us(q0.w & 0x0f0f0f0fu, xv[0].w, dp4a_us(q0.z & 0x0f0f0f0fu, xv[0].z,
                           dp4a_us(q0.y & 0x0f0f0f0fu, xv[0].y, dp4a_us(q0.x & 0x0f0f0f0fu, xv[0].x, 0))));
            const int i1 = dp4a_us(q1.w & 0x0f0f0f0fu, xv[1].w, dp4a_us(q1.z & 0x0f0f0f0fu, xv[1].z,
                           dp4a_us(q1.y & 0x0f0f0f0fu, xv[1].y, dp4a_us(q1.x & 0x0f0f0f0fu, xv[1].x, 0))));
            const int i2 = dp4a_us(q0.w & 0xf0f0f0f0u, xv[2].w, dp4a_us(q0.z & 0xf0f0f0f0u, xv[2].z,
                           dp4a_us(q0.y & 0xf0f0f0f0u, xv[2].y, dp4a_us(q0.x & 0xf0f0f0f0u, xv[2].x, 0))));
            const int i3 = dp4a_us(q1.w & 0xf0f0f0f0u, xv[3].w, dp4a_us(q1.z & 0xf0f0f0f0u, xv[3].z,
                           dp4a_us(q1.y & 0xf0f0f0f0u, xv[3].y, dp4a_us(q1.x & 0xf0f0f0f0u, xv[3].x, 0))));
            const float t0 = fmaf(dx1, (float)i1, dx0 * (float)i0);
            const float t1 = fmaf(dx3, (float)i3, dx2 * (float)i2);
            const float s = fmaf(gp_byte1(sc), t1, gp_byte0(sc) * t0);
            const float mm = fmaf(gp_byte1(mn), sy23, gp_byte0(mn) * sy01);
            const float d = h2f((u16)(hd.x & 0xffffu)), dmin = h2f((u16)(hd.x >> 16));
            acc[rr][0] = fmaf(-dmin, mm, fmaf(d, s, acc[rr][0]));
        }
    }
};

// Q5_K (176-byte blocks: d, dmin @0, scales @4, qh[32] @16, qs[128] @48) in TQ4_K2's order: Q4_K's
// nibbles (q0 = qs[32c ..], q1 = qs[32c + 16 ..]) plus their fifth bits, bit 2c (low nibbles) and
// 2c + 1 (high nibbles) of qh bytes 0..15 (for q0) and 16..31 (for q1). Both nibbles are brought to
// bits 0..3 with the fifth bit at bit 4 (0..31 per byte: the in-place ×16 of Q4_K would not fit).
// Per row and lane: 5 shared-memory loads, 8 shifts of qh, ~7 ALU ops per q word, 16 dp4a.
__device__ __forceinline__ u32 q5k_lo(u32 q, u32 h) { return (q & 0x0f0f0f0fu) | ((h << 4) & 0x10101010u); }
__device__ __forceinline__ u32 q5k_hi(u32 q, u32 h) { return ((q >> 4) & 0x0f0f0f0fu) | ((h << 3) & 0x10101010u); }

template <> struct GP<TQ5_K> {
    static constexpr bool K2 = true;
    template <int R, int RB, int RH>
    static __device__ __forceinline__ void step(const u8* sb, const u8*, int lane, const uint4 (&xv)[4],
                                                const float2 (&xs)[4], float (&acc)[R][1]) {
        const int lb = lane >> 2, c = lane & 3, hs = 2 * c;
        const float sy01 = xs[0].y + xs[1].y, sy23 = xs[2].y + xs[3].y;
#pragma unroll
        for (int rr = 0; rr < R; rr++) {
            const u8* p = sb + rr * RB + lb * 176;
            const uint4 hd = *(const uint4*)p;
            const uint4 h0 = *(const uint4*)(p + 16), h1 = *(const uint4*)(p + 32);
            const uint4 q0 = *(const uint4*)(p + 48 + 32 * c), q1 = *(const uint4*)(p + 64 + 32 * c);
            u32 sc, mn;
            gp_k4_pairs(hd, c, sc, mn);
            const u32 g0x = h0.x >> hs, g0y = h0.y >> hs, g0z = h0.z >> hs, g0w = h0.w >> hs;
            const u32 g1x = h1.x >> hs, g1y = h1.y >> hs, g1z = h1.z >> hs, g1w = h1.w >> hs;
            const int i0 = dp4a_us(q5k_lo(q0.w, g0w), xv[0].w, dp4a_us(q5k_lo(q0.z, g0z), xv[0].z,
                           dp4a_us(q5k_lo(q0.y, g0y), xv[0].y, dp4a_us(q5k_lo(q0.x, g0x), xv[0].x, 0))));
            const int i1 = dp4a_us(q5k_lo(q1.w, g1w), xv[1].w, dp4a_us(q5k_lo(q1.z, g1z), xv[1].z,
                           dp4a_us(q5k_lo(q1.y, g1y), xv[1].y, dp4a_us(q5k_lo(q1.x, g1x), xv[1].x, 0))));
            const int i2 = dp4a_us(q5k_hi(q0.w, g0w), xv[2].w, dp4a_us(q5k_hi(q0.z, g0z), xv[2].z,
                           dp4a_us(q5k_hi(q0.y, g0y), xv[2].y, dp4a_us(q5k_hi(q0.x, g0x), xv[2].x, 0))));
            const int i3 = dp4a_us(q5k_hi(q1.w, g1w), xv[3].w, dp4a_us(q5k_hi(q1.z, g1z), xv[3].z,
                           dp4a_us(q5k_hi(q1.y, g1y), xv[3].y, dp4a_us(q5k_hi(q1.x, g1x), xv[3].x, 0))));
            const float t0 = fmaf(xs[1].x, (float)i1, xs[0].x * (float)i0);
            const float t1 = fmaf(xs[3].x, (float)i3, xs[2].x * (float)i2);
            const float s = fmaf(gp_byte1(sc), t1, gp_byte0(sc) * t0);
            const float mm = fmaf(gp_byte1(mn), sy23, gp_byte0(mn) * sy01);
            const float d = h2f((u16)(hd.x & 0xffffu)), dmin = h2f((u16)(hd.x >> 16));
            acc[rr][0] = fmaf(-dmin, mm, fmaf(d, s, acc[rr][0]));
        }
    }
};

// The IQ4 values of the 8 nibbles of w: lo = values of the low nibbles (byte b: table[w byte b
// & 15]), hi = of the high nibbles. Nibble i's bits 0..2 pick one of 8 table bytes (PRMT reads a
// selector's low 3 bits) from k0:k1 (values 0..7) and from k2:k3 (8..15), its bit 3 which of the
// two; 8 PRMT and 4 ALU ops per 8 values.
__device__ __forceinline__ void iq4_pair(u32 w, u32& lo, u32& hi) {
    const u32 k0 = 0xBFAD9881u, k1 = 0xF6EADDCFu, k2 = 0x26190D01u, k3 = 0x71594535u;
    const u32 s = w & 0x77777777u;
    const u32 pick = 0x32103210u | ((w >> 1) & 0x44444444u);  // byte j from a (j) or from b (4 + j)
    const u32 a0 = __byte_perm(k0, k1, s), b0 = __byte_perm(k2, k3, s);              // nibbles 0..3
    const u32 a1 = __byte_perm(k0, k1, s >> 16), b1 = __byte_perm(k2, k3, s >> 16);  // nibbles 4..7
    // v0 = values of (byte 0 low, byte 0 high, byte 1 low, byte 1 high), v1 of bytes 2 and 3.
    const u32 v0 = __byte_perm(a0, b0, pick), v1 = __byte_perm(a1, b1, pick >> 16);
    lo = __byte_perm(v0, v1, 0x6420u);
    hi = __byte_perm(v0, v1, 0x7531u);
}

// i0 += Σ table[low nibbles of q]·xa, i1 += Σ table[high nibbles]·xb (16 signed products each).
__device__ __forceinline__ void iq4_dots(const uint4& q, const uint4& xa, const uint4& xb, int& i0, int& i1) {
    const u32 w[4] = {q.x, q.y, q.z, q.w}, a[4] = {xa.x, xa.y, xa.z, xa.w}, b[4] = {xb.x, xb.y, xb.z, xb.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        u32 lo, hi;
        iq4_pair(w[i], lo, hi);
        i0 = dp4a_ss(lo, a[i], i0);
        i1 = dp4a_ss(hi, b[i], i1);
    }
}

// IQ4_XS (body qs[128] | head d f16 @0, scales_h u16 @2, scales_l[4] @4) in TQ4_K2's order: the
// lane's sub-blocks 2c and 2c + 1 are q0 = qs[32c ..] (low nibbles: run 0, high: run 1) and q1 =
// qs[32c + 16 ..] (runs 2, 3); their 6-bit scales are nibble 0 / 1 of scales_l[c] with bits
// 4c / 4c + 2 of scales_h. Signed weights × signed x: dp4a.s32.s32.
template <> struct GP<TIQ4_XS> {
    static constexpr bool K2 = true;
    template <int R, int RB, int RH>
    static __device__ __forceinline__ void step(const u8* sb, const u8* sh, int lane, const uint4 (&xv)[4],
                                                const float2 (&xs)[4], float (&acc)[R][1]) {
        const int lb = lane >> 2, c = lane & 3;
#pragma unroll
        for (int rr = 0; rr < R; rr++) {
            const u8* p = sb + rr * RB + lb * 128 + 32 * c;
            const uint4 q0 = *(const uint4*)p, q1 = *(const uint4*)(p + 16);
            const uint2 hv = *(const uint2*)(sh + rr * RH + lb * 8);
            const u32 sl = hv.y >> (8 * c), shh = hv.x >> (16 + 4 * c);
            const int ls0 = (int)((sl & 15u) | ((shh & 3u) << 4)) - 32;
            const int ls1 = (int)(((sl >> 4) & 15u) | (((shh >> 2) & 3u) << 4)) - 32;
            int i0 = 0, i1 = 0, i2 = 0, i3 = 0;
            iq4_dots(q0, xv[0], xv[1], i0, i1);
            iq4_dots(q1, xv[2], xv[3], i2, i3);
            const float t0 = fmaf(xs[1].x, (float)i1, xs[0].x * (float)i0);
            const float t1 = fmaf(xs[3].x, (float)i3, xs[2].x * (float)i2);
            const float d = h2f((u16)(hv.x & 0xffffu));
            acc[rr][0] = fmaf(d, fmaf((float)ls1, t1, (float)ls0 * t0), acc[rr][0]);
        }
    }
};

// Q3_K (body hmask[32] @0, qs[64] @32 | head scales[12] @0, d @12) in TQ4_K2's order: lane c
// covers elements 64c .. 64c + 63 of half n = c >> 1; run r is the 2-bit field at 2j, j =
// 2·(c & 1) + (r >> 1), of qs[32n + 16·(r & 1) ..] (q0 for even r, q1 for odd r: lanes c, c ^ 1
// share them) with its third bit, bit 2c + (r >> 1) of hmask[16·(r & 1) ..]; the lane's 4
// sub-block scales are indices 4c .. 4c + 3. (Q2_K decoded the same way made its GEMV faster but
// a Q2_K decode step slower, 1.887 → 1.914 ms on an H200: it stays on gemv8.)
template <> struct GP<TQ3_K> {  // 6-bit scales (− 32); q' = q2 + 4·hbit, w = d·(sc − 32)·(q' − 4)
    static constexpr bool K2 = true;
    template <int R, int RB, int RH>
    static __device__ __forceinline__ void step(const u8* sb, const u8* sh, int lane, const uint4 (&xv)[4],
                                                const float2 (&xs)[4], float (&acc)[R][1]) {
        const int lb = lane >> 2, c = lane & 3, s0 = 4 * (c & 1), hb = 2 * c;
#pragma unroll
        for (int rr = 0; rr < R; rr++) {
            const u8* p = sb + rr * RB + lb * 96;
            const uint4 h0 = *(const uint4*)p, h1 = *(const uint4*)(p + 16);
            const uint4 q0 = *(const uint4*)(p + 32 + 32 * (c >> 1)), q1 = *(const uint4*)(p + 48 + 32 * (c >> 1));
            const u16* hp = (const u16*)(sh + rr * RH + 14 * lb);  // scales[12], d: 2-byte aligned
            const u32 lo = (u32)hp[2 * (c & 1)] | ((u32)hp[2 * (c & 1) + 1] << 16);
            const u32 hi = (u32)hp[4] | ((u32)hp[5] << 16);
            const u32 sc = ((lo >> (4 * (c >> 1))) & 0x0f0f0f0fu) | (((hi >> hb) & 0x03030303u) << 4);
            auto f = [&](u32 q, u32 h, int s, int b) { return ((q >> s) & 0x03030303u) | (((h >> b) & 0x01010101u) << 2); };
            const int i0 = dp4a_us(f(q0.w, h0.w, s0, hb), xv[0].w, dp4a_us(f(q0.z, h0.z, s0, hb), xv[0].z,
                           dp4a_us(f(q0.y, h0.y, s0, hb), xv[0].y, dp4a_us(f(q0.x, h0.x, s0, hb), xv[0].x, 0))));
            const int i1 = dp4a_us(f(q1.w, h1.w, s0, hb), xv[1].w, dp4a_us(f(q1.z, h1.z, s0, hb), xv[1].z,
                           dp4a_us(f(q1.y, h1.y, s0, hb), xv[1].y, dp4a_us(f(q1.x, h1.x, s0, hb), xv[1].x, 0))));
            const int i2 = dp4a_us(f(q0.w, h0.w, s0 + 2, hb + 1), xv[2].w, dp4a_us(f(q0.z, h0.z, s0 + 2, hb + 1), xv[2].z,
                           dp4a_us(f(q0.y, h0.y, s0 + 2, hb + 1), xv[2].y, dp4a_us(f(q0.x, h0.x, s0 + 2, hb + 1), xv[2].x, 0))));
            const int i3 = dp4a_us(f(q1.w, h1.w, s0 + 2, hb + 1), xv[3].w, dp4a_us(f(q1.z, h1.z, s0 + 2, hb + 1), xv[3].z,
                           dp4a_us(f(q1.y, h1.y, s0 + 2, hb + 1), xv[3].y, dp4a_us(f(q1.x, h1.x, s0 + 2, hb + 1), xv[3].x, 0))));
            float t = (gp_byte0(sc) - 32.0f) * fmaf(xs[0].x, (float)i0, -4.0f * xs[0].y);
            t = fmaf(gp_byte1(sc) - 32.0f, fmaf(xs[1].x, (float)i1, -4.0f * xs[1].y), t);
            t = fmaf(gp_byte2(sc) - 32.0f, fmaf(xs[2].x, (float)i2, -4.0f * xs[2].y), t);
            t = fmaf(gp_byte3(sc) - 32.0f, fmaf(xs[3].x, (float)i3, -4.0f * xs[3].y), t);
            acc[rr][0] = fmaf(h2f(hp[6]), t, acc[rr][0]);
        }
    }
};

// The 32-element block types as 256-element "superblocks" of 8 consecutive blocks: in the
// repacked layout their 8 bodies are contiguous, and so are their 8 heads, so the ring copies
// them exactly as a 256-element type with BODY = 8·T32::BODY and HEAD = 8·T32::HEAD.
template <class T32> struct X8 {
    static constexpr int QK = 256, CHUNKS = 4, RUNS = 4, BODY = 8 * T32::BODY, HEAD = 8 * T32::HEAD;
};

// Σ w·x over one 32-element block of T32 in TQ4_K2's order: b / h = its body / head in shared
// memory (q = the 16 quant bytes, element l the low nibble of byte l, element 16 + l the high
// one), (xa, sa) / (xb, sb) = the x runs of elements
// 0..15 / 16..31. Low nibbles: q & 0x0f0f0f0f, high: (q >> 4).
template <class T32> struct GP32;
#define GP32_NIBBLE_DOTS(LO, HI, DP)                                                             \
    const int i0 = DP(LO(q.w), xa.w, DP(LO(q.z), xa.z, DP(LO(q.y), xa.y, DP(LO(q.x), xa.x, 0)))); \
    const int i1 = DP(HI(q.w), xb.w, DP(HI(q.z), xb.z, DP(HI(q.y), xb.y, DP(HI(q.x), xb.x, 0))));
#define GP32_LO(v) ((v) & 0x0f0f0f0fu)
#define GP32_HI(v) (((v) >> 4) & 0x0f0f0f0fu)
template <> struct GP32<TQ4_0> {  // head d; w = d·(q − 8)
    static __device__ __forceinline__ float block(const u8* b, const u8* h, const uint4& xa, const uint4& xb,
                                                  float2 sa, float2 sb) {
        const uint4 q = *(const uint4*)b;
        GP32_NIBBLE_DOTS(GP32_LO, GP32_HI, dp4a_us)
        const float d = h2f(*(const u16*)h);
        return d * (fmaf(sb.x, (float)i1, sa.x * (float)i0) - 8.0f * (sa.y + sb.y));
    }
};
template <> struct GP32<TQ4_1> {  // head d, m; w = d·q + m
    static __device__ __forceinline__ float block(const u8* b, const u8* h, const uint4& xa, const uint4& xb,
                                                  float2 sa, float2 sb) {
        const uint4 q = *(const uint4*)b;
        GP32_NIBBLE_DOTS(GP32_LO, GP32_HI, dp4a_us)
        const u32 dm = *(const u32*)h;
        return fmaf(h2f((u16)(dm & 0xffffu)), fmaf(sb.x, (float)i1, sa.x * (float)i0), h2f((u16)(dm >> 16)) * (sa.y + sb.y));
    }
};
// Q5_0 / Q5_1: the fifth bit of element e is bit e of qh (low nibble of byte l: e = l, high: 16 + l).
__device__ __forceinline__ void q5_dots(const uint4& q, u32 qh, const uint4& xa, const uint4& xb, int& i0, int& i1) {
    const u32 w[4] = {q.x, q.y, q.z, q.w}, a[4] = {xa.x, xa.y, xa.z, xa.w}, b[4] = {xb.x, xb.y, xb.z, xb.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        i0 = dp4a_us((w[i] & 0x0f0f0f0fu) | (spread4((qh >> (4 * i)) & 15u) << 4), a[i], i0);
        i1 = dp4a_us(((w[i] >> 4) & 0x0f0f0f0fu) | (spread4((qh >> (16 + 4 * i)) & 15u) << 4), b[i], i1);
    }
}
template <> struct GP32<TQ5_0> {  // head d, qh (u16-aligned); w = d·(q5 − 16)
    static __device__ __forceinline__ float block(const u8* b, const u8* h, const uint4& xa, const uint4& xb,
                                                  float2 sa, float2 sb) {
        const uint4 q = *(const uint4*)b;
        const u32 qh = (u32)((const u16*)h)[1] | ((u32)((const u16*)h)[2] << 16);
        int i0 = 0, i1 = 0;
        q5_dots(q, qh, xa, xb, i0, i1);
        const float d = h2f(((const u16*)h)[0]);
        return d * (fmaf(sb.x, (float)i1, sa.x * (float)i0) - 16.0f * (sa.y + sb.y));
    }
};
template <> struct GP32<TQ5_1> {  // head d, m, qh; w = d·q5 + m
    static __device__ __forceinline__ float block(const u8* b, const u8* h, const uint4& xa, const uint4& xb,
                                                  float2 sa, float2 sb) {
        const uint4 q = *(const uint4*)b;
        const uint2 hv = *(const uint2*)h;
        const u32 qh = hv.y;
        int i0 = 0, i1 = 0;
        q5_dots(q, qh, xa, xb, i0, i1);
        return fmaf(h2f((u16)(hv.x & 0xffffu)), fmaf(sb.x, (float)i1, sa.x * (float)i0), h2f((u16)(hv.x >> 16)) * (sa.y + sb.y));
    }
};
template <> struct GP32<TIQ4_NL> {  // head d; w = d·table[nibble] (signed)
    static __device__ __forceinline__ float block(const u8* b, const u8* h, const uint4& xa, const uint4& xb,
                                                  float2 sa, float2 sb) {
        int i0 = 0, i1 = 0;
        iq4_dots(*(const uint4*)b, xa, xb, i0, i1);
        return h2f(*(const u16*)h) * fmaf(sb.x, (float)i1, sa.x * (float)i0);
    }
};
#undef GP32_NIBBLE_DOTS
#undef GP32_LO
#undef GP32_HI

// Lane (lb, c) of a step: blocks 2c and 2c + 1 of superblock lb (bodies at (8·lb + 2c)·BODY and
// one BODY further).
template <class T32> struct GP<X8<T32>> {
    static constexpr bool K2 = true;
    template <int R, int RB, int RH>
    static __device__ __forceinline__ void step(const u8* sb, const u8* sh, int lane, const uint4 (&xv)[4],
                                                const float2 (&xs)[4], float (&acc)[R][1]) {
        const int lb = lane >> 2, c = lane & 3;
#pragma unroll
        for (int rr = 0; rr < R; rr++) {
            const u8* p = sb + rr * RB + (lb * 8 + 2 * c) * T32::BODY;
            const u8* h = sh + rr * RH + (lb * 8 + 2 * c) * T32::HEAD;
            const float a = GP32<T32>::block(p, h, xv[0], xv[1], xs[0], xs[1]);
            const float b = GP32<T32>::block(p + T32::BODY, h + T32::HEAD, xv[2], xv[3], xs[2], xs[3]);
            acc[rr][0] += a + b;
        }
    }
};

// gemvp_<type> body. T: the x order (TQ4_K2 for kiln's kernels: decoded by GP<TW>::step; the
// lab also runs a type's own order through the generic per-run decode); TW: the type whose block
// layout the bytes have. R rows per group, D stages per
// warp, U steps per stage (one bulk copy of U·BPS blocks per row and stage).
// NS weight segments / GLU as the `*s_` / `*g_` kernels of gemv_segs.cuh (groups numbered over
// the segments; GLU: R/2 gate and R/2 up rows per group, act(gate)·up stored); the single-weight
// kernel is NS = 1 (gemv_one_seg), where the lookups fold away.
template <class T, class TW, int R, int D, int NT, int U, int NS, int GLU, int M = 1>
__device__ __forceinline__ void gemvp_body(const GemvSegs& sg, const uint4* __restrict__ xq,
                                           const float2* __restrict__ xs, int k, int m_, int S, int act) {
    // M = 1: m is 1 at compile time, so the single-row kernels compile as they did before M
    // (a runtime m there cost ~1 % of a batch-1 decode step on an H200, BENCHMARKS.md stop 25).
    const int m = M == 1 ? 1 : m_;
    constexpr int BPS = KILN_WARP / T::CHUNKS;
    constexpr int SB = BPS * TW::BODY;                     // body bytes per row and step
    constexpr int SH = BPS * TW::HEAD;                     // head bytes per row and step (0, 16 or 32)
    constexpr int RB = U * SB, RH = U * SH;                // per row and stage
    constexpr int STAGE = R * (RB + RH);
    constexpr int WARP_BYTES = D * STAGE + (8 * D + 15) / 16 * 16;
    static_assert(SB % 16 == 0 && SH % 16 == 0, "gemvp: a step's body and head bytes are whole 16-byte words");
    extern __shared__ __align__(16) u8 gp_smem[];
    const int nb = k / T::QK;
    const int nsteps = nb / BPS;
    const int lane = threadIdx.x % KILN_WARP;
    const int warp = threadIdx.x / KILN_WARP;
    const int slots = (NT / KILN_WARP) / S;
    const int slot = warp / S, sub = warp % S;
    const int ngroups = group_count<NS, R, GLU>(sg);
    const int gstride = gridDim.x * slots;
    const int g0 = blockIdx.x * slots + slot;
    const int per = (nsteps + S - 1) / S;                  // steps of a group per warp
    const int ipg = (per + U - 1) / U;                     // items (stages) of a group per warp
    const int gend = min(sub * per + per, nsteps);         // end of this warp's step range
    // Block-uniform item count (the S > 1 reduction has barriers).
    const int rounds = (int)blockIdx.x * slots < ngroups ? (ngroups - 1 - (int)blockIdx.x * slots) / gstride + 1 : 0;
    const int total = rounds * ipg;
    u8* ring = gp_smem + (size_t)warp * WARP_BYTES;
    u64* bars = (u64*)(ring + D * STAGE);
    __shared__ float red[NT / KILN_WARP][R * M];
    const int units = nsteps * T::RUNS * KILN_WARP;        // quant_x's units per x row

    pdl_launch_dependents();  // the next call's quant_x may start (it waits for this grid)
    // Item t: group g0 + (t / ipg)·gstride, steps sub·per + (t % ipg)·U + [0, ns).
    auto issue = [&](int t) {
        const int g = g0 + (t / ipg) * gstride, G = sub * per + (t % ipg) * U;
        const int ns = g < ngroups ? min(U, gend - G) : 0;
        u8* st = ring + (t % D) * STAGE;
        const GemvSeg sq = group_seg<NS, R, GLU>(sg, g);
        // Row rr's first block of this item (its weight's rows clamped: a tail group's extra
        // rows are read, their sums unused).
        auto src = [&](int rr, const u8*& b, const u8*& h) {
            int row;
            group_row<R, GLU>(sg, sq, rr, b, h, row);
            return (i64)row * nb + (i64)G * BPS;
        };
#if GP_BULK
        if (lane == 0) {
            const u32 bar = smem_addr(bars + t % D);
            if (ns <= 0) {
                asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
            } else {
                asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar),
                             "r"((u32)(R * ns * (SB + SH))) : "memory");
                // Earlier generic reads of this stage (the warp's decode) before the async write.
                asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#pragma unroll
                for (int rr = 0; rr < R; rr++) {
                    const u8* body;
                    const u8* head;
                    const i64 blk = src(rr, body, head);
                    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                                 ::"r"(smem_addr(st + rr * RB)), "l"(body + blk * TW::BODY), "r"((u32)(ns * SB)),
                                 "r"(bar) : "memory");
                    if (SH > 0)
                        asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                                     ::"r"(smem_addr(st + R * RB + rr * RH)), "l"(head + blk * TW::HEAD),
                                     "r"((u32)(ns * SH)), "r"(bar) : "memory");
                }
            }
        }
#else
        for (int rr = 0; rr < R; rr++) {
            const u8* body;
            const u8* head;
            const i64 blk = src(rr, body, head);
            for (int o = 16 * lane; o < ns * SB; o += 16 * KILN_WARP)
                *(uint4*)(st + rr * RB + o) = ld16(body + blk * TW::BODY + o);
            for (int o = 16 * lane; o < ns * SH; o += 16 * KILN_WARP)
                *(uint4*)(st + R * RB + rr * RH + o) = ld16(head + blk * TW::HEAD + o);
        }
        __syncwarp();
#endif
    };
    // x units of step G for this lane (quant_x's layout: unit (G·RUNS + r)·32 + lane of each x
    // row; rows past m read row m − 1, their sums unused).
    auto load_x = [&](int G, uint4 (&xv)[M][T::RUNS], float2 (&xsv)[M][T::RUNS]) {
#pragma unroll
        for (int mi = 0; mi < M; mi++)
#pragma unroll
            for (int r = 0; r < T::RUNS; r++) {
                const i64 row = M == 1 ? 0 : (i64)min(mi, m - 1) * units;
                const int u = (G * T::RUNS + r) * KILN_WARP + lane;
                xv[mi][r] = __ldg(xq + row + u);
                xsv[mi][r] = __ldg(xs + row + u);
            }
    };
#if GP_BULK
    if (lane == 0)
        for (int s = 0; s < D; s++) mbar_init(smem_addr(bars + s), 1);
    __syncwarp();
#endif
    for (int t = 0; t < D && t < total; t++) issue(t);  // W does not depend on earlier kernels
    pdl_wait();  // x is quant_x's output; y may still be read by the previous kernel

    float acc[M][R][1];
#pragma unroll
    for (int mi = 0; mi < M; mi++)
#pragma unroll
        for (int rr = 0; rr < R; rr++) acc[mi][rr][0] = 0.0f;
    for (int t = 0; t < total; t++) {
        const int it = t / ipg, j = t % ipg;
        const int g = g0 + it * gstride, G0 = sub * per + j * U;
        const int ns = g < ngroups ? min(U, gend - G0) : 0;
        uint4 xv[M][T::RUNS];
        float2 xsv[M][T::RUNS];
        if (ns > 0) load_x(G0, xv, xsv);
        mbar_wait(smem_addr(bars + t % D), (u32)((t / D) & 1));
        const u8* st = ring + (t % D) * STAGE;
#pragma unroll
        for (int u = 0; u < U; u++) {
            if (u >= ns) break;
            uint4 xn[M][T::RUNS];
            float2 xsn[M][T::RUNS];
            if (u + 1 < ns) load_x(G0 + u + 1, xn, xsn);  // next step's x before this step's decode
            // The step once per x row: its shared-memory loads and weight unpacking are the same
            // for every x row and are expected to be kept once (not checked in SASS; back to back
            // m = 2 costs 1.14–1.27× m = 1, BENCHMARKS.md stop 25).
#pragma unroll
            for (int mi = 0; mi < M; mi++) {
                if constexpr (gp_same<T, TQ4_K2>::v && GP<TW>::K2) {
                    GP<TW>::template step<R, RB, RH>(st + u * SB, st + R * RB + u * SH, lane, xv[mi], xsv[mi],
                                                     acc[mi]);
                } else {
                    const int lb = lane / T::CHUNKS, c = lane % T::CHUNKS;
#pragma unroll
                    for (int rr = 0; rr < R; rr++) {
                        typename TW::Chunk ch;
                        GP<TW>::load(st + rr * RB + u * SB, st + R * RB + rr * RH + u * SH, lb, c, ch);
#pragma unroll
                        for (int r = 0; r < T::RUNS; r++) {
                            u32 qw[4];
                            float dl, ml;
                            TW::run_qi(ch, c, r, qw, dl, ml);
                            const float d = (float)dot16<TW>(qw, xv[mi][r]);
                            float a = fmaf(dl * xsv[mi][r].x, d, acc[mi][rr][0]);
                            if (TW::HAS_MIN) a = fmaf(-ml, xsv[mi][r].y, a);
                            acc[mi][rr][0] = a;
                        }
                    }
                }
            }
            if (u + 1 < U) {
#pragma unroll
                for (int mi = 0; mi < M; mi++)
#pragma unroll
                    for (int r = 0; r < T::RUNS; r++) { xv[mi][r] = xn[mi][r]; xsv[mi][r] = xsn[mi][r]; }
            }
        }
        __syncwarp();  // every lane's reads of this stage are done before it is refilled
        if (t + D < total) issue(t + D);
        if (j == ipg - 1) {  // the group's last item (block-uniform): reduce and store
            const GemvSeg sq = group_seg<NS, R, GLU>(sg, g);
            float a2[R][M];  // reduce_store's [row][x row] order
#pragma unroll
            for (int rr = 0; rr < R; rr++)
#pragma unroll
                for (int mi = 0; mi < M; mi++) a2[rr][mi] = acc[mi][rr][0];
            if constexpr (GLU != 0)
                reduce_store_glu<R, M>(a2, red, sq.y, sq.n, sq.g, S, warp, slot, sub, lane, g < ngroups, act, m);
            else
                reduce_store<R, M>(a2, red, sq.y, sq.n, m, sq.g, 0, S, warp, slot, sub, lane, g < ngroups);
#pragma unroll
            for (int mi = 0; mi < M; mi++)
#pragma unroll
                for (int rr = 0; rr < R; rr++) acc[mi][rr][0] = 0.0f;
        }
    }
}

// Shared memory of gemvp<T, TW, R, D, NT> (the host computes the same: pipe.rs).
#define GP_SMEM(T, TW, R, D, NT, U) \
    ((NT / KILN_WARP) * ((D) * (R) * (U) * ((KILN_WARP / T::CHUNKS) * (TW::BODY + TW::HEAD)) + (8 * (D) + 15) / 16 * 16))

// M x rows per group (1; 2 and 4: the `_m2` / `_m4` kernels, one decode of W for all rows), m ≤ M
// (rows past m are read as row m − 1 and not stored).
#define GEMVP_KERNEL_NAMED(name, T, TW, R, D, NT, U, M)                                              \
    extern "C" __global__ void __launch_bounds__(NT) name(                                          \
        const u8* __restrict__ body, const u8* __restrict__ head, const uint4* __restrict__ xq,     \
        const float2* __restrict__ xs, float* __restrict__ y, int n, int k, int m, int S) {         \
        gemvp_body<T, TW, R, D, NT, U, 1, 0, M>(gemv_one_seg(body, head, y, n), xq, xs, k, m, S, 0); \
    }
// gemvps_<type>: over up to GEMV_NS weight segments (q/k/v, gate/up) in one launch, y_s [m, n_s];
// gemvpg_<type>: GLU mode (segment 0 gate, 1 up; y_0 = act(gate)·up [m, n]). Host:
// src/ops/matmul_q/group.rs.
#define GEMVPS_KERNEL_NAMED(name, T, TW, R, D, NT, U, M)                                             \
    extern "C" __global__ void __launch_bounds__(NT) name(GemvSegs sg, const uint4* __restrict__ xq, \
                                                          const float2* __restrict__ xs, int k, int m, \
                                                          int S) {                                   \
        gemvp_body<T, TW, R, D, NT, U, GEMV_NS, 0, M>(sg, xq, xs, k, m, S, 0);                       \
    }
#define GEMVPG_KERNEL_NAMED(name, T, TW, R, D, NT, U, M)                                             \
    extern "C" __global__ void __launch_bounds__(NT) name(GemvSegs sg, const uint4* __restrict__ xq, \
                                                          const float2* __restrict__ xs, int k, int m, \
                                                          int S, int act) {                          \
        gemvp_body<T, TW, R, D, NT, U, 2, 1, M>(sg, xq, xs, k, m, S, act);                           \
    }

// Kiln's kernels (host: src/ops/matmul_q/pipe.rs, which mirrors these constants): R = 4 rows per
// group, D = 2 stages per warp, 256 threads, one step per stage (measured for Q4_K in
// backend-cuda/labs/gemv, BENCHMARKS.md "cgemv"; the other types use the same); quant_x_q4_k2
// writes x in TQ4_K2's order for all of them.
#define GEMVP_R 4
#define GEMVP_D 2
#define GEMVP_THREADS 256
QUANT_X_KERNEL(q4_k2, TQ4_K2)
#define GEMVP_TYPE(suffix, TW)                                                                     \
    GEMVP_KERNEL_NAMED(gemvp_##suffix, TQ4_K2, TW, GEMVP_R, GEMVP_D, GEMVP_THREADS, 1, 1)          \
    GEMVPS_KERNEL_NAMED(gemvps_##suffix, TQ4_K2, TW, GEMVP_R, GEMVP_D, GEMVP_THREADS, 1, 1)        \
    GEMVPG_KERNEL_NAMED(gemvpg_##suffix, TQ4_K2, TW, GEMVP_R, GEMVP_D, GEMVP_THREADS, 1, 1)        \
    GEMVP_KERNEL_NAMED(gemvp_##suffix##_m2, TQ4_K2, TW, GEMVP_R, GEMVP_D, GEMVP_THREADS, 1, 2)     \
    GEMVPS_KERNEL_NAMED(gemvps_##suffix##_m2, TQ4_K2, TW, GEMVP_R, GEMVP_D, GEMVP_THREADS, 1, 2)   \
    GEMVPG_KERNEL_NAMED(gemvpg_##suffix##_m2, TQ4_K2, TW, GEMVP_R, GEMVP_D, GEMVP_THREADS, 1, 2)   \
    GEMVP_KERNEL_NAMED(gemvp_##suffix##_m4, TQ4_K2, TW, GEMVP_R, GEMVP_D, GEMVP_THREADS, 1, 4)     \
    GEMVPS_KERNEL_NAMED(gemvps_##suffix##_m4, TQ4_K2, TW, GEMVP_R, GEMVP_D, GEMVP_THREADS, 1, 4)   \
    GEMVPG_KERNEL_NAMED(gemvpg_##suffix##_m4, TQ4_K2, TW, GEMVP_R, GEMVP_D, GEMVP_THREADS, 1, 4)
GEMVP_TYPE(q4_k, TQ4_K)
GEMVP_TYPE(q5_k, TQ5_K)
GEMVP_TYPE(iq4_xs, TIQ4_XS)
GEMVP_TYPE(q4_0, X8<TQ4_0>)
GEMVP_TYPE(q4_1, X8<TQ4_1>)
GEMVP_TYPE(q5_0, X8<TQ5_0>)
GEMVP_TYPE(q5_1, X8<TQ5_1>)
GEMVP_TYPE(iq4_nl, X8<TIQ4_NL>)
GEMVP_TYPE(q6_k, TQ6_K)
GEMVP_TYPE(q3_k, TQ3_K)
