"""The HTTP API reference (``docs/api.md``), rendered from the app's own OpenAPI document.

Written by hand, a reference drifts from the routes it describes; rendered from
``app.openapi()`` it cannot. ``scripts/api-docs`` writes the file, and a test renders it again
and fails when the committed copy differs, so a route added without regenerating the docs
does not pass CI. Rendering is pure (OpenAPI dict in, Markdown out) and deterministic:
paths, methods and schemas are sorted, so the file changes only when the API does.
"""

from __future__ import annotations

from typing import Any

__all__ = ["render_reference"]

_METHODS = ("get", "post", "put", "patch", "delete")


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _type_of(schema: dict[str, Any] | None) -> str:
    """A short, readable type for a JSON schema fragment (``Run``, ``list[Thread]``, ``str | null``)."""
    if not schema:
        return "any"
    if "$ref" in schema:
        return f"[{_ref_name(schema['$ref'])}](#{_ref_name(schema['$ref']).lower()})"
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " \\| ".join(dict.fromkeys(_type_of(s) for s in schema[key]))
    if "allOf" in schema and len(schema["allOf"]) == 1:
        return _type_of(schema["allOf"][0])
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{schema['const']}`"
    t = schema.get("type")
    if t == "array":
        return f"list[{_type_of(schema.get('items'))}]"
    if t == "object":
        extra = schema.get("additionalProperties")
        return f"dict[str, {_type_of(extra)}]" if isinstance(extra, dict) and extra else "object"
    if isinstance(t, list):
        return " \\| ".join(str(x) for x in t)
    return str(t or "any")


def _cell(text: Any) -> str:
    """One Markdown table cell: a single line, pipes escaped."""
    return " ".join(str(text or "").split()).replace("|", "\\|")


def _operation(path: str, method: str, op: dict[str, Any]) -> list[str]:
    out = [f"### `{method.upper()} {path}`", ""]
    if op.get("summary"):
        out += [op["summary"], ""]
    if op.get("description"):
        out += [op["description"].strip(), ""]
    params = op.get("parameters") or []
    if params:
        out += ["| parameter | in | type | required | description |", "|---|---|---|---|---|"]
        for p in params:
            out.append(f"| `{p['name']}` | {p.get('in', '')} | {_type_of(p.get('schema'))} | "
                       f"{'yes' if p.get('required') else 'no'} | {_cell(p.get('description'))} |")
        out.append("")
    body = (op.get("requestBody") or {}).get("content") or {}
    for media, spec in sorted(body.items()):
        out += [f"Request body ({media}): {_type_of(spec.get('schema'))}", ""]
    responses = op.get("responses") or {}
    if responses:
        out += ["| status | description | body |", "|---|---|---|"]
        for status in sorted(responses):
            r = responses[status]
            content = r.get("content") or {}
            schema = next(iter(content.values()), {}).get("schema") if content else None
            out.append(f"| {status} | {_cell(r.get('description'))} | {_type_of(schema) if schema else ''} |")
        out.append("")
    return out


def _schema(name: str, schema: dict[str, Any]) -> list[str]:
    out = [f"### {name}", ""]
    if schema.get("description"):
        out += [_cell(schema["description"]), ""]
    props = schema.get("properties") or {}
    if not props:
        return out + [f"Type: {_type_of({k: v for k, v in schema.items() if k != 'title'})}", ""]
    required = set(schema.get("required") or ())
    out += ["| field | type | required | description |", "|---|---|---|---|"]
    for field, spec in props.items():
        out.append(f"| `{field}` | {_type_of(spec)} | {'yes' if field in required else 'no'} | "
                   f"{_cell(spec.get('description'))} |")
    return out + [""]


def render_reference(doc: dict[str, Any]) -> str:
    """Markdown for an OpenAPI document: endpoints grouped by their first tag, then schemas."""
    info = doc.get("info") or {}
    lines = [f"# {info.get('title', 'API')} HTTP API reference", "",
             "Generated from the service's OpenAPI document by `scripts/api-docs`; do not edit by hand",
             f"(OpenAPI {doc.get('openapi', '')}, API version {info.get('version', '')}). A running server serves",
             "the same document at `/openapi.json` and renders it at `/docs`.", ""]
    groups: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path in sorted(doc.get("paths") or {}):
        for method in _METHODS:
            op = doc["paths"][path].get(method)
            if op is not None:
                groups.setdefault((op.get("tags") or ["other"])[0], []).append((path, method, op))
    lines += ["## Endpoints", ""]
    for tag in sorted(groups):
        lines += [f"- [{tag}](#{tag.lower().replace(' ', '-')}) ({len(groups[tag])})"]
    lines.append("")
    for tag in sorted(groups):
        lines += [f"## {tag}", ""]
        for path, method, op in groups[tag]:
            lines += _operation(path, method, op)
    schemas = (doc.get("components") or {}).get("schemas") or {}
    if schemas:
        lines += ["## Schemas", ""]
        for name in sorted(schemas):
            lines += _schema(name, schemas[name])
    return "\n".join(lines).rstrip() + "\n"
