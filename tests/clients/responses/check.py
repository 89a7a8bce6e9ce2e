#!/usr/bin/env python3
"""The Responses front door (/v1/responses) through real clients, against a running proxy.

  check.py --proxy http://127.0.0.1:PORT [--only NAME,...]

Clients: the OpenAI SDK's `responses.create` and `responses.stream()` (`get_final_response()`)
on the tool-call scenarios (the three seed text formats, two calls, text around a call,
reasoning, the backend's own structured calls); a two-turn function-call loop, stateless (the
whole history re-sent, `store: false`, as Codex does) and with `previous_response_id`; the OpenAI
Agents SDK running one tool through its Responses model (tracing disabled); the kept responses
(`responses.retrieve`, `responses.input_items.list`, `responses.delete`); and the error shapes
(invalid JSON, no `input`, an unknown `previous_response_id`, a backend cut mid-reply). Prints one
`PASS`/`FAIL` line per case; run.sh counts them. Exit status 1 when any failed.
"""

import argparse
import json
import os
import sys
import traceback
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "..", "scenarios.json"), encoding="utf-8") as f:
    SUITE = json.load(f)
BY_NAME = {s["name"]: s for s in SUITE["scenarios"]}
SYSTEM = "You are a weather assistant. Use the tools."
# Responses tools: the suite's functions, plus a hosted tool the proxy must drop (not refuse).
TOOLS = [
    {"type": "function", "name": t["function"]["name"], "description": t["function"]["description"],
     "parameters": t["function"]["parameters"], "strict": False}
    for t in SUITE["tools"]
] + [{"type": "web_search"}]
TOOL_SCENARIOS = ["hermes", "toolcall-line", "xml-function", "parallel", "text-around", "reasoning", "structured"]


def client(proxy):
    from openai import OpenAI
    return OpenAI(base_url=proxy + "/v1", api_key="unused", max_retries=0, timeout=30)


def summary(response):
    """(text, reasoning, calls as (name, parsed arguments)) of a Response object."""
    text, reasoning, calls = "", None, []
    for item in response.output:
        if item.type == "message":
            text += "".join(p.text for p in item.content if p.type == "output_text")
        elif item.type == "reasoning":
            reasoning = (reasoning or "") + "".join(c.text for c in (item.content or []))
        elif item.type == "function_call":
            calls.append((item.name, json.loads(item.arguments)))
    return text, reasoning, calls


def compare(s, response):
    e = s["expect"]
    text, reasoning, calls = summary(response)
    problems = []
    if response.status != "completed":
        problems.append("status %r" % response.status)
    if text != e.get("content", ""):
        problems.append("text %r, expected %r" % (text, e.get("content", "")))
    if response.output_text != text:
        problems.append("output_text %r differs from the message text" % response.output_text)
    want = [(c["name"], c["arguments"]) for c in e.get("calls", [])]
    if calls != want:
        problems.append("calls %r, expected %r" % (calls, want))
    if "reasoning" in e and reasoning != e["reasoning"]:
        problems.append("reasoning %r, expected %r" % (reasoning, e["reasoning"]))
    if response.model != s["name"]:
        problems.append("model %r, expected the name asked for" % response.model)
    u = response.usage
    if u is None or u.total_tokens != u.input_tokens + u.output_tokens or u.input_tokens <= 0:
        problems.append("usage %r" % (u,))
    return problems


def case_create(proxy, s):
    r = client(proxy).responses.create(model=s["name"], instructions=SYSTEM, input=s["user"], tools=TOOLS)
    return compare(s, r)


def case_stream(proxy, s):
    with client(proxy).responses.stream(model=s["name"], instructions=SYSTEM, input=s["user"], tools=TOOLS) as stream:
        kinds = [event.type for event in stream]
        r = stream.get_final_response()
    problems = compare(s, r)
    if kinds[:1] != ["response.created"] or kinds[-1:] != ["response.completed"]:
        problems.append("events start %r and end %r" % (kinds[:1], kinds[-1:]))
    return problems


def tool_outputs(s, response):
    return [{"type": "function_call_output", "call_id": item.call_id, "output": s["tool_result"]}
            for item in response.output if item.type == "function_call"]


def case_loop_stateless(proxy, s):
    c = client(proxy)
    history = [{"role": "user", "content": s["user"]}]
    first = c.responses.create(model=s["name"], instructions=SYSTEM, input=history, tools=TOOLS, store=False)
    outputs = tool_outputs(s, first)
    if not outputs:
        return ["no function_call in the first reply: %r" % first.output]
    history += [item.model_dump(exclude_none=True) for item in first.output] + outputs
    second = c.responses.create(model=s["name"], instructions=SYSTEM, input=history, tools=TOOLS, store=False)
    if second.output_text != s["expect"]["final_content"]:
        return ["answer %r, expected %r" % (second.output_text, s["expect"]["final_content"])]
    return []


def case_loop_previous_id(proxy, s):
    c = client(proxy)
    with c.responses.stream(model=s["name"], instructions=SYSTEM, input=s["user"], tools=TOOLS) as stream:
        first = stream.get_final_response()
    outputs = tool_outputs(s, first)
    if not outputs:
        return ["no function_call in the first reply: %r" % first.output]
    second = c.responses.create(model=s["name"], previous_response_id=first.id, input=outputs, tools=TOOLS)
    problems = []
    if second.output_text != s["expect"]["final_content"]:
        problems.append("answer %r, expected %r" % (second.output_text, s["expect"]["final_content"]))
    if second.previous_response_id != first.id:
        problems.append("previous_response_id echoed as %r" % second.previous_response_id)
    return problems


def case_agents(proxy, s, streamed):
    """The OpenAI Agents SDK: one function tool through OpenAIResponsesModel, tracing off."""
    import asyncio

    from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled
    from openai import AsyncOpenAI

    set_tracing_disabled(True)
    seen = []

    @function_tool
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        seen.append(city)
        return s["tool_result"]

    async def run():
        oc = AsyncOpenAI(base_url=proxy + "/v1", api_key="unused", max_retries=0, timeout=30)
        agent = Agent(name="weather", instructions=SYSTEM, tools=[get_weather],
                      model=OpenAIResponsesModel(model=s["name"], openai_client=oc))
        if streamed:
            result = Runner.run_streamed(agent, s["user"])
            async for _ in result.stream_events():
                pass
        else:
            result = await Runner.run(agent, s["user"])
        await oc.close()
        return result.final_output

    final = asyncio.run(run())
    problems = []
    if seen != ["Quito"]:
        problems.append("the tool ran with %r" % seen)
    if final != s["expect"]["final_content"]:
        problems.append("final output %r, expected %r" % (final, s["expect"]["final_content"]))
    return problems


def case_stored(proxy, s):
    """`responses.retrieve`, `responses.input_items.list` (paged by the SDK with `after`) and
    `responses.delete` on kept responses, whole and streamed; `store=False` keeps nothing."""
    import openai
    c = client(proxy)
    sent = [{"role": "user", "content": "Earlier question."},
            {"role": "assistant", "content": "Earlier answer."},
            {"role": "user", "content": s["user"]}]
    created = c.responses.create(model=s["name"], instructions=SYSTEM, input=sent, tools=TOOLS)
    with c.responses.stream(model=s["name"], instructions=SYSTEM, input=s["user"], tools=TOOLS) as stream:
        streamed = stream.get_final_response()
    problems = []
    got = c.responses.retrieve(created.id)
    if got.model_dump() != created.model_dump():
        problems.append("retrieve differs from create: %r vs %r" % (got, created))
    got = c.responses.retrieve(streamed.id)
    if (got.id, got.status, got.output_text, summary(got), got.usage) != (
            streamed.id, streamed.status, streamed.output_text, summary(streamed), streamed.usage):
        problems.append("retrieve differs from the stream's final response: %r vs %r" % (got, streamed))

    def texts(items):
        return [(i.type, i.role, "".join(p.text for p in i.content)) for i in items]

    want = [("message", m["role"], m["content"]) for m in sent]
    newest_first = texts(c.responses.input_items.list(created.id).data)
    if newest_first != want[::-1]:
        problems.append("input_items %r, expected %r" % (newest_first, want[::-1]))
    # One item a page: the SDK follows `after` through all three.
    paged = list(c.responses.input_items.list(created.id, order="asc", limit=1))
    if texts(paged) != want or len({i.id for i in paged}) != 3:
        problems.append("input_items paged %r, expected %r with distinct ids" % (texts(paged), want))

    c.responses.delete(created.id)
    try:
        c.responses.retrieve(created.id)
        problems.append("a deleted response was retrieved")
    except openai.NotFoundError as e:
        if (e.body or {}).get("code") != "not_found" or created.id not in (e.body or {}).get("message", ""):
            problems.append("retrieve after delete: %r" % e.body)
    try:
        c.responses.create(model=s["name"], input="x", previous_response_id=created.id)
        problems.append("a deleted response continued a conversation")
    except openai.BadRequestError as e:
        if (e.body or {}).get("code") != "previous_response_not_found":
            problems.append("previous_response_id after delete: %r" % e.body)
    unstored = c.responses.create(model=s["name"], input=s["user"], tools=TOOLS, store=False)
    for rid in (unstored.id, "resp_unknown"):
        try:
            c.responses.retrieve(rid)
            problems.append("retrieve(%s) found a response that was never kept" % rid)
        except openai.NotFoundError:
            pass
    return problems


def raw_post(proxy, body, stream=False):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(proxy + "/v1/responses", data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def case_errors(proxy, _s):
    import openai
    problems = []
    for body, code in [(b"{not json", "invalid_json"), ({"model": "hermes"}, "missing_input")]:
        status, text = raw_post(proxy, body)
        err = json.loads(text).get("error") or {}
        if status != 400 or err.get("code") != code or not err.get("message"):
            problems.append("%r -> %d %s" % (body, status, text[:200]))
    try:
        client(proxy).responses.create(model="hermes", input="x", previous_response_id="resp_unknown")
        problems.append("an unknown previous_response_id was accepted")
    except openai.BadRequestError as e:
        if (e.body or {}).get("code") != "previous_response_not_found":
            problems.append("unknown previous_response_id: %r" % e.body)
    return problems


def case_midstream(proxy, s):
    """The backend drops the connection mid-reply: the text so far, then `response.failed`."""
    status, text = raw_post(proxy, {"model": s["name"], "input": s["user"], "stream": True}, stream=True)
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    problems = []
    if status != 200 or not events:
        return ["status %d, %d events" % (status, len(events))]
    last = events[-1]
    if last["type"] != "response.failed" or last["response"]["error"]["code"] != "server_error":
        problems.append("last event %r" % last)
    partial = "".join(e.get("delta", "") for e in events if e["type"] == "response.output_text.delta")
    if partial != s["expect"]["partial_content"]:
        problems.append("text before the failure %r" % partial)
    if [e["sequence_number"] for e in events] != list(range(len(events))):
        problems.append("sequence numbers are not 0, 1, 2, …")
    return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--proxy", required=True)
    ap.add_argument("--backend", default="")
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))
    cases = []
    for name in TOOL_SCENARIOS:
        cases.append(("responses.create", name, case_create))
        cases.append(("responses.stream", name, case_stream))
    cases += [
        ("responses.create loop, stateless", "tool-loop", case_loop_stateless),
        ("responses loop, previous_response_id", "tool-loop", case_loop_previous_id),
        ("agents Runner.run", "tool-loop", lambda p, s: case_agents(p, s, False)),
        ("agents Runner.run_streamed", "tool-loop", lambda p, s: case_agents(p, s, True)),
        ("responses retrieve, input_items, delete", "hermes", case_stored),
        ("responses errors", "hermes", case_errors),
        ("responses raw stream", "midstream-error", case_midstream),
    ]
    failed = 0
    for label, name, fn in cases:
        if only and name not in only:
            continue
        try:
            problems = fn(args.proxy, BY_NAME[name])
        except Exception as e:  # a client raising is a failure of the case, reported with its cause
            problems = ["%s: %s" % (type(e).__name__, e), traceback.format_exc(limit=3)]
        if problems:
            failed += 1
            print("FAIL %s [%s]: %s" % (label, name, "; ".join(problems)), flush=True)
        else:
            print("PASS %s [%s]" % (label, name), flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
