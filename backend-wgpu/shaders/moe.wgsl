// moe.wgsl — routing and combination of the routed expert FFN (the expert matmuls run
// through matmul.wgsl's `gemv` with MOE, the activation through glu.wgsl).
//
// `route`: one invocation per token (64 per workgroup): softmax / top-k over E router logits
// into (expert id, weight) pairs; ties pick the lower expert index. Reads 4·E bytes, writes
// 8·top_k bytes per token.
// `combine`: one invocation per output element: out[t, d] = Σ_j w[t, j] · y[t·top_k + j, d].
// Reads 4·(top_k + 1) bytes per element plus the weights.

override GATING: u32 = 0u; // 0: softmax → top-k (RENORM: divide by their sum); 1: top-k → softmax
override RENORM: bool = false;

struct Params {
    n_tokens: u32,
    n_experts: u32,
    top_k: u32,
    dim: u32,
    l_off: u32,   // logits element offset
    id_off: u32,  // scratch: ids [n_tokens·top_k] (u32)
    w_off: u32,   // scratch: weights [n_tokens·top_k] (f32)
    y_off: u32,   // scratch: y [n_tokens·top_k, dim]
    o_off: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> L: array<f32>;   // [n_tokens, E]
@group(0) @binding(2) var<storage, read_write> Sc: array<u32>;  // scratch words
@group(0) @binding(3) var<storage, read_write> O: array<f32>;   // [n_tokens, dim]

@compute @workgroup_size(64)
fn route(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) li: u32) {
    let t = (wid.x + wid.y * nwg.x) * 64u + li;
    if t >= P.n_tokens {
        return;
    }
    let lb = P.l_off + t * P.n_experts;
    var mx = -3.4028235e38;
    for (var e = 0u; e < P.n_experts; e++) {
        mx = max(mx, L[lb + e]);
    }
    var total = 0.0;
    for (var e = 0u; e < P.n_experts; e++) {
        total += exp(L[lb + e] - mx);
    }
    // Top-k by repeated arg-max over the logits (softmax is monotonic), skipping taken ones.
    var prev_v = 3.4028235e38;
    var prev_i = 0xffffffffu;
    var sel_sum = 0.0;
    var first = 0.0;
    for (var j = 0u; j < P.top_k; j++) {
        var best_v = -3.4028235e38;
        var best_i = 0xffffffffu;
        for (var e = 0u; e < P.n_experts; e++) {
            let v = L[lb + e];
            // strictly after (prev_v, prev_i) in (value desc, index asc) order
            let after = v < prev_v || (v == prev_v && e > prev_i);
            if after && (best_i == 0xffffffffu || v > best_v) {
                best_v = v;
                best_i = e;
            }
        }
        prev_v = best_v;
        prev_i = best_i;
        let slot = t * P.top_k + j;
        Sc[P.id_off + slot] = best_i;
        if j == 0u {
            first = best_v;
        }
        var w: f32;
        if GATING == 0u {
            w = exp(best_v - mx) / total;
        } else {
            w = exp(best_v - first); // the top logit is the max of the k
        }
        sel_sum += w;
        Sc[P.w_off + slot] = bitcast<u32>(w);
    }
    if GATING == 1u || RENORM {
        for (var j = 0u; j < P.top_k; j++) {
            let slot = t * P.top_k + j;
            Sc[P.w_off + slot] = bitcast<u32>(bitcast<f32>(Sc[P.w_off + slot]) / sel_sum);
        }
    }
}

@compute @workgroup_size(256)
fn combine(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) li: u32) {
    let i = (wid.x + wid.y * nwg.x) * 256u + li;
    if i >= P.n_tokens * P.dim {
        return;
    }
    let t = i / P.dim;
    let d = i % P.dim;
    var s = 0.0;
    for (var j = 0u; j < P.top_k; j++) {
        let slot = t * P.top_k + j;
        s += bitcast<f32>(Sc[P.w_off + slot]) * bitcast<f32>(Sc[P.y_off + slot * P.dim + d]);
    }
    O[P.o_off + i] = s;
}
