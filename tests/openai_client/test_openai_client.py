"""Drives a live `duet serve` (the 0.5B verifier) with the official `openai` Python package.

Chat and completions, streamed and not, usage fields, a stop sequence, error cases. Greedy outputs
must equal `duet generate --json` for the same prompt. Run by scripts/test-openai.sh (from
scripts/test.sh) with DUET_BIN (the `duet` binary) and DUET_TEST_MODEL (the GGUF file) set.
"""

import json
import os
import queue
import subprocess
import threading
import time
import unittest
import urllib.request

import openai

DUET = os.environ["DUET_BIN"]
MODEL_PATH = os.environ["DUET_TEST_MODEL"]
API_KEY = "duet-test-key"
MAX_TOKENS = 24
CHAT_PROMPT = "Write a Python function that checks whether a number is prime."
TEXT_PROMPT = "def fibonacci(n):\n"

SERVER = None


def duet_generate(prompt, chat, mode="ar"):
    """What `duet generate --json` answers, greedy, verifier only."""
    args = [DUET, "generate", "--verifier-model", MODEL_PATH, "--prompt", prompt, "--json",
            "--max-tokens", str(MAX_TOKENS), "--mode", mode]
    if chat:
        args.append("--chat")
    out = subprocess.run(args, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def finish_reason(stop_reason):
    return {"eos": "stop", "max_tokens": "length", "context_full": "length"}[stop_reason]


class Server:
    """`duet serve` on a free loopback port, with an API key."""

    def __init__(self):
        self.proc = subprocess.Popen(
            [DUET, "serve", "--verifier-model", MODEL_PATH, "--http-listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0",
             "--api-key", API_KEY, "--max-sessions", "2"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.log = []
        lines = queue.Queue()

        def drain():
            for line in self.proc.stderr:
                self.log.append(line)
                lines.put(line)
            lines.put(None)

        threading.Thread(target=drain, daemon=True).start()
        self.base = None
        deadline = time.time() + 300
        while self.base is None:
            line = lines.get(timeout=max(1, deadline - time.time()))
            if line is None:
                raise RuntimeError("duet serve exited:\n" + "".join(self.log))
            if "listening on http://" in line:
                self.base = line.split("listening on ")[1].split()[0]  # http://127.0.0.1:PORT/v1
        root = self.base[: -len("/v1")]
        while True:
            try:
                with urllib.request.urlopen(root + "/health") as r:
                    if r.status == 200:
                        break
            except Exception:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("duet serve never became healthy:\n" + "".join(self.log))
                time.sleep(0.5)
        self.root = root

    def client(self, key=API_KEY):
        return openai.OpenAI(base_url=self.base, api_key=key, max_retries=0, timeout=900)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def setUpModule():
    global SERVER
    SERVER = Server()


def tearDownModule():
    if SERVER is not None:
        SERVER.stop()


class OpenAIClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.client = SERVER.client()
        cls.model = cls.client.models.list().data[0].id
        cls.chat_ref = duet_generate(CHAT_PROMPT, chat=True)
        cls.text_ref = duet_generate(TEXT_PROMPT, chat=False)

    def check_usage(self, usage, ref):
        self.assertEqual(usage.completion_tokens, len(ref["token_ids"]))
        self.assertEqual(usage.prompt_tokens, ref["stats"]["prompt_tokens"])
        self.assertEqual(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens)
        details = usage.completion_tokens_details
        self.assertIsInstance(details.accepted_prediction_tokens, int)
        self.assertIsInstance(details.rejected_prediction_tokens, int)

    def test_models_lists_the_verifier(self):
        self.assertEqual(self.model, os.path.basename(MODEL_PATH).removesuffix(".gguf"))

    def test_chat_equals_duet_generate(self):
        r = self.client.chat.completions.create(
            model=self.model, messages=[{"role": "user", "content": CHAT_PROMPT}],
            max_tokens=MAX_TOKENS, temperature=0)
        self.assertEqual(r.choices[0].message.content, self.chat_ref["text"])
        self.assertEqual(r.choices[0].message.role, "assistant")
        self.assertEqual(r.choices[0].finish_reason, finish_reason(self.chat_ref["stop_reason"]))
        self.check_usage(r.usage, self.chat_ref)

    def test_streamed_chat_equals_duet_generate_and_ends_with_usage(self):
        stream = self.client.chat.completions.create(
            model=self.model, messages=[{"role": "user", "content": CHAT_PROMPT}],
            max_completion_tokens=MAX_TOKENS, stream=True, stream_options={"include_usage": True},
            extra_body={"mode": "hybrid", "drafter": "ngram", "block_size": 4})
        chunks = list(stream)
        self.assertEqual(len({c.id for c in chunks}), 1, "one id on every chunk")
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertEqual(text, self.chat_ref["text"])
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        self.assertEqual(finishes, [finish_reason(self.chat_ref["stop_reason"])])
        self.assertEqual(chunks[-1].choices, [])
        self.check_usage(chunks[-1].usage, self.chat_ref)

    def test_completion_equals_duet_generate(self):
        r = self.client.completions.create(model=self.model, prompt=TEXT_PROMPT, max_tokens=MAX_TOKENS, temperature=0)
        self.assertEqual(r.choices[0].text, self.text_ref["text"])
        self.assertEqual(r.choices[0].finish_reason, finish_reason(self.text_ref["stop_reason"]))
        self.check_usage(r.usage, self.text_ref)

    def test_streamed_completion_equals_duet_generate(self):
        stream = self.client.completions.create(
            model=self.model, prompt=TEXT_PROMPT, max_tokens=MAX_TOKENS, stream=True,
            extra_body={"mode": "ar"})
        chunks = list(stream)
        self.assertEqual(len({c.id for c in chunks}), 1)
        self.assertEqual("".join(c.choices[0].text for c in chunks if c.choices), self.text_ref["text"])

    def test_a_stop_sequence_ends_the_text_before_it(self):
        full = self.text_ref["text"]
        stop = full[len(full) // 2: len(full) // 2 + 3]
        self.assertTrue(stop.strip(), f"pick a visible stop string from {full!r}")
        r = self.client.completions.create(model=self.model, prompt=TEXT_PROMPT, max_tokens=MAX_TOKENS, stop=[stop])
        self.assertEqual(r.choices[0].text, full[: full.index(stop)])
        self.assertEqual(r.choices[0].finish_reason, "stop")

    def test_seeded_sampling_repeats(self):
        ask = dict(model=self.model, messages=[{"role": "user", "content": "Name a fruit."}],
                   max_tokens=12, temperature=0.9, top_p=0.95, seed=11)
        a = self.client.chat.completions.create(**ask)
        b = self.client.chat.completions.create(**ask)
        self.assertTrue(a.choices[0].message.content)
        self.assertEqual(a.choices[0].message.content, b.choices[0].message.content)

    def test_errors_come_back_as_openai_errors(self):
        with self.assertRaises(openai.BadRequestError) as e:
            self.client.completions.create(model=self.model, prompt="x", n=2)
        self.assertIn("`n`", str(e.exception))
        with self.assertRaises(openai.BadRequestError) as e:
            self.client.chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": "hi"}], temperature=2.5)
        self.assertIn("`temperature`", str(e.exception))
        with self.assertRaises(openai.NotFoundError):
            self.client.completions.create(model="gpt-4o", prompt="x")
        with self.assertRaises(openai.AuthenticationError):
            SERVER.client(key="wrong").models.list()


if __name__ == "__main__":
    unittest.main(verbosity=2)
