// embed.wgsl — out[i, :] = scale · table[ids[i], :] for one row chunk of a prepared table of
// any weight dtype (dequant.wgsl). ids: i32 [n]; out: f32 [n, dim].
// Thread mapping: one invocation per (token, 32-element group), 64 per workgroup, 2-D folded
// grid; tokens whose id lies outside this chunk's rows are left to the other chunks.
// Moves one table row (dim·bytes_per_weight) + 4·dim bytes per token.

struct Params {
    n_items: u32, // n · groups
    groups: u32,  // dim / 32
    k: u32,       // dim
    bpr: u32,
    d_base: u32,
    r0: u32,
    r1: u32,
    ids_off: u32,
    o_off: u32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> W: array<u32>;
@group(0) @binding(2) var<storage, read_write> Ids: array<i32>; // [n]
@group(0) @binding(3) var<storage, read_write> O: array<f32>;   // [n, dim]

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let id = (wid.x + wid.y * nwg.x) * 64u + li;
    if id >= P.n_items {
        return;
    }
    let tok = id / P.groups;
    let g = id % P.groups;
    let row = u32(Ids[P.ids_off + tok]);
    if row < P.r0 || row >= P.r1 {
        return;
    }
    dq_group(row - P.r0, g);
    let ob = P.o_off + tok * P.k + g * 32u;
    for (var i = 0u; i < 8u; i++) {
        for (var c = 0u; c < 4u; c++) {
            O[ob + 4u * i + c] = P.scale * dq[i][c];
        }
    }
}
