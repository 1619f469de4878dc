"""Serving a Together AI fine-tune on a dedicated endpoint: the hardware and its price, create, status, delete.

The wire flow is the ``together`` 3.1.1 SDK's dedicated endpoints (v2), the same one its own ``tg endpoints deploy``
CLI uses:

- the fine-tune is a model of the project: ``GET /v2/projects/{project}/models`` (matched by name: the registered
  model's name is Together's ``model_output_name``). The project is ``TOGETHER_PROJECT_ID``, else the API key's
  own (``GET /v3/whoami``);
- the hardware that can serve it is its configs (``GET /v2/projects/{project}/configs?referenceModel=`` its base,
  each config's ``accelerator_count`` × ``accelerator_type`` selectors), priced by Together's catalog
  (``GET /v2/public/inference-instance-types``: ``priceCentsPerHour`` per replica), never by a table of ours;
- creating it is an endpoint (``POST /v2/projects/{project}/endpoints``), one deployment of the model on the
  chosen config with ``minReplicas = maxReplicas = 1`` and ``inactiveTimeout`` (the idle auto-stop, minutes,
  30–1440) (``POST …/endpoints/{id}/deployments``), and the endpoint's traffic routed to it
  (``PATCH …/endpoints/{id}``, ``trafficSplit``). A LoRA adapter is deployed as itself: Together merges it into its
  base on the deployment;
- stopping it deletes the deployment, then the endpoint (``DELETE``): nothing bills after that.

A dedicated endpoint bills per minute while it runs, even idle: callers show :class:`ServingPlan` and wait for an
admin's click before :meth:`TogetherEndpoints.create`. Together's ``*-Reference`` bases train but cannot be served:
:func:`check_servable` refuses them before anything is asked of Together.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from storage.db import Database
from storage.deployments import (
    active_deployment,
    claim_deployment,
    claim_stop,
    create_quote,
    get_deployment,
    list_deployments,
    record_created,
    record_ended_at_together,
    record_failed,
    record_stopped,
    release_stop,
)
from storage.errors import ConfigError, FtbotError
from storage.jobs import get_model
from storage.models import Deployment, RegisteredModel, stored_id
from storage.scrub import scrub_credentials
from storage.vocabulary import DeploymentStatus, TrainingBackend
from trainers.training.together_backend import api_error_text, make_together_client

if TYPE_CHECKING:
    from together import Together
    from together.types import Model
    from together.types.models import Config

REFERENCE_SUFFIX = "-Reference"
MIN_IDLE_MINUTES, MAX_IDLE_MINUTES = 30, 1440  # Together: 0 disables the auto-stop, which ftbot never sends
ENDPOINT_NAME_LIMIT = 63
TOGETHER_HINT = "See your endpoints on https://api.together.ai/models, fix what Together names above, then try again."


class DeployError(FtbotError):
    """A model cannot be served on a Together AI dedicated endpoint (nothing was created)."""


class NotATogetherModel(DeployError):
    """Only a model trained on Together AI lives there to be served."""


class ReferenceBaseNotServable(DeployError):
    """The model was trained on a ``*-Reference`` base: Together trains those but cannot serve them."""


class NoServingHardware(DeployError):
    """Together offers no hardware (or not the one asked for) that serves the model."""


class TogetherRefused(DeployError):
    """Together answered an endpoint request with an error: its message, verbatim, and what to do."""


@dataclass(frozen=True)
class HardwareOption:
    """One instance type that can serve the model, with Together's price for one replica."""

    hardware: str  # Together's instance type name, e.g. "1xnvidia-h100-80gb"
    description: str
    price_cents_per_hour: int
    config: str  # projects/{project}/configs/{id}: the serving config that runs on this hardware

    @property
    def usd_per_minute(self) -> float:
        return self.price_cents_per_hour / 100 / 60

    @property
    def usd_per_hour(self) -> float:
        return self.price_cents_per_hour / 100


@dataclass(frozen=True)
class ServingPlan:
    """What a Deploy click would create: shown (price, idle stop) before anything exists."""

    model_name: str
    together_model: str  # projects/{project}/models/{id}
    hardware: HardwareOption
    idle_minutes: int
    options: tuple[HardwareOption, ...]


@dataclass(frozen=True)
class CreatedEndpoint:
    endpoint_id: str
    endpoint_name: str  # what inference requests pass as ``model``
    deployment_id: str
    state: str  # Together's deployment state, e.g. DEPLOYMENT_STATE_PROVISIONING


def check_servable(model: RegisteredModel) -> None:
    """Refuse, before anything is asked of Together, a model it cannot serve on a dedicated endpoint."""
    if model.backend != TrainingBackend.TOGETHER:
        raise NotATogetherModel(
            f"{model.name} was trained on {model.backend}, not on Together AI: only a model trained with "
            "`/ft train together` can be served on a Together dedicated endpoint")
    base = str((model.metrics or {}).get("together_model") or "")
    if base.endswith(REFERENCE_SUFFIX):
        raise ReferenceBaseNotServable(
            f"{model.name} was trained on {base}: Together trains `{REFERENCE_SUFFIX}` bases but cannot serve them on "
            "a dedicated endpoint. Its adapter runs on-prem (`/ft use`); to serve on Together, train on a base "
            "without the suffix (FTBOT_TOGETHER_MODEL)")


def check_idle_minutes(minutes: int) -> int:
    if not MIN_IDLE_MINUTES <= minutes <= MAX_IDLE_MINUTES:
        raise ConfigError(f"the idle auto-stop must be {MIN_IDLE_MINUTES} to {MAX_IDLE_MINUTES} minutes, not {minutes}")
    return minutes


def endpoint_name_for(model_name: str, deployment_id: int) -> str:
    """A DNS-friendly endpoint name: ``ftbot-<model>-<row id>`` (lower case, letters, digits, dashes)."""
    slug = re.sub(r"[^a-z0-9]+", "-", model_name.rsplit("/", 1)[-1].lower()).strip("-") or "model"
    suffix = f"-{deployment_id}"
    return ("ftbot-" + slug)[: ENDPOINT_NAME_LIMIT - len(suffix)].rstrip("-") + suffix


def _hardware_of(config: Config) -> str | None:
    """The instance type a config runs on, from its selectors (``{accelerator_count}x{accelerator_type}``)."""
    values = {selector.key: selector.value for selector in config.selectors or []}
    count, kind = values.get("accelerator_count"), values.get("accelerator_type")
    return f"{count}x{kind}" if count and kind else None


def _normal(hardware: str) -> str:
    return hardware.lower().replace("nvidia-", "").replace("_", "-")


class TogetherEndpoints:
    """Dedicated endpoints through the real ``together`` client (``TOGETHER_API_KEY``, ``TOGETHER_BASE_URL``)."""

    def __init__(self, client: Together | None = None):
        self.client = make_together_client(client)
        self._project: str | None = None

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        import together  # Local: the SDK is an optional extra and slow to import.

        try:
            return fn(*args, **kwargs)
        except together.APIError as error:
            raise TogetherRefused(f"Together AI refused to {what}: {api_error_text(error)}. {TOGETHER_HINT}") from error

    @property
    def project_id(self) -> str:
        """``TOGETHER_PROJECT_ID`` (the client's project), else the API key's own project."""
        if self._project is None:
            project = self.client.project_id
            if not project:
                identity = self._call("say which project this API key belongs to", self.client.whoami)
                found = getattr(identity, "project", None)
                project = getattr(found, "id", None)
            if not project:
                raise ConfigError("this Together API key has no project: set TOGETHER_PROJECT_ID to the project that "
                                  "holds the fine-tuned models")
            self._project = str(project)
        return self._project

    def find_model(self, name: str) -> Model:
        """The project's model whose name is ``name`` (``<slug>/<name>`` or bare: Together's model_output_name)."""
        bare = name.rsplit("/", 1)[-1]
        pages = self._call("list the project's models", self.client.models.list, project_id=self.project_id)
        matches = [m for m in pages if m.name == name or m.name.rsplit("/", 1)[-1] == bare]
        if len(matches) != 1:
            found = "is not" if not matches else "matches several models"
            raise NoServingHardware(f"{name} {found} in Together project {self.project_id}: a fine-tune is served from "
                                    "the project that trained it (TOGETHER_PROJECT_ID)")
        return matches[0]

    def hardware_options(self, model: RegisteredModel) -> tuple[str, tuple[HardwareOption, ...]]:
        """(the model's Together resource path, the hardware that serves it with its price), cheapest first."""
        check_servable(model)
        remote = self.find_model(model.name)
        path = f"projects/{remote.project_id}/models/{remote.id}"
        reference: dict[str, str] = {"reference_model": remote.base_model or path}
        if not remote.base_model and remote.base_model_id:
            reference = {"reference_model_id": remote.base_model_id}
        configs = list(self._call("list the serving configs for the model", self.client.models.configs.list,
                                  project_id=self.project_id, **reference))
        catalog = self._call("list its hardware and prices", self.client.endpoints.hardware.list).data
        prices = {_normal(item.name): item for item in catalog} | {_normal(item.id): item for item in catalog}
        options: dict[str, HardwareOption] = {}
        for config in configs:
            hardware = _hardware_of(config)
            item = prices.get(_normal(hardware)) if hardware else None
            if item is None or item.name in options:
                continue  # no price: never offered, since its cost could not be shown before the click
            options[item.name] = HardwareOption(item.name, item.description, item.price_cents_per_hour,
                                                f"projects/{config.project_id}/configs/{config.id}")
        return path, tuple(sorted(options.values(), key=lambda o: (o.price_cents_per_hour, o.hardware)))

    def plan(self, model: RegisteredModel, *, hardware: str | None, idle_minutes: int) -> ServingPlan:
        """What deploying ``model`` on ``hardware`` (default: the cheapest) would create and cost."""
        check_idle_minutes(idle_minutes)
        path, options = self.hardware_options(model)
        if not options:
            raise NoServingHardware(f"Together AI offers no priced hardware that serves {model.name}. {TOGETHER_HINT}")
        chosen = options[0]
        if hardware:
            picked = [o for o in options if _normal(o.hardware) == _normal(hardware)]
            if not picked:
                offered = ", ".join(o.hardware for o in options)
                raise NoServingHardware(f"Together AI does not serve {model.name} on {hardware}; it offers: {offered} "
                                        "(set FTBOT_TOGETHER_HARDWARE or pass --hardware)")
            chosen = picked[0]
        return ServingPlan(model.name, path, chosen, idle_minutes, options)

    def create(self, *, endpoint_name: str, together_model: str, config: str, idle_minutes: int) -> CreatedEndpoint:
        """Create the endpoint, its one deployment (1 replica, the idle auto-stop) and route its traffic there.

        A refusal after the endpoint exists deletes what was created, so a failure never leaves anything billing.
        """
        check_idle_minutes(idle_minutes)
        project = self.project_id
        endpoints = self.client.endpoints
        endpoint = self._call("create the endpoint", endpoints.create, project_id=project, name=endpoint_name)
        deployment = None
        try:
            deployment = self._call(
                "deploy the model", endpoints.deployments.create, endpoint.id, project_id=project,
                name=endpoint_name, model=together_model, config=config,
                autoscaling={"min_replicas": 1, "max_replicas": 1}, inactive_timeout=idle_minutes)
            endpoint = self._call(
                "route the endpoint's traffic to the model", endpoints.update, endpoint.id, project_id=project,
                traffic_split=[{"deployment_id": deployment.id, "weight": 1.0}], update_mask="trafficSplit",
                etag=endpoint.etag)
        except DeployError:
            self.delete(endpoint.id, deployment.id if deployment is not None else None)
            raise
        return CreatedEndpoint(endpoint.id, endpoint.name, deployment.id, deployment.status.state)

    def state(self, endpoint_id: str, deployment_id: str) -> tuple[str, str]:
        """(Together's deployment state, its message), e.g. ("DEPLOYMENT_STATE_READY", "")."""
        deployment = self._call("read the deployment", self.client.endpoints.deployments.retrieve, deployment_id,
                                project_id=self.project_id, endpoint_id=endpoint_id)
        return deployment.status.state, deployment.status.message

    def delete(self, endpoint_id: str, deployment_id: str | None) -> None:
        """Delete the deployment, then the endpoint; one already gone counts as deleted."""
        import together  # Local: see _call.

        project = self.project_id
        steps: list[tuple[str, Any, tuple[Any, ...], dict[str, Any]]] = []
        if deployment_id:
            steps.append(("delete the deployment", self.client.endpoints.deployments.delete, (deployment_id,),
                          {"project_id": project, "endpoint_id": endpoint_id}))
        steps.append(("delete the endpoint", self.client.endpoints.delete, (endpoint_id,), {"project_id": project}))
        for what, fn, args, kwargs in steps:
            try:
                fn(*args, **kwargs)
            except together.NotFoundError:
                continue
            except together.APIError as error:
                raise TogetherRefused(f"Together AI refused to {what} {endpoint_id}: {api_error_text(error)}. "
                                      "It may still bill: stop it on https://api.together.ai/models.") from error


# Together's deployment states that mean the endpoint no longer runs (nor bills).
ENDED_STATES = {"DEPLOYMENT_STATE_STOPPED": DeploymentStatus.STOPPED, "DEPLOYMENT_STATE_FAILED": DeploymentStatus.FAILED}


# --- the flow both ``/ft deploy`` and ``ftbot deploy`` run: quote, claimed start, stop --------------------------------


@dataclass(frozen=True)
class Started:
    deployment: Deployment
    started: bool  # False: another click (or process) claimed the quote first, or it was closed


def quote_deployment(db: Database, model_name: str, *, hardware: str | None, idle_minutes: int,
                     requested_by: str | None, client: Together | None = None) -> tuple[Deployment, ServingPlan]:
    """Price serving ``model_name`` and store the quote; nothing is created on Together."""
    model = get_model(db, model_name)
    check_servable(model)
    running = active_deployment(db, model.name)
    if running is not None:
        raise DeployError(f"{model.name} is already on Together (endpoint {running.endpoint_name or running.status}): "
                          f"`ftbot undeploy {model.name}` stops it")
    plan = TogetherEndpoints(client).plan(model, hardware=hardware, idle_minutes=idle_minutes)
    row = create_quote(db, model_name=model.name, together_model=plan.together_model, config=plan.hardware.config,
                       hardware=plan.hardware.hardware, price_cents_per_hour=plan.hardware.price_cents_per_hour,
                       idle_minutes=plan.idle_minutes, requested_by=requested_by)
    return row, plan


def start_deployment(db: Database, deployment_id: int, *, user: str | None,
                     client: Together | None = None) -> Started:
    """Create the quoted endpoint once: only the caller whose claim moved the quote creates it."""
    if not claim_deployment(db, deployment_id, user=user):
        return Started(get_deployment(db, deployment_id), started=False)
    row = get_deployment(db, deployment_id)
    try:
        created = TogetherEndpoints(client).create(
            endpoint_name=endpoint_name_for(row.model_name, deployment_id), together_model=row.together_model,
            config=row.config, idle_minutes=row.idle_minutes)
    except FtbotError as error:
        record_failed(db, deployment_id, scrub_credentials(str(error)))
        raise
    except Exception as error:
        record_failed(db, deployment_id, scrub_credentials(f"{type(error).__name__}: {error}"))
        raise
    return Started(record_created(db, deployment_id, endpoint_id=created.endpoint_id,
                                  endpoint_name=created.endpoint_name, together_deployment_id=created.deployment_id),
                   started=True)


def stop_deployment(db: Database, model_name: str, *, user: str | None, client: Together | None = None) -> Deployment:
    """Delete the model's endpoint on Together; FtbotError when it has none (or another stop is under way)."""
    model = get_model(db, model_name)
    row = active_deployment(db, model.name)
    if row is None or row.status != DeploymentStatus.RUNNING or not claim_stop(db, stored_id(row), user=user):
        state = "is being created or stopped right now" if row is not None else "has no endpoint on Together"
        raise DeployError(f"{model.name} {state}: nothing to stop (`ftbot deploy {model.name}` quotes one)")
    deployment_id = stored_id(row)
    try:
        TogetherEndpoints(client).delete(row.endpoint_id or "", row.deployment_id)
    except FtbotError as error:
        release_stop(db, deployment_id, str(error))
        raise
    return record_stopped(db, deployment_id)


def refresh_deployments(db: Database, *, client: Together | None = None) -> list[Deployment]:
    """Ask Together about every endpoint ftbot thinks runs; those it stopped by itself (the idle auto-stop), failed or
    no longer has are recorded as ended. The ones that changed; a Together that cannot be asked changes nothing."""
    import together  # Local: see TogetherEndpoints._call.

    running = [d for d in list_deployments(db, active_only=True) if d.status == DeploymentStatus.RUNNING]
    if not running:
        return []
    endpoints = TogetherEndpoints(client)
    ended = []
    for row in running:
        try:
            state, message = endpoints.state(row.endpoint_id or "", row.deployment_id or "")
        except TogetherRefused as error:
            if not isinstance(error.__cause__, together.NotFoundError):
                continue  # asked again at the next refresh
            state, message = "DEPLOYMENT_STATE_STOPPED", "deleted on Together"
        except DeployError:
            continue
        status = ENDED_STATES.get(state)
        if status is not None and record_ended_at_together(db, stored_id(row), status=status, reason=message):
            ended.append(get_deployment(db, stored_id(row)))
    return ended
