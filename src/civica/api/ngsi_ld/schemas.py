"""JSON Schemas for request bodies, so /openapi.json describes what the API accepts."""

from __future__ import annotations

from typing import Any

ENTITY: dict[str, Any] = {
    "type": "object",
    "required": ["id", "type"],
    "properties": {
        "id": {"type": "string", "format": "uri"},
        "type": {"type": "string"},
        "@context": {},
    },
    "additionalProperties": True,
}
FRAGMENT: dict[str, Any] = {"type": "object", "additionalProperties": True}
ENTITY_LIST: dict[str, Any] = {"type": "array", "items": ENTITY, "maxItems": 10_000}
ID_LIST: dict[str, Any] = {"type": "array", "items": {"type": "string"}, "maxItems": 10_000}


def body(schema: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` declaring a JSON / JSON-LD request body."""
    content = {"schema": schema}
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": content, "application/ld+json": content},
        }
    }
