"""docs/api.md is rendered from the app's OpenAPI document and kept current."""

from __future__ import annotations

from api.reference import render_reference
from cli.apidocs import DEFAULT_OUT, reference_markdown
from cli.main import main


def test_committed_reference_matches_the_app() -> None:
    # fails when a route, parameter or response model changes without `scripts/api-docs`
    assert DEFAULT_OUT.read_text(encoding="utf-8") == reference_markdown()


def test_every_route_of_the_app_is_documented() -> None:
    text = DEFAULT_OUT.read_text(encoding="utf-8")
    for needle in ("### `POST /threads/{thread_id}/runs/wait`", "### `GET /approvals`", "### `GET /metrics`",
                   "### `GET /threads/{thread_id}/trace`", "### `POST /store/items/search`"):
        assert needle in text, needle


def test_render_resolves_refs_unions_arrays_and_tables() -> None:
    doc = {
        "openapi": "3.1.0", "info": {"title": "t", "version": "1"},
        "paths": {"/x/{id}": {"get": {
            "tags": ["things"], "summary": "Get a thing", "description": "Why | how",
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "ok", "content": {"application/json": {
                "schema": {"type": "array", "items": {"$ref": "#/components/schemas/Thing"}}}}}}}}},
        "components": {"schemas": {"Thing": {"type": "object", "required": ["a"], "properties": {
            "a": {"anyOf": [{"type": "string"}, {"type": "null"}], "description": "first\nline"},
            "b": {"enum": ["x", "y"]}}}}},
    }
    md = render_reference(doc)
    assert "### `GET /x/{id}`" in md and "Why | how" in md
    assert "| `id` | path | string | yes |  |" in md
    assert "| 200 | ok | list[[Thing](#thing)] |" in md
    assert "| `a` | string \\| null | yes | first line |" in md
    assert "| `b` | `x` \\| `y` | no |  |" in md


def test_check_reports_a_stale_file(tmp_path, capsys) -> None:
    stale = tmp_path / "api.md"
    stale.write_text("old\n")
    assert main(["api-docs", "--out", str(stale), "--check"]) == 1
    assert "out of date" in capsys.readouterr().err
    assert main(["api-docs", "--out", str(stale)]) == 0
    assert main(["api-docs", "--out", str(stale), "--check"]) == 0
