"""What a person reads on a materialization: rows as a Dagster table (sortable in the UI)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg


def _cell(value: Any) -> str | int | float | bool | None:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def table(rows: Sequence[Mapping[str, Any]]) -> dg.MetadataValue:
    """Rows of scalars as ``MetadataValue.table``; '_none_' when there are no rows (a table needs a schema
    to be drawn, and an empty one says nothing)."""
    if not rows:
        return dg.MetadataValue.md("_none_")
    columns = list(dict.fromkeys(k for row in rows for k in row))
    records = [dg.TableRecord({c: _cell(row.get(c)) for c in columns}) for row in rows]
    return dg.MetadataValue.table(
        records, schema=dg.TableSchema(columns=[dg.TableColumn(c) for c in columns])
    )
