// gather.wgsl — out[i, :] = x[ids[i], :] for 4-byte elements (f32/i32/u32).
// Thread mapping: one invocation per output element, 256 per workgroup, 2-D folded grid.
// Moves 8 bytes per element plus the ids.

struct Params {
    n: u32,   // output elements
    d: u32,   // row length
    x_off: u32,
    i_off: u32,
    o_off: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> X: array<u32>;   // [rows, d]
@group(0) @binding(2) var<storage, read_write> Ids: array<i32>; // [n_ids]
@group(0) @binding(3) var<storage, read_write> O: array<u32>;   // [n_ids, d]

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let i = (wid.x + wid.y * nwg.x) * 256u + li;
    if i >= P.n {
        return;
    }
    let row = u32(Ids[P.i_off + i / P.d]);
    O[P.o_off + i] = X[P.x_off + row * P.d + i % P.d];
}
