"""A run's stream as LangGraph Server sends it: the worker's side.

The worker runs a graph with LangGraph's own stream modes and turns every chunk into the
events LangGraph Server's SSE carries (names and payload shapes of its API reference),
stored through :mod:`engine.queue.events` so any server can serve the stream, and a
client that reconnects with ``Last-Event-ID`` gets the rest from whichever worker ran it:

* ``values``, ``updates``, ``custom``, ``tasks``, ``checkpoints`` pass through; ``debug``
  payloads get their ``checkpoint``/``parent_checkpoint`` fields;
* ``messages-tuple`` is LangGraph's ``messages`` mode as ``[message, metadata]`` pairs;
  ``messages`` sends ``messages/metadata`` once per message, then ``messages/partial``
  with the message accumulated so far (``messages/complete`` for whole messages);
* ``events`` is LangChain's ``astream_events`` v2 vocabulary (``on_chain_start``,
  ``on_chat_model_stream``, …), collected by :class:`EventsHandler` (the worker runs graphs
  synchronously on synchronous checkpointers, where ``astream_events`` cannot run);
* with ``stream_subgraphs`` a subgraph's events are named ``MODE|NAMESPACE``.

Configs in payloads are cut to their checkpoint keys: keel's own run configuration (who
asked, the worker's lease) is not the client's to read.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage, BaseMessageChunk

from engine.jsonable import jsonable

__all__ = [
    "SERVER_STREAM_MODES",
    "graph_modes",
    "ServerStream",
    "EventsHandler",
    "public_config",
    "stored_events",
]

SERVER_STREAM_MODES = ("values", "updates", "messages", "messages-tuple", "events", "debug", "custom", "tasks",
                       "checkpoints")
"""The stream modes of LangGraph Server's run API that keel produces."""

_NATIVE = {"values", "updates", "debug", "custom", "tasks", "checkpoints"}
_CHECKPOINT_KEYS = ("thread_id", "checkpoint_ns", "checkpoint_id", "checkpoint_map")
_PRIVATE_METADATA = ("lease_owner",)
_FLUSH_S = 0.05
"""How long token-sized events (messages, custom, events) wait to be stored together."""


def graph_modes(requested: Iterable[str]) -> list[str]:
    """LangGraph stream modes to run a graph with for the requested server modes.

    ``updates`` is always on (interrupts arrive there; LangGraph Server sends them as a
    ``values`` event when only ``values`` was asked for) and so is ``values``."""
    modes = {"values", "updates"}
    for m in requested:
        if m in _NATIVE:
            modes.add(m)
        elif m in ("messages", "messages-tuple"):
            modes.add("messages")
    return sorted(modes)


def public_config(cfg: Any) -> dict[str, Any] | None:
    """A run config cut to what identifies a checkpoint."""
    if not isinstance(cfg, dict):
        return None
    conf = cfg.get("configurable") or {}
    return {"configurable": {k: conf[k] for k in _CHECKPOINT_KEYS if k in conf}}


def _checkpoint_of(cfg: Any) -> dict[str, Any] | None:
    conf = (cfg or {}).get("configurable") or {}
    if not conf.get("thread_id") or not conf.get("checkpoint_id"):
        return None
    out = {"thread_id": conf["thread_id"], "checkpoint_id": conf["checkpoint_id"],
           "checkpoint_ns": conf.get("checkpoint_ns") or ""}
    if "checkpoint_map" in conf:
        out["checkpoint_map"] = conf["checkpoint_map"]
    return out


def _public_metadata(meta: Any) -> Any:
    if isinstance(meta, dict):
        return {k: v for k, v in meta.items() if k not in _PRIVATE_METADATA}
    return meta


def _checkpoint_payload(payload: Any) -> Any:
    """A ``checkpoints``/``debug`` checkpoint payload with public configs (and, as LangGraph
    Server adds them, ``checkpoint``/``parent_checkpoint`` and each task's ``checkpoint``)."""
    if not isinstance(payload, dict):
        return payload
    out = dict(payload)
    out["checkpoint"] = _checkpoint_of(payload.get("config"))
    out["parent_checkpoint"] = _checkpoint_of(payload.get("parent_config"))
    out["config"] = public_config(payload.get("config"))
    out["parent_config"] = public_config(payload.get("parent_config"))
    tasks = []
    for t in payload.get("tasks") or ():
        t = dict(t)
        state = t.pop("state", None)
        if isinstance(state, dict) and state.get("configurable"):
            t["checkpoint"] = _checkpoint_of(state)
        tasks.append(t)
    out["tasks"] = tasks
    return out


class ServerStream:
    """Turns LangGraph stream chunks into stored server events, in order.

    ``store(events)`` appends ``[(event, data)]`` to the run's stored stream. Token-sized
    events are buffered up to :data:`_FLUSH_S` so a streamed answer is not one database
    round trip per token; every other event flushes the buffer first, so order holds."""

    def __init__(self, requested: Iterable[str], store: Callable[[list[tuple[str, Any]]], None], *,
                 subgraphs: bool = False) -> None:
        self.requested = set(requested)
        self.subgraphs = subgraphs
        self._store = store
        self._buffer: list[tuple[str, Any]] = []
        self._since = 0.0
        self._messages: dict[str, BaseMessage] = {}
        self._lock = threading.Lock()

    # -- buffering -------------------------------------------------------------------
    def emit(self, events: list[tuple[str, Any]], *, small: bool = False) -> None:
        """Queue events for storage; ``small`` ones may wait a moment for company."""
        if not events:
            return
        with self._lock:
            if not self._buffer:
                self._since = time.monotonic()
            self._buffer.extend(events)
            due = not small or time.monotonic() - self._since >= _FLUSH_S
        if due:
            self.flush()

    def flush(self) -> None:
        """Store what is buffered."""
        with self._lock:
            events, self._buffer = self._buffer, []
        if events:
            self._store(events)

    # -- LangGraph chunks -------------------------------------------------------------
    def _name(self, mode: str, ns: tuple[str, ...]) -> str:
        return f"{mode}|{'|'.join(ns)}" if ns else mode

    def chunk(self, ns: tuple[str, ...], mode: str, chunk: Any) -> None:
        """One chunk of ``graph.stream(..., subgraphs=True)``."""
        if ns and not self.subgraphs:
            return
        if mode == "messages":
            self.emit(self._message_events(ns, chunk), small=True)
        elif mode == "custom":
            if "custom" in self.requested:
                self.emit([(self._name(mode, ns), jsonable(chunk))], small=True)
        elif mode == "updates":
            if "updates" in self.requested:
                self.emit([(self._name(mode, ns), jsonable(chunk))])
            elif "values" in self.requested and isinstance(chunk, dict) and chunk.get("__interrupt__"):
                # LangGraph Server: an interrupt reaches a values-only stream as a values event
                self.emit([(self._name("values", ns), jsonable(chunk))])
        elif mode == "debug":
            if "debug" in self.requested:
                data = dict(chunk) if isinstance(chunk, dict) else chunk
                if isinstance(data, dict) and data.get("type") == "checkpoint":
                    data["payload"] = _checkpoint_payload(data.get("payload"))
                self.emit([(self._name(mode, ns), jsonable(data))])
        elif mode == "checkpoints":
            if "checkpoints" in self.requested:
                self.emit([(self._name(mode, ns), jsonable(_checkpoint_payload(chunk)))])
        elif mode in self.requested:
            self.emit([(self._name(mode, ns), jsonable(chunk))])

    def _message_events(self, ns: tuple[str, ...], chunk: Any) -> list[tuple[str, Any]]:
        msg, meta = chunk
        meta = _public_metadata(meta)
        out: list[tuple[str, Any]] = []
        if "messages-tuple" in self.requested:
            out.append((self._name("messages", ns), [jsonable(msg), jsonable(meta)]))
        if "messages" in self.requested and isinstance(msg, BaseMessage):
            mid = msg.id or ""
            seen = self._messages.get(mid)
            if seen is None:
                self._messages[mid] = msg
                out.append(("messages/metadata", {mid: {"metadata": jsonable(meta)}}))
            elif isinstance(seen, BaseMessageChunk) and isinstance(msg, BaseMessageChunk):
                self._messages[mid] = seen + msg
            else:
                self._messages[mid] = msg
            kind = "messages/partial" if isinstance(msg, BaseMessageChunk) else "messages/complete"
            out.append((kind, [jsonable(self._messages[mid])]))
        return out


class EventsHandler(BaseCallbackHandler):
    """LangChain callbacks as ``astream_events`` v2 events (stream mode ``events``).

    Each event: ``{"event", "name", "run_id", "parent_ids", "tags", "metadata", "data"}``,
    ``parent_ids`` from the root run down to the direct parent."""

    run_inline = True

    # LangChain's streaming-handler protocol: with one of these among its callbacks a chat
    # model streams its tokens (as under ``astream_events``); outputs pass through untouched
    def tap_output_iter(self, run_id: UUID, output: Any) -> Any:
        return output

    def tap_output_aiter(self, run_id: UUID, output: Any) -> Any:
        return output

    def __init__(self, stream: ServerStream) -> None:
        self.stream = stream
        self._parents: dict[UUID, UUID | None] = {}
        self._runs: dict[UUID, tuple[str, list[str], dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def _parent_ids(self, parent: UUID | None) -> list[str]:
        chain: list[str] = []
        while parent is not None and len(chain) < 100:
            chain.append(str(parent))
            parent = self._parents.get(parent)
        return chain[::-1]

    def _start(self, kind: str, name: str, run_id: UUID, parent: UUID | None, tags: list[str] | None,
               metadata: dict[str, Any] | None, data: dict[str, Any]) -> None:
        with self._lock:
            self._parents[run_id] = parent
            self._runs[run_id] = (name, list(tags or ()), _public_metadata(dict(metadata or {})))
        self._send(f"on_{kind}_start", run_id, data)

    def _send(self, event: str, run_id: UUID, data: dict[str, Any], *, end: bool = False) -> None:
        with self._lock:
            name, tags, meta = self._runs.get(run_id, ("", [], {}))
            parents = self._parent_ids(self._parents.get(run_id))
            if end:
                self._runs.pop(run_id, None)
        self.stream.emit([("events", jsonable({"event": event, "name": name, "run_id": str(run_id),
                                                "parent_ids": parents, "tags": tags, "metadata": meta,
                                                "data": data}))], small=True)

    @staticmethod
    def _name(serialized: dict[str, Any] | None, kwargs: dict[str, Any]) -> str:
        if kwargs.get("name"):
            return str(kwargs["name"])
        serialized = serialized or {}
        return str(serialized.get("name") or (serialized.get("id") or ["unknown"])[-1])

    # chains (the graph, its nodes)
    def on_chain_start(self, serialized: dict[str, Any] | None, inputs: Any, *, run_id: UUID,
                       parent_run_id: UUID | None = None, tags: list[str] | None = None,
                       metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self._start("chain", self._name(serialized, kwargs), run_id, parent_run_id, tags, metadata, {"input": inputs})

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._send("on_chain_end", run_id, {"output": outputs}, end=True)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._send("on_chain_error", run_id, {"error": f"{type(error).__name__}: {error}"}, end=True)

    # chat models (the model gateway's calls)
    def on_chat_model_start(self, serialized: dict[str, Any] | None, messages: list[list[BaseMessage]], *,
                            run_id: UUID, parent_run_id: UUID | None = None, tags: list[str] | None = None,
                            metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self._start("chat_model", self._name(serialized, kwargs), run_id, parent_run_id, tags, metadata,
                    {"input": {"messages": messages}})

    def on_llm_new_token(self, token: str, *, run_id: UUID, chunk: Any = None, **kwargs: Any) -> None:
        self._send("on_chat_model_stream", run_id, {"chunk": getattr(chunk, "message", token)})

    def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> None:
        gens = getattr(response, "generations", None) or [[]]
        out = getattr(gens[0][0], "message", None) if gens and gens[0] else None
        self._send("on_chat_model_end", run_id, {"output": out}, end=True)

    # tools
    def on_tool_start(self, serialized: dict[str, Any] | None, input_str: str, *, run_id: UUID,
                      parent_run_id: UUID | None = None, tags: list[str] | None = None,
                      metadata: dict[str, Any] | None = None, inputs: Any = None, **kwargs: Any) -> None:
        self._start("tool", self._name(serialized, kwargs), run_id, parent_run_id, tags, metadata,
                    {"input": inputs if inputs is not None else input_str})

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._send("on_tool_end", run_id, {"output": output}, end=True)

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, tags: list[str] | None = None,
                        metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.stream.emit([("events", jsonable({"event": "on_custom_event", "name": name, "run_id": str(run_id),
                                                "parent_ids": [], "tags": list(tags or ()),
                                                "metadata": _public_metadata(dict(metadata or {})),
                                                "data": data}))], small=True)


def stored_events(queue: Any, run_id: str) -> Callable[[list[tuple[str, Any]]], None]:
    """Appends events to the run's stored stream after those already there (a retried run
    numbers on from its earlier attempt's events)."""
    seq = queue.next_event_seq(run_id)

    def store(events: list[tuple[str, Any]]) -> None:
        nonlocal seq
        seq = queue.append_events(run_id, seq, events)

    return store
