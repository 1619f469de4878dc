"""The fake OpenAI server answers in the shapes of OpenAI's published OpenAPI spec (an excerpt in tests/data/openai/)."""

from __future__ import annotations

import json
from functools import lru_cache

import openai
import pytest
from openapi_schema_validator import OAS31Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.fixtures.paths import TEST_DATA

SPEC = TEST_DATA / "openai" / "openapi-excerpt.json"


@lru_cache(maxsize=1)
def _spec() -> dict:
    return _to_json_schema_2020(json.loads(SPEC.read_text()))


def _to_json_schema_2020(node):
    """The spec is OpenAPI 3.1 but still carries 3.0-style ``exclusiveMinimum: true`` next to ``minimum``;
    in JSON Schema 2020-12 that keyword takes the bound itself, so convert it (as OpenAPI's 3.0→3.1 guide says)."""
    if isinstance(node, dict):
        node = {k: _to_json_schema_2020(v) for k, v in node.items()}
        for flag, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            if node.get(flag) is True and bound in node:
                node[flag] = node.pop(bound)
            elif node.get(flag) is False:
                node.pop(flag)
        return node
    if isinstance(node, list):
        return [_to_json_schema_2020(v) for v in node]
    return node


def assert_matches(schema_name: str, instance: dict) -> None:
    spec = _spec()
    registry = Registry().with_resource("urn:openai-spec", Resource.from_contents(spec, default_specification=DRAFT202012))
    validator = OAS31Validator({"$ref": f"urn:openai-spec#/components/schemas/{schema_name}"}, registry=registry)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.path))
    assert not errors, f"{schema_name}: " + "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])


def _raw(client: openai.OpenAI, method: str, path: str, **kwargs) -> dict:
    response = getattr(client, method)(path, cast_to=object, **kwargs)
    return response


def _lines(n: int, key: str = "messages") -> bytes:
    if key == "messages":
        rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]} for i in range(n)]
    else:
        rows = [{"input": {"messages": [{"role": "user", "content": f"q{i}"}]},
                 "preferred_output": [{"role": "assistant", "content": "good"}],
                 "non_preferred_output": [{"role": "assistant", "content": "bad"}]} for i in range(n)]
    return "\n".join(json.dumps(r) for r in rows).encode()


def test_every_fake_response_matches_the_openapi_schema(openai_api):
    client = openai.OpenAI()
    uploaded = _raw(client, "post", "/files", files=[("file", ("train.jsonl", _lines(12)))],
                    body={"purpose": "fine-tune"}, options={"headers": {"Content-Type": "multipart/form-data"}})
    assert_matches("OpenAIFile", uploaded)
    assert_matches("OpenAIFile", _raw(client, "get", f"/files/{uploaded['id']}"))
    assert_matches("ListFilesResponse", _raw(client, "get", "/files"))

    job = _raw(client, "post", "/fine_tuning/jobs",
               body={"model": "gpt-4o-mini-2024-07-18", "training_file": uploaded["id"], "suffix": "support", "seed": 3})
    assert_matches("FineTuningJob", job)
    statuses = []
    for _ in range(8):
        job = _raw(client, "get", f"/fine_tuning/jobs/{job['id']}")
        assert_matches("FineTuningJob", job)
        statuses.append(job["status"])
    assert statuses[:2] == ["queued", "running"] and statuses[-1] == "succeeded"

    events = _raw(client, "get", f"/fine_tuning/jobs/{job['id']}/events")
    assert_matches("ListFineTuningJobEventsResponse", events)
    assert any(e["type"] == "metrics" for e in events["data"])
    assert_matches("ListFineTuningJobCheckpointsResponse", _raw(client, "get", f"/fine_tuning/jobs/{job['id']}/checkpoints"))
    assert_matches("ListPaginatedFineTuningJobsResponse", _raw(client, "get", "/fine_tuning/jobs"))
    assert_matches("OpenAIFile", _raw(client, "get", f"/files/{job['result_files'][0]}"))

    # DPO jobs and cancelled and failed jobs keep the same shape.
    pairs = _raw(client, "post", "/files", files=[("file", ("pairs.jsonl", _lines(10, "input")))],
                 body={"purpose": "fine-tune"}, options={"headers": {"Content-Type": "multipart/form-data"}})
    dpo = _raw(client, "post", "/fine_tuning/jobs", body={
        "model": "gpt-4o-mini-2024-07-18", "training_file": pairs["id"],
        "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1}}}})
    assert_matches("FineTuningJob", dpo)
    assert_matches("FineTuningJob", _raw(client, "post", f"/fine_tuning/jobs/{dpo['id']}/cancel"))
    openai_api.fail_jobs_with("server_error", "Internal error while training.")
    failing = _raw(client, "post", "/fine_tuning/jobs", body={"model": "gpt-4o-mini-2024-07-18", "training_file": uploaded["id"]})
    for _ in range(5):
        failing = _raw(client, "get", f"/fine_tuning/jobs/{failing['id']}")
    assert failing["status"] == "failed"
    assert_matches("FineTuningJob", failing)

    chat = _raw(client, "post", "/chat/completions", body={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    assert_matches("CreateChatCompletionResponse", chat)


def test_schema_check_catches_a_malformed_job(openai_api):
    client = openai.OpenAI()
    uploaded = client.files.create(file=("t.jsonl", _lines(10)), purpose="fine-tune")
    job = _raw(client, "post", "/fine_tuning/jobs", body={"model": "gpt-4o-mini-2024-07-18", "training_file": uploaded.id})
    assert_matches("FineTuningJob", job)
    with pytest.raises(AssertionError, match="'exploded' is not one of"):
        assert_matches("FineTuningJob", {**job, "status": "exploded"})
    with pytest.raises(AssertionError, match="'trained_tokens' is a required property"):
        assert_matches("FineTuningJob", {k: v for k, v in job.items() if k != "trained_tokens"})


def test_chat_completions_use_the_pluggable_responder(openai_api):
    openai_api.responder = lambda request: f"{request['model']} says {len(request['messages'])} messages"
    reply = openai.OpenAI().chat.completions.create(model="ft:gpt-4o-mini:x", messages=[{"role": "user", "content": "hello"}])
    assert reply.choices[0].message.content == "ft:gpt-4o-mini:x says 1 messages"
    assert openai_api.requests_to("/chat/completions")[0].json["messages"][0]["content"] == "hello"
