"""Observation rows in columns: one Arrow table per write instead of a tuple per reading.

The admission workers build the readings of a batch as a table (``READINGS_SCHEMA``) and
send it as Arrow IPC bytes; the store appends the table as it is. Rows are made from it only
for the consumers that ask for them (``ObservationsAdded.rows``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from civica.core.entity import Observation

_FIELDS: list[pa.Field[Any]] = [
    pa.field("entity_id", pa.string()),
    pa.field("entity_type", pa.string()),
    pa.field("attribute", pa.string()),
    pa.field("observed_at", pa.timestamp("us", tz="UTC")),
    pa.field("value_num", pa.float64()),
    pa.field("value_json", pa.string()),
    pa.field("unit", pa.string()),
]
READINGS_SCHEMA = pa.schema(_FIELDS)


def readings_table(rows: Sequence[Observation]) -> pa.Table:
    """Observation rows as one table of ``READINGS_SCHEMA``."""
    if not rows:
        return READINGS_SCHEMA.empty_table()
    columns = zip(*rows, strict=True)
    return pa.table(
        [pa.array(col, field.type) for col, field in zip(columns, READINGS_SCHEMA, strict=True)],
        schema=READINGS_SCHEMA,
    )


def readings_rows(table: pa.Table) -> list[Observation]:
    """The rows of a ``READINGS_SCHEMA`` table, in order."""
    columns = [table.column(name).to_pylist() for name in READINGS_SCHEMA.names]
    make = tuple.__new__
    return [make(Observation, row) for row in zip(*columns, strict=True)]


def to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue())


def from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()
