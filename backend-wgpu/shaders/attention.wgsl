// attention.wgsl — paged attention over a ragged batch (prefill and decode), GQA/MQA,
// causal + sliding window, logit soft-capping, head_dim ≤ 256 (64/128/256 tested).
//
// `attn`: one workgroup of 128 invocations per (query token, head, split). Keys are walked
// in tiles of 128: invocation t scores key t of the tile (a full q·k over head_dim, q held in
// workgroup memory), the workgroup takes the tile max and sum (reduce.wgsl) for an online
// softmax, then invocation t accumulates output dims t and t+128 over the tile's 128 keys
// (coalesced V reads). Without SPLIT the normalized output goes to O; with SPLIT, split s
// handles a contiguous share of the key tiles and writes (acc, max, sum) to scratch S.
// `combine`: one workgroup per (token, head) merges the splits.
// Bytes: every (token, head) reads its visible K and V rows once (K/V of a GQA group are
// re-read per query head); FLOPs ≈ 4·head_dim per (query, key).

const TILE: u32 = 128u;
override SPLIT: bool = false;

// Params: attn_params.wgsl.

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> Q: array<f32>;   // [n_tokens, n_heads, hd]
@group(0) @binding(2) var<storage, read_write> K: array<u32>;   // [blocks, n_kv, bs, hd]
@group(0) @binding(3) var<storage, read_write> V: array<u32>;   // [blocks, n_kv, bs, hd]
@group(0) @binding(4) var<storage, read_write> QS: array<i32>;  // [n_seqs + 1]
@group(0) @binding(5) var<storage, read_write> KL: array<i32>;  // [n_seqs]
@group(0) @binding(6) var<storage, read_write> BT: array<i32>;  // [n_seqs, max_blocks]
@group(0) @binding(7) var<storage, read_write> O: array<f32>;   // [n_tokens, n_heads, hd]
@group(0) @binding(8) var<storage, read_write> S: array<f32>;   // [n_tokens·n_heads, splits, hd + 2]

{{LOAD_K}}
{{LOAD_K2}}
{{LOAD_V}}

var<workgroup> qs: array<f32, 256>;
var<workgroup> ps: array<f32, 128>;
var<workgroup> rowbase: array<u32, 128>; // element index of each tile key's row in K/V

// Element index of the K/V row of key position p of sequence s, kv head h.
fn kv_row(s: u32, p: u32, h: u32) -> u32 {
    let blk = u32(BT[P.bt_off + s * P.max_blocks + p / P.block_size]);
    return ((blk * P.n_kv + h) * P.block_size + p % P.block_size) * P.head_dim;
}

@compute @workgroup_size(128)
fn attn(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32,
//#if SUBGROUPS
        @builtin(subgroup_id) sgid: u32, @builtin(num_subgroups) nsg: u32,
        @builtin(subgroup_invocation_id) sgi: u32,
//#endif
) {
//#if SUBGROUPS
    red_setup(li, sgid, nsg, sgi);
//#else
    red_setup(li, 0u, 0u, 0u);
//#endif
    let th = wid.x + wid.y * nwg.x; // token · n_heads + head
    if th >= P.n_tokens * P.n_heads {
        return; // uniform: the whole workgroup
    }
    let tok = th / P.n_heads;
    let head = th % P.n_heads;
    let kvh = head / (P.n_heads / P.n_kv);
    let hd = P.head_dim;
    // Sequence of this token: the last s with q_starts[s] ≤ tok.
    var lo_s = 0u;
    var hi_s = P.n_seqs;
    while hi_s - lo_s > 1u {
        let mid = (lo_s + hi_s) / 2u;
        if u32(QS[P.qs_off + mid]) <= tok {
            lo_s = mid;
        } else {
            hi_s = mid;
        }
    }
    let s = lo_s;
    let q_len = u32(QS[P.qs_off + s + 1u] - QS[P.qs_off + s]);
    let kv_len = u32(KL[P.kl_off + s]);
    let qpos = kv_len - q_len + (tok - u32(QS[P.qs_off + s]));
    let kr = key_range(qpos, kv_len); // attn_params.wgsl
    let k_lo = kr.x;
    let k_hi = kr.y;
    // This split's share of the key tiles.
    let n_tiles = (k_hi - k_lo + TILE - 1u) / TILE;
    let per = (n_tiles + P.n_splits - 1u) / P.n_splits;
    let t0 = min(wid.z * per, n_tiles);
    let t1 = min(t0 + per, n_tiles);

    let qb = P.q_off + th * hd;
    for (var d = li; d < hd; d += 128u) {
        qs[d] = Q[qb + d];
    }
    workgroupBarrier();

    var m = -3.4028235e38;
    var l = 0.0;
    var acc0 = 0.0;
    var acc1 = 0.0;
    for (var t = t0; t < t1; t++) {
        let key = k_lo + t * TILE + li;
        var sc = -3.4028235e38;
        var valid = key < k_hi;
        if valid {
            let rb = kv_row(s, key, kvh);
            rowbase[li] = rb;
            var dotp = 0.0;
            // two elements per load (head_dim is even and 16-bit caches are word-aligned)
            for (var d = 0u; d < hd; d += 2u) {
                let kk = load_k2(P.k_off + rb + d);
                dotp += qs[d] * kk.x + qs[d + 1u] * kk.y;
            }
            sc = dotp * P.scale;
            if P.softcap > 0.0 {
                sc = P.softcap * tanh(clamp(sc / P.softcap, -10.0, 10.0));
            }
        }
        let tmax = wg_max(sc, 128u);
        let m_new = max(m, tmax);
        var p = 0.0;
        if valid {
            p = exp(sc - m_new);
        }
        ps[li] = p;
        let alpha = exp(m - m_new);
        let psum = wg_sum(p, 128u); // its barriers also publish ps and rowbase
        l = l * alpha + psum;
        m = m_new;
        acc0 *= alpha;
        acc1 *= alpha;
        let nk = min(TILE, k_hi - (k_lo + t * TILE));
        for (var j = 0u; j < nk; j++) {
            let pj = ps[j];
            let rb = rowbase[j];
            if li < hd {
                acc0 += pj * load_v(P.v_off + rb + li);
            }
            if li + 128u < hd {
                acc1 += pj * load_v(P.v_off + rb + li + 128u);
            }
        }
        workgroupBarrier(); // ps/rowbase are rewritten by the next tile
    }
    if SPLIT {
        let sb = P.s_off + (th * P.n_splits + wid.z) * (hd + 2u);
        if li < hd {
            S[sb + li] = acc0;
        }
        if li + 128u < hd {
            S[sb + li + 128u] = acc1;
        }
        if li == 0u {
            S[sb + hd] = m;
            S[sb + hd + 1u] = l;
        }
    } else {
        let inv = select(0.0, 1.0 / l, l > 0.0);
        let ob = P.o_off + th * hd;
        if li < hd {
            O[ob + li] = acc0 * inv;
        }
        if li + 128u < hd {
            O[ob + li + 128u] = acc1 * inv;
        }
    }
}

// `combine` (n_splits ≤ 128): invocation s < n_splits reads split s's (max, sum) into
// workgroup memory (one round of loads, not n_splits serial ones), every invocation folds
// them into the row's max and weights exp(m_s − max); then invocation li sums output dim
// li (and li + 128) over the splits, 8 splits' loads in flight per step. Bytes: the splits'
// rows once (n_splits·(hd + 2)·4) and the output row.
@compute @workgroup_size(128)
fn combine(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) li: u32) {
    let th = wid.x + wid.y * nwg.x;
    if th >= P.n_tokens * P.n_heads {
        return;
    }
    let hd = P.head_dim;
    let ns = min(P.n_splits, 128u);
    let st = hd + 2u;
    let base = P.s_off + th * P.n_splits * st;
    var m = -3.4028235e38;
    var l = 0.0;
    if li < ns {
        m = S[base + li * st + hd];
        l = S[base + li * st + hd + 1u];
    }
    ps[li] = m;
    workgroupBarrier();
    var mx = -3.4028235e38;
    for (var s = 0u; s < ns; s++) {
        mx = max(mx, ps[s]);
    }
    workgroupBarrier();
    let w = select(0.0, exp(m - mx), li < ns);
    ps[li] = w;          // weight of split li
    qs[li] = w * l;      // its weighted sum
    workgroupBarrier();
    var tot = 0.0;
    for (var s = 0u; s < ns; s++) {
        tot += qs[s];
    }
    let inv = select(0.0, 1.0 / tot, tot > 0.0);
    for (var d = li; d < hd; d += 128u) {
        var a = 0.0;
        var b = 0.0;
        var s = 0u;
        for (; s + 8u <= ns; s += 8u) {
            let p = base + s * st + d;
            let v0 = S[p];
            let v1 = S[p + st];
            let v2 = S[p + 2u * st];
            let v3 = S[p + 3u * st];
            let v4 = S[p + 4u * st];
            let v5 = S[p + 5u * st];
            let v6 = S[p + 6u * st];
            let v7 = S[p + 7u * st];
            a += ps[s] * v0 + ps[s + 1u] * v1 + ps[s + 2u] * v2 + ps[s + 3u] * v3;
            b += ps[s + 4u] * v4 + ps[s + 5u] * v5 + ps[s + 6u] * v6 + ps[s + 7u] * v7;
        }
        for (; s < ns; s++) {
            a += ps[s] * S[base + s * st + d];
        }
        O[P.o_off + th * hd + d] = (a + b) * inv;
    }
}
