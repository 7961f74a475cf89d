"""A chat-completions server for tests: the OpenAI wire protocol on a free loopback port.

It answers as a model would, by running keel's local provider on the JSON payload the
gateway sent (so a run through it can be compared with the local provider's), in the shape
the request asked for: ``response_format`` json_schema / json_object content, or a forced
tool call; whole or as an SSE stream (with a usage chunk when ``stream_options`` asks).
Per model name it can inject a fault instead: ``5xx``, ``timeout`` (answers after the
client gave up), ``malformed`` (not JSON), ``violate`` (JSON that breaks the schema),
``empty`` (``{}``), ``truncated`` (a stream cut mid-answer), ``no_usage`` (valid, no usage).
Every request body is kept in ``requests`` for assertions. No network beyond 127.0.0.1.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from gateway.local import LocalProvider
from keel.types import Extraction, PlanProposal, TriageResult

SCHEMAS = {"TriageResult": ("triage", TriageResult), "Extraction": ("extract", Extraction),
           "PlanProposal": ("plan", PlanProposal)}
FAULTS = ("ok", "5xx", "timeout", "malformed", "violate", "empty", "truncated", "no_usage")


class ChatServer:
    """Start with ``with ChatServer() as srv:``; ``srv.base_url`` is the ``/v1`` endpoint."""

    def __init__(self, faults: dict[str, str] | None = None, *, delay_s: float = 3.0) -> None:
        self.faults: dict[str, str] = dict(faults or {})
        self.delay_s = delay_s
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> ChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def record(self, body: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(body)

    def calls_to(self, model: str) -> list[dict[str, Any]]:
        """Request bodies sent for ``model``."""
        return [r for r in self.requests if r.get("model") == model]


def answer_for(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(schema name, answer)``: keel's local provider on the payload of the request."""
    name = _schema_name(body)
    task, schema = SCHEMAS[name]
    payload = json.loads(next(m["content"] for m in body["messages"] if m["role"] == "user"))
    out, _usage = LocalProvider().complete(task, schema, "", payload)
    return name, out.model_dump(mode="json")


def _schema_name(body: dict[str, Any]) -> str:
    if body.get("tools"):
        return body["tools"][0]["function"]["name"]
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        return fmt["json_schema"]["name"]
    system = next(m["content"] for m in body["messages"] if m["role"] == "system")  # json_mode: schema in prompt
    schema = json.loads(system.split("matching this JSON Schema: ", 1)[1].splitlines()[0])
    props = set(schema.get("properties") or {})
    return "TriageResult" if "route" in props else "PlanProposal" if "actions" in props else "Extraction"


def _handler(server: ChatServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            server.record(body)
            fault = server.faults.get(str(body.get("model")), "ok")
            if fault == "5xx":
                return self._json(503, {"error": {"message": "model unavailable", "type": "server_error"}})
            if fault == "timeout":
                time.sleep(server.delay_s)
            name, answer = answer_for(body)
            if fault == "violate":
                answer = {"route": "billing", "confidence": 7, "reason_codes": ["made_up"]} if name == "TriageResult" \
                    else {"operation": "launch_rockets"} if name == "Extraction" \
                    else {"actions": [{"tool": "issue_refund", "args": {"order_id": 5}}], "rationale": "x"}
            text = {"malformed": '{"route": "billing", "confid', "empty": "{}"}.get(fault) or json.dumps(answer)
            usage = None if fault == "no_usage" else {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150}
            tools = bool(body.get("tools"))
            if body.get("stream"):
                return self._stream(body, name, text, tools, usage, truncated=fault == "truncated")
            message: dict[str, Any] = {"role": "assistant", "content": None if tools else text}
            if tools:
                message["tool_calls"] = [{"id": "call_1", "type": "function",
                                          "function": {"name": name, "arguments": text}}]
            reply: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()),
                                     "model": body.get("model"), "choices": [{"index": 0, "message": message,
                                     "finish_reason": "tool_calls" if tools else "stop"}]}
            if usage:
                reply["usage"] = usage
            self._json(200, reply)

        def _json(self, status: int, obj: dict[str, Any]) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _stream(self, body: dict[str, Any], name: str, text: str, tools: bool, usage: dict[str, Any] | None,
                    *, truncated: bool) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            pieces = [text[i:i + 8] for i in range(0, len(text), 8)]
            if truncated:
                pieces = pieces[: max(1, len(pieces) // 2)]
            for i, piece in enumerate(pieces):
                if tools:
                    call: dict[str, Any] = {"index": 0, "function": {"arguments": piece}}
                    if i == 0:
                        call.update({"id": "call_1", "type": "function"})
                        call["function"]["name"] = name
                    delta: dict[str, Any] = {"tool_calls": [call]}
                else:
                    delta = {"content": piece}
                if i == 0:
                    delta["role"] = "assistant"
                self._event({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": body.get("model"),
                             "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
            if truncated:
                self.close_connection = True
                return
            self._event({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": body.get("model"),
                         "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls" if tools else "stop"}]})
            if usage and (body.get("stream_options") or {}).get("include_usage"):
                self._event({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": body.get("model"),
                             "choices": [], "usage": usage})
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
            self.close_connection = True

        def _event(self, obj: dict[str, Any]) -> None:
            self.wfile.write(f"data: {json.dumps(obj)}\n\n".encode())
            self.wfile.flush()

    return Handler
