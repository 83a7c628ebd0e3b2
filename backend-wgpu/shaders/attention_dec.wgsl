// attention_dec.wgsl — paged attention, tiled: decode (one query token per sequence) and
// prefill (query tiles), GQA/MQA, causal + sliding window, softcap, scale; head_dim 64/128/256
// (f16/bf16 caches) or 32..256 (f32): K/V rows of 32, 64, 128 or 256 u32 words.
//
// Thread mapping: one workgroup of 128 invocations per (sequence, query tile, KV head, group
// of GH query heads of that KV head, split). Its NR = GH·BQ ≤ 8 rows — (token t, head g)
// pairs: decode BQ = 1 token and GH ≤ 8 heads of a GQA group; prefill BQ = 8 / GH tokens —
// share every K/V byte the workgroup reads (K/V of a GQA group are read once per group, not
// once per query head). Keys from the tile's first lo to its last hi are walked in tiles of
// TK = TW / W keys (W = u32 words per row: hd/2 for 16-bit caches, hd for f32; TW = 2048
// words: 8 KiB of K and 8 KiB of V per tile):
// - staging: invocation li loads vec4s li + 128·r (r < TW/512) of the K and of the V tile
//   (a key's row is W/4 consecutive vec4s: coalesced; keys past the range re-read the last
//   row instead of branching) into registers one tile AHEAD (tile t+1's loads are in flight
//   while tile t is computed), then stores them to workgroup memory (K rows padded to W/4+1
//   vec4s so the score reads below hit distinct banks);
// - scores: task u = r·TK + j (row r, key j), u = li, li+128, ...: q_r·k_j with vec4 reads
//   of K and of q (rows padded likewise) in two FMA chains; scale, softcap, the row's causal
//   and window range → ps[j][r];
// - online softmax per row, all per-row state in vec4 quads (rows 0..3, 4..7; no indexed
//   private arrays, no dynamic vector indexing: drivers may put those in local memory): 16
//   invocations take partial maxima, every invocation folds them into its copy of the
//   running max (uniform), the score tasks turn ps into p = exp(s − m) (0 while a row has
//   seen no visible key);
// - V: invocation li owns word column c = li mod W (two output dims for 16-bit caches; W =
//   256 takes columns li and li+128) and phase li / W of the tile's keys (128/W phases split
//   the keys, two keys per step), accumulating p·v for all rows from one V read; phases are
//   summed at the end (they share m, so the sum is exact).
// Without SPLIT the normalized output goes to O; with SPLIT (decode only), split z takes a
// contiguous share of the key tiles and writes (acc, max, sum) rows to S for
// attention.wgsl's `combine`. Workgroup memory ≤ 28 KiB (TK·(W/4+1) + TW/4 + NR·(hd/4+1)
// vec4s, TK·8 + 128 floats).
// Bytes: decode reads each (sequence, KV head)'s visible K and V rows once per head group
// (once in all when n_heads / n_kv ≤ 8): 2·kv_len·hd·elem bytes; prefill reads them once per
// query tile (1/NR of the per-(token, head) kernel's traffic; a 4k prompt's K/V stay in L2).
// FLOPs ≈ 4·hd per visible (row, key) pair, all f32 FMAs from workgroup memory (about 6
// bytes of workgroup reads per FMA in the scores: the bound at prefill).
// Prefill's next steps (not done): register-blocked scores (2 rows × 2 keys per task: half
// the workgroup reads per FMA), more rows per workgroup where the device allows 48 KiB of
// workgroup memory, and cooperative-matrix (gemm_coop-style) q·kᵀ and p·v where the
// adapter has them.

const HD: u32 = {{HD}}u;  // head_dim
const EPW: u32 = {{EPW}}u; // elements per u32 word of the cache (2: f16/bf16, 1: f32)
const GH: u32 = {{GH}}u;  // query heads per workgroup
const BQ: u32 = {{BQ}}u;  // query tokens per workgroup (prefill tiles; 1 for decode)
const NR: u32 = GH * BQ;  // rows (token t, head g) = t·GH + g, ≤ 8
const PREFILL: bool = {{PREFILL}};
const W: u32 = HD / EPW;  // words per K/V row
const W4: u32 = W / 4u;   // vec4s per row
const TW: u32 = {{TW}}u;  // words per K (and per V) tile: 2048, or 1024 (a knob)
const TK: u32 = TW / W;   // keys per tile
const NF: u32 = TW / 512u; // vec4s of K (and of V) each invocation stages per tile
const GQ: u32 = (NR + 3u) / 4u * 4u; // NR rounded up to a quad of rows
const NPH: u32 = {{NPH}}u; // V phases (key subsets): max(128 / W, 1)
const CPI: u32 = {{CPI}}u; // V word columns per invocation: max(W / 128, 1)
const NEG: f32 = -3.4028235e38;
override SPLIT: bool = false;

// Params: attn_params.wgsl.

// Bindings: attn_kv4.wgsl (W4 = W/4).

// Two cache elements of one word (the second is 0 for f32 caches).
{{UNPACK}}

// Every per-head quantity is a vec4 over 4 query heads (quad 0: heads 0..3, quad 1: 4..7)
// and nothing is an indexed private array (drivers may put those in local memory).
// (Sizes are exact per specialisation: the host substitutes them.)
var<workgroup> kt: array<vec4<u32>, {{KT_N}}>; // TK rows of W4 + 1 vec4s (padded); merge area
var<workgroup> vt: array<u32, {{TW}}>;        // TK rows of W words
var<workgroup> qsm: array<vec4<f32>, {{QS_N}}>; // GH rows of HD/4 + 1 vec4s
var<workgroup> ps: array<f32, {{PS_N}}>;      // [key j][head g < 8]: scores, then probabilities
var<workgroup> pm: array<vec4<f32>, 32>;      // [i < 8][quad] partial maxima; phase sums

struct KV4 {
    k: vec4<u32>,
    v: vec4<u32>,
}

// The next tile's K/V vec4s of this invocation (registers).
var<private> f0: KV4;
var<private> f1: KV4;
var<private> f2: KV4;
var<private> f3: KV4;

// vec4 i of the tile of keys kb.. . Keys past k_hi read the row of key k_hi − 1 instead (no
// branch around the loads; such keys are masked, p = 0 times a finite row).
fn ld(i: u32, kb: u32, k_hi: u32, bt0: u32, kvh: u32) -> KV4 {
    let key = min(kb + i / W4, k_hi - 1u);
    let blk = u32(BT[bt0 + key / P.block_size]);
    let row = ((blk * P.n_kv + kvh) * P.block_size + key % P.block_size) * W4 + i % W4;
    return KV4(K[P.k_off / (4u * EPW) + row], V[P.v_off / (4u * EPW) + row]);
}

fn fetch(li: u32, kb: u32, k_hi: u32, bt0: u32, kvh: u32) {
    f0 = ld(li, kb, k_hi, bt0, kvh);
    f1 = ld(li + 128u, kb, k_hi, bt0, kvh);
    if NF == 4u {
        f2 = ld(li + 256u, kb, k_hi, bt0, kvh);
        f3 = ld(li + 384u, kb, k_hi, bt0, kvh);
    }
}

fn put(i: u32, f: KV4) {
    kt[(i / W4) * (W4 + 1u) + i % W4] = f.k;
    vt[4u * i] = f.v.x;
    vt[4u * i + 1u] = f.v.y;
    vt[4u * i + 2u] = f.v.z;
    vt[4u * i + 3u] = f.v.w;
}

// q_g · k_j over the row (j a key of the staged tile).
fn score(g: u32, j: u32) -> f32 {
    let kr = j * (W4 + 1u);
    let qr = g * (HD / 4u + 1u);
    var d = vec4<f32>();
    var e = vec4<f32>(); // two chains (W4 is even)
    for (var w = 0u; w < W4; w += 2u) {
        let kw = kt[kr + w];
        let kx = kt[kr + w + 1u];
        if EPW == 2u {
            d += qsm[qr + 2u * w] * vec4<f32>(unpack_kv(kw.x), unpack_kv(kw.y));
            e += qsm[qr + 2u * w + 1u] * vec4<f32>(unpack_kv(kw.z), unpack_kv(kw.w));
            d += qsm[qr + 2u * w + 2u] * vec4<f32>(unpack_kv(kx.x), unpack_kv(kx.y));
            e += qsm[qr + 2u * w + 3u] * vec4<f32>(unpack_kv(kx.z), unpack_kv(kx.w));
        } else {
            d += qsm[qr + w] * bitcast<vec4<f32>>(kw);
            e += qsm[qr + w + 1u] * bitcast<vec4<f32>>(kx);
        }
    }
    d += e;
    return d.x + d.y + d.z + d.w;
}

// Component g % 4 of the quad vector of head g (attn_kv4.wgsl's comp).
fn head(q0: vec4<f32>, q1: vec4<f32>, g: u32) -> f32 {
    return comp(select(q0, q1, g >= 4u), g);
}

// Probabilities of key j for heads 4·quad .. 4·quad + 3.
fn pq(j: u32, quad: u32) -> vec4<f32> {
    let b = j * 8u + 4u * quad;
    return vec4<f32>(ps[b], ps[b + 1u], ps[b + 2u], ps[b + 3u]);
}

@compute @workgroup_size(128)
fn attn_dec(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let n_hg = P.n_heads / P.n_kv / GH; // head groups per KV head
    let id = wid.x + wid.y * nwg.x;     // ((seq · n_qt + qt) · n_kv + kvh) · n_hg + hg
    if id >= P.n_seqs * P.n_qt * P.n_kv * n_hg {
        return; // uniform: the whole workgroup
    }
    let wg = seq_wg(id, n_hg, P.n_qt, GH); // sequence, heads, batch entries
    let s = wg.s;
    let c = li % W;              // V word column (W ≤ 128; else columns li, li + 128)
    let ph = li / min(W, 128u);  // V phase
    // Decode: one query per sequence is the case this is for; a sequence of q_len ≠ 1 in a
    // batch of n_tokens = n_seqs is served too, one query after the other. Prefill: query
    // tile qt of the grid, BQ tokens, and nothing else.
    var qt = 0u;
    var qt_end = wg.q_len;
    if PREFILL {
        qt = (id / (P.n_kv * n_hg)) % P.n_qt;
        qt_end = min(qt + 1u, (wg.q_len + BQ - 1u) / BQ);
    }
    for (; qt < qt_end; qt++) {
        let tq = qt * BQ;                      // first token of the tile in the sequence
        let nt = min(BQ, wg.q_len - tq);       // its tokens
        let pos0 = wg.kv_len - wg.q_len + tq; // position of its first token
        // keys of the tile: from the first token's lo to the last token's hi
        let k_lo = key_range(pos0, wg.kv_len).x;
        let k_hi = max(key_range(pos0 + nt - 1u, wg.kv_len).y, k_lo);
        let n_tiles = (k_hi - k_lo + TK - 1u) / TK;
        let per = (n_tiles + P.n_splits - 1u) / P.n_splits;
        let t0 = min(wid.z * per, n_tiles);
        let t1 = min(t0 + per, n_tiles);

        for (var i = li; i < NR * HD / 4u; i += 128u) {
            let r = i / (HD / 4u);
            let t = min(r / GH, nt - 1u); // rows past the last token repeat it (masked)
            let b = P.q_off + ((wg.q0 + tq + t) * P.n_heads + wg.h0 + r % GH) * HD + 4u * (i % (HD / 4u));
            qsm[r * (HD / 4u + 1u) + i % (HD / 4u)] =
                vec4<f32>(Q[b], Q[b + 1u], Q[b + 2u], Q[b + 3u]);
        }
        if t0 < t1 {
            fetch(li, k_lo + t0 * TK, k_hi, wg.bt0, wg.kvh);
        }
        var m0 = vec4<f32>(NEG);
        var m1 = vec4<f32>(NEG);
        var l0 = vec4<f32>();
        var l1 = vec4<f32>();
        var a0 = vec4<f32>(); // rows 0..3, slot A (word element x, or column c)
        var b0 = vec4<f32>(); // rows 0..3, slot B (element y, or column c + 128)
        var a1 = vec4<f32>(); // rows 4..7
        var b1 = vec4<f32>();

        for (var t = t0; t < t1; t++) {
            workgroupBarrier(); // the previous tile's readers are done (and qsm is written)
            put(li, f0);
            put(li + 128u, f1);
            if NF == 4u {
                put(li + 256u, f2);
                put(li + 384u, f3);
            }
            workgroupBarrier();
            let kb = k_lo + t * TK;
            if t + 1u < t1 {
                fetch(li, kb + TK, k_hi, wg.bt0, wg.kvh); // in flight during this tile's math
            }
            // scores: GQ (NR rounded up to a quad) rows × TK keys; rows ≥ NR, rows past the
            // last token and keys outside a row's range are masked
            for (var u = li; u < GQ * TK; u += 128u) {
                let r = u / TK;
                let j = u % TK;
                let kr = key_range(pos0 + r / GH, wg.kv_len);
                var sc = NEG;
                if r < NR && r / GH < nt && kb + j >= kr.x && kb + j < kr.y {
                    sc = score(r, j) * P.scale;
                    if P.softcap > 0.0 {
                        sc = P.softcap * tanh(clamp(sc / P.softcap, -10.0, 10.0));
                    }
                }
                ps[j * 8u + r] = sc;
            }
            workgroupBarrier();
            if li < 2u * 8u {
                var mx = vec4<f32>(NEG);
                for (var j = li / 2u; j < TK; j += 8u) {
                    mx = max(mx, pq(j, li % 2u));
                }
                pm[li] = mx;
            }
            workgroupBarrier();
            var n0 = m0;
            var n1 = m1;
            for (var i = 0u; i < 8u; i++) {
                n0 = max(n0, pm[2u * i]);
                if GQ > 4u {
                    n1 = max(n1, pm[2u * i + 1u]);
                }
            }
            let al0 = exp(m0 - n0);
            let al1 = exp(m1 - n1);
            m0 = n0;
            m1 = n1;
            for (var u = li; u < GQ * TK; u += 128u) {
                let r = u / TK;
                let j = u % TK;
                let e = j * 8u + r;
                // a row with no visible key yet has max NEG: its masked scores stay 0
                ps[e] = select(exp(ps[e] - head(n0, n1, r)), 0.0, ps[e] == NEG);
            }
            workgroupBarrier();
            l0 *= al0;
            a0 *= al0;
            b0 *= al0;
            l1 *= al1;
            a1 *= al1;
            b1 *= al1;
            // two keys per step (TK / NPH is even): independent loads in flight
            for (var j = ph; j < TK; j += 2u * NPH) {
                let jb = j + NPH;
                let p0 = pq(j, 0u);
                let r0 = pq(jb, 0u);
                l0 += p0 + r0;
                let wi = j * W + c;
                let wk = jb * W + c;
                var va: f32;
                var vb: f32;
                var xa: f32;
                var xb: f32;
                if CPI == 1u {
                    let vv = unpack_kv(vt[wi]);
                    let xx = unpack_kv(vt[wk]);
                    va = vv.x;
                    vb = vv.y;
                    xa = xx.x;
                    xb = xx.y;
                } else {
                    va = unpack_kv(vt[wi]).x;
                    vb = unpack_kv(vt[wi + 128u]).x;
                    xa = unpack_kv(vt[wk]).x;
                    xb = unpack_kv(vt[wk + 128u]).x;
                }
                a0 += p0 * va + r0 * xa;
                b0 += p0 * vb + r0 * xb;
                if GQ > 4u {
                    let p1 = pq(j, 1u);
                    let r1 = pq(jb, 1u);
                    l1 += p1 + r1;
                    a1 += p1 * va + r1 * xa;
                    b1 += p1 * vb + r1 * xb;
                }
            }
        }

        // Sum the phases (NPH > 1): phase p > 0 parks its acc in kt and its sums in pm.
        if NPH > 1u {
            workgroupBarrier();
            if ph > 0u {
                let b = ((ph - 1u) * W + c) * 4u;
                kt[b] = bitcast<vec4<u32>>(a0);
                kt[b + 1u] = bitcast<vec4<u32>>(b0);
                kt[b + 2u] = bitcast<vec4<u32>>(a1);
                kt[b + 3u] = bitcast<vec4<u32>>(b1);
                if c == 0u {
                    pm[16u + 2u * ph] = l0;
                    pm[17u + 2u * ph] = l1;
                }
            }
            workgroupBarrier();
            if ph == 0u {
                for (var p = 1u; p < NPH; p++) {
                    let b = ((p - 1u) * W + c) * 4u;
                    a0 += bitcast<vec4<f32>>(kt[b]);
                    b0 += bitcast<vec4<f32>>(kt[b + 1u]);
                    a1 += bitcast<vec4<f32>>(kt[b + 2u]);
                    b1 += bitcast<vec4<f32>>(kt[b + 3u]);
                    l0 += pm[16u + 2u * p];
                    l1 += pm[17u + 2u * p];
                }
            }
        }
        if ph == 0u {
            for (var r = 0u; r < min(NR, nt * GH); r++) {
                let th = (wg.q0 + tq + r / GH) * P.n_heads + wg.h0 + r % GH;
                let va = head(a0, a1, r);
                let vb = head(b0, b1, r);
                let lg = head(l0, l1, r);
                // output dims of slot A and B
                var da = c * EPW;
                var db = da + 1u;
                if EPW == 1u {
                    db = c + 128u;
                }
                if SPLIT {
                    let sb = P.s_off + (th * P.n_splits + wid.z) * (HD + 2u);
                    S[sb + da] = va;
                    if EPW == 2u || CPI == 2u {
                        S[sb + db] = vb;
                    }
                    if li == 0u {
                        S[sb + HD] = head(m0, m1, r);
                        S[sb + HD + 1u] = lg;
                    }
                } else {
                    let inv = select(0.0, 1.0 / lg, lg > 0.0);
                    let ob = P.o_off + th * HD;
                    O[ob + da] = va * inv;
                    if EPW == 2u || CPI == 2u {
                        O[ob + db] = vb * inv;
                    }
                }
            }
        }
        workgroupBarrier(); // kt / pm / qsm are rewritten for the next query
    }
}
