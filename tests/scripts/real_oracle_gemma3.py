# An independent f32 (f64 attention) numpy forward of gemma3-270m from its GGUF (weights
# dequantized by gguf-py), teacher-forced over one case of shared/testdata/real/gemma3-270m.json:
# the log-probabilities of llama.cpp's top-5 at every generated position. It adjudicates entries
# where kiln and llama.cpp disagree (llama.cpp computes with Q8 activations and an f16 KV cache).
# Written from MODELS.md §4.7/§5 (sliding layers il % 6 < 5, window 512, local base 1e4, norms
# with +1 baked in, sandwich norms, GeGLU tanh, embedding scale sqrt(H), tied output).
#   python3 -m venv v && v/bin/pip install numpy gguf
#   v/bin/python tests/scripts/real_oracle_gemma3.py MODEL.gguf ../shared/testdata/real/gemma3-270m.json long_context_2k > out.json
# (54 s on the 2-core dev machine.) The JSON goes into models/tests/data/real_oracle.json.
import json, sys, numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
path = sys.argv[1]; ref = json.load(open(sys.argv[2])); case = sys.argv[3]
r = GGUFReader(path)
kv = {f.name: f for f in r.fields.values()}
def val(k):
    f = kv[k]; return f.parts[f.data[0]].tolist()[0] if f.data else None
T = {t.name: t for t in r.tensors}
def W(name):
    t = T[name]; a = dequantize(t.data, t.tensor_type)
    return np.asarray(a, dtype=np.float32).reshape([int(x) for x in reversed(t.shape.tolist())] if a.ndim == 1 and len(t.shape) > 1 else a.shape)
H = int(val('gemma3.embedding_length')); L = int(val('gemma3.block_count'))
nh = int(val('gemma3.attention.head_count')); nkv = int(val('gemma3.attention.head_count_kv'))
hd = int(val('gemma3.attention.key_length')); eps = float(val('gemma3.attention.layer_norm_rms_epsilon'))
base = float(val('gemma3.rope.freq_base')); win = int(val('gemma3.attention.sliding_window'))
print("H", H, "L", L, "heads", nh, nkv, "hd", hd, "eps", eps, "base", base, "win", win, file=sys.stderr)
c = [c for c in ref['greedy'] if c['name'] == case][0]
ids = c['prompt_token_ids'] + c['generated_token_ids']; P = len(c['prompt_token_ids'])
steps = c['per_step_summary']; n = len(ids)
E = W('token_embd.weight')  # [V, H]
x = E[ids] * np.float32(np.sqrt(H))
def rms(v, w): return (v / np.sqrt((v.astype(np.float64) ** 2).mean(-1, keepdims=True) + eps)).astype(np.float32) * w
def rope(t, theta):  # t [n, heads, hd], neox
    half = hd // 2; inv = theta ** (-np.arange(half, dtype=np.float64) * 2 / hd)
    ang = np.arange(n)[:, None] * inv[None, :]; cos = np.cos(ang)[:, None, :]; sin = np.sin(ang)[:, None, :]
    a, b = t[..., :half].astype(np.float64), t[..., half:].astype(np.float64)
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], -1).astype(np.float32)
pos = np.arange(n)
for l in range(L):
    g = lambda s: W(f'blk.{l}.{s}.weight')
    swa = (l % 6) < 5
    h = rms(x, g('attn_norm'))
    q = (h @ g('attn_q').T).reshape(n, nh, hd); k = (h @ g('attn_k').T).reshape(n, nkv, hd); v = (h @ g('attn_v').T).reshape(n, nkv, hd)
    q = rms(q, g('attn_q_norm')); k = rms(k, g('attn_k_norm'))
    theta = 10000.0 if swa else base
    q = rope(q, theta); k = rope(k, theta)
    mask = pos[None, :] <= pos[:, None]
    if swa: mask &= pos[None, :] > pos[:, None] - win
    out = np.zeros((n, nh, hd), np.float32)
    for hh in range(nh):
        kk = k[:, hh * nkv // nh]; vv = v[:, hh * nkv // nh]
        s = (q[:, hh].astype(np.float64) @ kk.T.astype(np.float64)) / np.sqrt(hd)
        s = np.where(mask, s, -np.inf); s -= s.max(-1, keepdims=True); p = np.exp(s); p /= p.sum(-1, keepdims=True)
        out[:, hh] = (p @ vv.astype(np.float64)).astype(np.float32)
    a = out.reshape(n, nh * hd) @ g('attn_output').T
    x = x + rms(a, g('post_attention_norm'))
    h = rms(x, g('ffn_norm'))
    gt = h @ g('ffn_gate').T; up = h @ g('ffn_up').T
    act = 0.5 * gt * (1 + np.tanh(np.sqrt(2 / np.pi) * (gt + 0.044715 * gt ** 3)))
    f = (act * up) @ g('ffn_down').T
    x = x + rms(f, g('post_ffw_norm'))
    print("layer", l, "swa" if swa else "global", file=sys.stderr)
xn = rms(x, W('output_norm.weight'))
rows = []
for j, st in enumerate(steps):
    row = xn[P - 1 + j].astype(np.float64) @ E.T.astype(np.float64)
    m = row.max(); lse = m + np.log(np.exp(row - m).sum())
    rows.append({"pos": j, "argmax": int(row.argmax()),
                 "top5": [[t[0], round(float(row[t[0]] - lse), 4)] for t in st['top5_id_logprob_prob']]})
print(json.dumps({"model": "gemma3-270m", "case": case, "script": "tests/scripts/real_oracle_gemma3.py",
                  "steps": rows}, indent=1))
