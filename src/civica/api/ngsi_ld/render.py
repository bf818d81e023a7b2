"""Entities on the way out: projection, keyValues, system attrs, names in the client's context."""

from __future__ import annotations

from typing import Any

from civica.api.http import Output
from civica.core.entity import compact_entity, project, to_key_values
from civica.core.ldcontext import LdContext
from civica.core.store import StoredEntity
from civica.core.timefmt import format_time


def render_entity(
    stored: StoredEntity,
    ctx: LdContext,
    output: Output,
    *,
    attrs: tuple[str, ...] | None = None,
    options: set[str] | frozenset[str] = frozenset(),
) -> dict[str, Any]:
    entity = project(stored.entity, attrs)
    if "sysAttrs" in options:
        entity = {
            **entity,
            "createdAt": format_time(stored.created_at),
            "modifiedAt": format_time(stored.modified_at),
        }
    entity = compact_entity(entity, ctx)
    body = to_key_values(entity) if "keyValues" in options else entity
    if output.ld:
        body = {**body, "@context": output.context_spec or _core_url()}
    return body


def render_feature(stored: StoredEntity, ctx: LdContext, options: set[str]) -> dict[str, Any]:
    """An entity as a GeoJSON Feature (for maps)."""
    entity = compact_entity(stored.entity, ctx)
    loc = stored.entity.get("location")
    props = to_key_values(entity) if "keyValues" in options else dict(entity)
    props.pop("id", None)
    return {
        "id": stored.id,
        "type": "Feature",
        "geometry": loc.get("value") if isinstance(loc, dict) else None,
        "properties": props,
    }


def _core_url() -> str:
    from civica.core.ldcontext import CORE_CONTEXT_URL

    return CORE_CONTEXT_URL
