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


def test_a_spliced_update_is_the_update_dumped_whole():
    import random

    import orjson

    from models.outputs import update_json

    rng = random.Random(3)
    texts = ["c-1", "zoë \"q\" \\ ✓", "line\nbreak", "\u2028", "", "😀"]
    for _ in range(300):
        head = {rng.choice(texts) + str(i): rng.choice([1, 2.5, None, True, rng.choice(texts), [rng.choice(texts)]])
                for i in range(rng.randrange(0, 5))}
        profile = {rng.choice(texts): {"n": rng.randrange(9), "s": rng.choice(texts)} for _ in range(rng.randrange(4))}
        assert update_json(head, orjson.dumps(profile)) == orjson.dumps({**head, "profile": profile})
