"""Drive a `kiln serve` of several models with the official `openai` client.

Usage: openai_registry.py BASE_URL EXPECT_JSON
EXPECT_JSON: {"prompt": str, "max_tokens": int, "models": {name: {"text": greedy text from
`kiln run`, "alias": the MODEL argument}}}. Exits 0 when every check passes; prints one line per
check. Run by examples/tests/serve_registry.rs.
"""

import json
import sys

import openai
from openai_common import Session

S = Session(sys.argv[1])
BASE, client, check, get = S.base, S.client, S.check, S.get
EXPECT = json.load(open(sys.argv[2]))
NAMES = sorted(EXPECT["models"])

ids = sorted(m.id for m in client.models.list().data)
check("models.list names every model", ids == NAMES, ids)

PROMPT, N = EXPECT["prompt"], EXPECT["max_tokens"]
texts = {}
for name in NAMES:
    want = EXPECT["models"][name]["text"]
    kw = dict(prompt=PROMPT, max_tokens=N, temperature=0, extra_body={"ignore_eos": True})
    r = client.completions.create(model=name, **kw)
    check(f"{name}: completion answered by {name}", r.model == name, r.model)
    check(f"{name}: greedy text equals kiln run's", r.choices[0].text == want, (r.choices[0].text, want))
    texts[name] = r.choices[0].text
    s = client.completions.create(model=name, stream=True, **kw)
    check(f"{name}: streamed text", "".join(c.choices[0].text for c in s if c.choices) == want, want)
    alias = EXPECT["models"][name]["alias"]
    r = client.completions.create(model=alias, **kw)
    check(f"{name}: alias {alias}", r.model == name and r.choices[0].text == want, r)
    r = client.chat.completions.create(
        model=name, messages=[{"role": "user", "content": "Say something."}], max_tokens=4, temperature=0
    )
    check(f"{name}: chat", r.object == "chat.completion" and r.model == name and r.usage.completion_tokens <= 4, r)
check("the models answer differently", len(set(texts.values())) == len(texts), texts)

try:
    client.completions.create(model="no-such-model", prompt=PROMPT, max_tokens=2)
    check("unknown model", False, "no error")
except openai.NotFoundError as e:
    msg = e.body.get("message", "") if isinstance(e.body, dict) else str(e.body)
    check("unknown model: 404 listing the names", e.status_code == 404 and all(f"'{n}'" in msg for n in NAMES), e.body)

h = get("/health")
states = {m["name"]: m["state"] for m in h["models"]}
check("health: every model ready", all(states[n] == "ready" for n in NAMES), h)
used = sum(b["used"] for b in h["budget"].values())
check("health: used = sum of the models' bytes", used == sum(m["bytes"] for m in h["models"]), h)
check("health: no request left", h["running"] == 0 and h["blocks"]["in_use"] == 0, h)

S.done()
