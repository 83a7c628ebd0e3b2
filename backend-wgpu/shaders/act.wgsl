// act.wgsl — the GLU activations glu.wgsl and the GEMV's fused GLU (gemv_many.wgsl) share.
// ACT 0 = SiLU x·σ(x), 1 = GELU-tanh.

override ACT: u32 = 0u;

fn act(x: f32) -> f32 {
    if ACT == 0u {
        return x / (1.0 + exp(-x));
    }
    // 0.5·x·(1 + tanh(t)) = x·σ(2t): no cancellation in the negative tail (1 + tanh(t) there
    // loses all digits in f32), and exp overflowing to inf gives the right limit (±0).
    let t = 0.7978845608028654 * (x + 0.044715 * x * x * x);
    return x / (1.0 + exp(-2.0 * t));
}
