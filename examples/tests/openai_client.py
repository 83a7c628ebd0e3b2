"""Drive a running `kiln serve` with the official `openai` client.

Usage: openai_client.py BASE_URL   (e.g. http://127.0.0.1:PORT)
Exits 0 when every check passes; prints one line per check. Run by examples/tests/serve_openai.rs.
"""

import json
import sys
import time
import urllib.error
import urllib.request

import openai
from openai_common import Session

S = Session(sys.argv[1])
BASE, client, check, get = S.base, S.client, S.check, S.get


def post_raw(path, body):
    req = urllib.request.Request(BASE + path, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


# /v1/models and /health
models = client.models.list()
MODEL = models.data[0].id
check("models.list", len(models.data) == 1 and MODEL, models)
h = get("/health")
check("health", h["status"] == "ok" and h["blocks"]["total"] > 0, h)

MSGS = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say something."}]

# chat, non-streaming, greedy
r = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=8, temperature=0)
c = r.choices[0]
check("chat object", r.object == "chat.completion" and c.message.role == "assistant", r)
u = r.usage
check("chat usage", u.completion_tokens <= 8 and u.prompt_tokens > 5 and u.total_tokens == u.prompt_tokens + u.completion_tokens, u)
check("chat finish_reason", c.finish_reason in ("stop", "length") and (c.finish_reason == "stop" or u.completion_tokens == 8), c)
chat_text = c.message.content

# chat, streaming: same greedy text, chunk objects, usage chunk at the end
stream = client.chat.completions.create(
    model=MODEL, messages=MSGS, max_tokens=8, temperature=0, stream=True, stream_options={"include_usage": True}
)
parts, finish, usage, objects = [], None, None, set()
for ch in stream:
    objects.add(ch.object)
    if ch.usage is not None:
        usage = ch.usage
    for ci in ch.choices:
        if ci.delta.content:
            parts.append(ci.delta.content)
        if ci.finish_reason:
            finish = ci.finish_reason
check("chat stream text", "".join(parts) == chat_text, ("".join(parts), chat_text))
check("chat stream chunks", objects == {"chat.completion.chunk"} and finish == c.finish_reason, (objects, finish))
check("chat stream usage", usage is not None and usage.completion_tokens == u.completion_tokens, usage)

# completions, greedy, then stop strings cut the same text
PROMPT = "Once upon a time"
r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0)
full = r.choices[0].text
check("completion object", r.object == "text_completion" and r.usage.completion_tokens <= 24, r)
stream = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0, stream=True)
check("completion stream text", "".join(ch.choices[0].text for ch in stream if ch.choices) == full, full)
if len(full) >= 6:
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    want = full[: full.find(stop)]
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0, stop=[stop, "\u2603never"])
    check("stop string", r.choices[0].text == want and r.choices[0].finish_reason == "stop", (stop, want, r.choices[0]))
    stream = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0, stop=stop, stream=True)
    check("stop string streamed", "".join(ch.choices[0].text for ch in stream if ch.choices) == want, want)
else:
    print(f"note: greedy text {full!r} too short for the stop-string check")

# max_tokens, seeded sampling, penalties
r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, temperature=0)
check("max_tokens", r.usage.completion_tokens <= 3 and (r.choices[0].finish_reason == "stop" or r.usage.completion_tokens == 3), r)
kw = dict(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=1.3, top_p=0.9, seed=7, presence_penalty=0.5, frequency_penalty=0.3)
a = client.completions.create(**kw, extra_body={"top_k": 50, "min_p": 0.01}).choices[0].text
b = client.completions.create(**kw, extra_body={"top_k": 50, "min_p": 0.01}).choices[0].text
check("seeded sampling reproducible", a == b, (a, b))

# malformed requests: 400 with OpenAI error JSON; unknown model: 404
for name, kwargs, param in [
    ("temperature out of range", dict(temperature=5), "temperature"),
    ("n = 2", dict(n=2), "n"),
    ("max_tokens 0", dict(max_tokens=0), "max_tokens"),
    ("bad stop", dict(stop=[1, 2]), "stop"),
]:
    try:
        client.chat.completions.create(model=MODEL, messages=MSGS, **kwargs)
        check(name, False, "no error")
    except openai.BadRequestError as e:
        err = e.body if isinstance(e.body, dict) else {}
        err = err.get("error", err)
        check(name, e.status_code == 400 and err.get("type") == "invalid_request_error" and err.get("param") == param, e.body)
try:
    client.chat.completions.create(model=MODEL, messages=[])
    check("empty messages", False, "no error")
except openai.BadRequestError as e:
    check("empty messages", e.status_code == 400, e)
try:
    client.chat.completions.create(model="no-such-model", messages=MSGS)
    check("unknown model", False, "no error")
except openai.NotFoundError as e:
    check("unknown model", e.status_code == 404, e)
status, body = post_raw("/v1/chat/completions", b"{not json")
check("invalid JSON", status == 400 and body["error"]["type"] == "invalid_request_error" and "message" in body["error"], body)
status, body = post_raw("/v1/completions", json.dumps({"model": MODEL}).encode())
check("missing prompt", status == 400 and body["error"]["param"] == "prompt", body)

# cancellation: close a stream mid-way; the engine frees the request's blocks
before = get("/health")
# 1900 tokens past EOS take seconds on this server (--ctx 2048): the close comes long before the end.
stream = client.completions.create(
    model=MODEL, prompt=PROMPT, max_tokens=1900, temperature=0, stream=True, extra_body={"ignore_eos": True}
)
got = 0
for ch in stream:
    got += 1
    if got == 3:
        break
stream.close()
deadline = time.time() + 20
h = get("/health")
while time.time() < deadline and (h["running"] > 0 or h["blocks"]["in_use"] > 0 or h["cancelled"] <= before["cancelled"]):
    time.sleep(0.1)
    h = get("/health")
check("cancel frees blocks", h["running"] == 0 and h["blocks"]["in_use"] == 0 and h["cancelled"] > before["cancelled"], h)
b = h["blocks"]
check("block accounting", b["free"] + b["cached"] + b["in_use"] == b["total"], b)

S.done()
