#!/usr/bin/env python3
"""A managed fake model server for tests/managed.rs.

fake_server.py --port N --name NAME [--delay S] [--fail] [--hang] [--starts FILE]

Listens on 127.0.0.1:N after DELAY seconds ("loading"), answers /health, /v1/models and
/v1/chat/completions (a stream or a whole reply whose content is NAME; a user message
"slow:S" makes the reply take S seconds). --fail prints an error and exits 1 after the delay;
--hang never listens. --starts FILE gets one line per start (NAME and pid).
"""
import argparse
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--name", required=True)
p.add_argument("--delay", type=float, default=0.0)
p.add_argument("--fail", action="store_true")
p.add_argument("--hang", action="store_true")
p.add_argument("--starts")
a = p.parse_args()

if a.starts:
    with open(a.starts, "a") as f:
        f.write(f"{a.name} {os.getpid()}\n")
print(f"{a.name}: loading model", flush=True)
time.sleep(a.delay)
if a.fail:
    print(f"{a.name}: fatal: model weights not found", file=sys.stderr, flush=True)
    sys.exit(1)
while a.hang:
    time.sleep(60)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send_json(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            self.send_json(200, {"status": "ok"})
        elif self.path == "/v1/models":
            self.send_json(200, {"object": "list", "data": [{"id": a.name, "object": "model"}]})
        else:
            self.send_json(404, {"error": "not found"})

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        if self.path != "/v1/chat/completions":
            self.send_json(404, {"error": "not found"})
            return
        last = (body.get("messages") or [{}])[-1].get("content") or ""
        if isinstance(last, str) and last.startswith("slow:"):
            time.sleep(float(last[5:]))
        print(f"{a.name}: served {last}", flush=True)
        chunk = {
            "id": "c1",
            "object": "chat.completion.chunk",
            "model": a.name,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": a.name}, "finish_reason": None}],
        }
        end = {
            "id": "c1",
            "object": "chat.completion.chunk",
            "model": a.name,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        }
        frames = [f"data: {json.dumps(chunk)}\n\n", f"data: {json.dumps(end)}\n\n", "data: [DONE]\n\n"]
        payload = "".join(frames).encode()
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


server = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
print(f"{a.name}: listening on {a.port}", flush=True)
server.serve_forever()
