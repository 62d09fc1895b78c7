"""The JSON Schemas shipped in models/schemas are the ones the models generate today."""

from __future__ import annotations

import json

from models.events import SOURCE_TYPES
from models.outputs import SCHEMA_DIR, render_schema, schemas


def test_shipped_schemas_are_current():
    generated = schemas()
    on_disk = {p.name for p in SCHEMA_DIR.glob("*.json")}
    assert on_disk == set(generated), "run `omniprofile schemas` and commit models/schemas"
    for name, schema in generated.items():
        assert (SCHEMA_DIR / name).read_text() == render_schema(schema), f"{name} is stale: run `omniprofile schemas`"


def test_event_schemas_state_the_contract():
    for source, types in SOURCE_TYPES.items():
        schema = json.loads((SCHEMA_DIR / f"event.{source}.json").read_text())
        assert schema["properties"]["type"]["enum"] == list(types)
        assert {"event_id", "type", "ts"} <= set(schema["required"])
        assert ("channel" in schema["required"]) == (source in ("clickstream", "social"))
        assert schema["additionalProperties"] is True
