"""What the `openai` client scripts share: the client for a `kiln serve` at BASE, a check that
prints one line and stops at the first failure, and a JSON GET of a non-OpenAI route."""

import json
import sys
import urllib.request

import openai


class Session:
    def __init__(self, base):
        self.base = base.rstrip("/")
        self.client = openai.OpenAI(base_url=self.base + "/v1", api_key="unused", max_retries=0, timeout=120)
        self.passed = 0

    def check(self, name, cond, detail=""):
        if not cond:
            print(f"FAIL {name}: {detail}")
            sys.exit(1)
        self.passed += 1
        print(f"ok {name}")

    def get(self, path):
        with urllib.request.urlopen(self.base + path, timeout=30) as r:
            return json.loads(r.read())

    def done(self):
        print(f"{self.passed} passed, 0 failed")
