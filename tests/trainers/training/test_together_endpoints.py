"""Serving a Together fine-tune on a dedicated endpoint through the real ``together`` client and the fake server:
the hardware and its price come from Together, nothing is created before the start, one start creates one endpoint
with the idle auto-stop, the stop deletes it; and the fake's bodies validate in the SDK's own types."""

from __future__ import annotations

import pytest
from together.types import Endpoint, EndpointDeployment, Model, WhoamiProjectAPIKey
from together.types.endpoints import HardwareListResponse
from together.types.models import Config

from storage.deployments import get_deployment
from storage.jobs import register_model
from storage.models import stored_id
from storage.vocabulary import DeploymentStatus
from tests.fixtures.together_serving import H100, L40, PROJECT_ID
from trainers.training.together_endpoints import (
    NoServingHardware,
    NotATogetherModel,
    ReferenceBaseNotServable,
    TogetherRefused,
    quote_deployment,
    refresh_deployments,
    start_deployment,
    stop_deployment,
)

FINE_TUNE = "ftbot-user/Meta-Llama-3.1-8B-Instruct-ftbot-sft-job1-abc123"


def together_model(db, name: str = FINE_TUNE, base: str = "meta-llama/Meta-Llama-3.1-8B-Instruct"):
    return register_model(db, name=name, backend="together", base_model=base.removesuffix("-Reference"),
                          location="/tmp/adapter", metrics={"together_model": base})[0]


def test_the_fakes_serving_bodies_validate_in_the_sdks_own_types(together_api):
    serving = together_api.serving
    model = serving.add_model(FINE_TUNE)
    Model.model_validate(model)
    WhoamiProjectAPIKey.model_validate(serving.whoami())
    HardwareListResponse.model_validate({"object": "list", "data": serving.hardware})
    for config in serving.configs:
        Config.model_validate(config)
    endpoint = serving._create_endpoint({"name": "e"})
    deployment = serving._create_deployment(endpoint, {
        "name": "d", "model": f"projects/{PROJECT_ID}/models/{model['id']}", "autoscaling": {"minReplicas": 1},
        "config": "projects/proj_public/configs/cr_h100", "inactiveTimeout": 60})
    Endpoint.model_validate(endpoint)
    EndpointDeployment.model_validate(deployment)


def test_the_quote_prices_the_cheapest_hardware_from_together_and_creates_nothing(db, together_api):
    together_api.serving.add_model(FINE_TUNE)
    together_model(db)
    row, plan = quote_deployment(db, FINE_TUNE, hardware=None, idle_minutes=45, requested_by="U1")
    assert plan.hardware.hardware == L40 and plan.hardware.price_cents_per_hour == 199
    assert [o.hardware for o in plan.options] == [L40, H100]
    assert round(plan.hardware.usd_per_minute, 4) == round(1.99 / 60, 4)
    assert row.status == DeploymentStatus.QUOTED and row.idle_minutes == 45
    assert not together_api.requests_to("/v2/projects/proj_ftbot/endpoints")
    _, chosen = quote_deployment(db, FINE_TUNE, hardware="1xh100-80gb", idle_minutes=60, requested_by="U1")
    assert chosen.hardware.hardware == H100
    with pytest.raises(NoServingHardware, match="it offers: 1xnvidia-l40s-48gb, 1xnvidia-h100-80gb"):
        quote_deployment(db, FINE_TUNE, hardware="8xb200", idle_minutes=60, requested_by="U1")


def test_a_reference_base_and_a_local_model_are_refused_before_together_is_asked(db, together_api):
    together_model(db, "ref-model", base="meta-llama/Meta-Llama-3.1-8B-Instruct-Reference")
    register_model(db, name="local-model", backend="local", base_model="Qwen/Qwen2.5-0.5B-Instruct", location="/tmp/a")
    with pytest.raises(ReferenceBaseNotServable, match="cannot serve them"):
        quote_deployment(db, "ref-model", hardware=None, idle_minutes=60, requested_by="U1")
    with pytest.raises(NotATogetherModel):
        quote_deployment(db, "local-model", hardware=None, idle_minutes=60, requested_by="U1")
    assert together_api.calls == []


def test_one_start_creates_one_endpoint_with_the_idle_stop_and_the_stop_deletes_it(db, together_api):
    together_api.serving.add_model(FINE_TUNE)
    together_model(db)
    row, _ = quote_deployment(db, FINE_TUNE, hardware=None, idle_minutes=45, requested_by="U1")
    first = start_deployment(db, stored_id(row), user="U1")
    again = start_deployment(db, stored_id(row), user="U1")
    assert first.started and not again.started
    created = together_api.requests_to(f"/v2/projects/{PROJECT_ID}/endpoints", "POST")
    deployments = [c for c in created if c.path.endswith("/deployments")]
    assert len(created) == 2 and len(deployments) == 1
    assert deployments[0].json["inactiveTimeout"] == 45
    assert deployments[0].json["autoscaling"] == {"minReplicas": 1, "maxReplicas": 1}
    assert deployments[0].json["config"] == "projects/proj_public/configs/cr_l40s"
    running = get_deployment(db, stored_id(row))
    assert running.status == DeploymentStatus.RUNNING and running.endpoint_name.startswith("ftbot-team/ftbot-")
    endpoint = together_api.serving.endpoints[running.endpoint_id]
    assert endpoint["trafficSplit"] == [{"deploymentId": running.deployment_id, "weight": 1.0}]

    stopped = stop_deployment(db, FINE_TUNE, user="U2")
    assert stopped.status == DeploymentStatus.STOPPED and stopped.stopped_by == "U2"
    assert together_api.serving.endpoints == {} and together_api.serving.deployments == {}


def test_a_refused_deployment_deletes_the_endpoint_and_says_what_together_said(db, together_api):
    together_api.serving.add_model(FINE_TUNE)
    together_model(db)
    row, _ = quote_deployment(db, FINE_TUNE, hardware=None, idle_minutes=60, requested_by="U1")
    together_api.refuse(f"/v2/projects/{PROJECT_ID}/endpoints/ep_0002/deployments", 400, "quota exceeded for L40S")
    with pytest.raises(TogetherRefused, match="quota exceeded for L40S"):
        start_deployment(db, stored_id(row), user="U1")
    assert get_deployment(db, stored_id(row)).status == DeploymentStatus.FAILED
    assert together_api.serving.endpoints == {}


def test_an_endpoint_together_stopped_by_itself_is_recorded_as_stopped(db, together_api):
    serving = together_api.serving
    names = [FINE_TUNE, FINE_TUNE.replace("abc123", "def456"), FINE_TUNE.replace("abc123", "ghi789")]
    rows = []
    for name in names:
        serving.add_model(name)
        together_model(db, name)
        row, _plan = quote_deployment(db, name, hardware=None, idle_minutes=30, requested_by="U1")
        rows.append(start_deployment(db, stored_id(row), user="U1").deployment)
    idle, gone, ready = rows
    serving.deployments[idle.deployment_id]["status"] = {"state": "DEPLOYMENT_STATE_STOPPED",
                                                         "message": "stopped after 30 minutes without requests"}
    del serving.deployments[gone.deployment_id]  # deleted on Together's own site
    serving.deployments[ready.deployment_id]["status"] = {"state": "DEPLOYMENT_STATE_READY", "message": ""}

    ended = refresh_deployments(db)
    assert sorted(d.model_name for d in ended) == sorted([idle.model_name, gone.model_name])
    stopped = get_deployment(db, stored_id(idle))
    assert stopped.status == DeploymentStatus.STOPPED and stopped.stopped_by == "Together"
    assert "without requests" in (stopped.error or "") and stopped.stopped_at is not None
    assert get_deployment(db, stored_id(gone)).status == DeploymentStatus.STOPPED
    assert get_deployment(db, stored_id(ready)).status == DeploymentStatus.RUNNING
    assert refresh_deployments(db) == []  # nothing more to record

