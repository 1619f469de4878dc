"""``ftbot eval score``: a registered model's held-out loss next to its baseline's, before anyone votes.

The held-out conversations are the model's snapshot's validation split plus the questions added by hand that carry
the team's reply, minus any question the model (or a model it continued) trained on. The baseline is the model the
fine-tune started from: its base model, or for DPO the fine-tuned model it continued. Both are scored in one load:
the adapter switched on, then off (the adapter's base *is* the baseline, the merged parent for a DPO model).

OpenAI models are not scored: the API returns log-probabilities only of the text a model generates, never of a
given reply, so their held-out loss cannot be measured honestly.

The bot runs this as ``python -m trainers.evaluation.score --model NAME --json`` (torch stays out of its process).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

from storage.config import Settings, ftbot_home
from storage.db import Database
from storage.errors import ConfigError, FtbotError
from storage.eval_prompts import eval_items, scored_conversations
from storage.jobs import active_model, get_model, list_models
from storage.models import RegisteredModel, utcnow
from storage.vocabulary import TrainingBackend
from trainers.cluster import RayCluster, WorkKind, submission_id
from trainers.evaluation.loss import HeldoutLoss, assistant_token_loss, prepare_scoring_tokenizer
from trainers.worker_processes import PACKAGE_ROOT, worker_environment

log = logging.getLogger(__name__)


class ScoreUnavailable(FtbotError):
    """The model's held-out loss cannot be measured (an OpenAI model, no held-out replies)."""


@dataclass(frozen=True)
class ScoreReport:
    model: str
    baseline: str
    prompts: int  # held-out conversations scored
    tokens: int  # assistant tokens scored
    loss: float
    baseline_loss: float

    @property
    def relative_change(self) -> float:
        """(loss − baseline) / baseline: −0.43 means 43 % lower than the baseline."""
        return (self.loss - self.baseline_loss) / self.baseline_loss

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "baseline": self.baseline, "prompts": self.prompts, "tokens": self.tokens,
                "loss": round(self.loss, 4), "baseline_loss": round(self.baseline_loss, 4),
                "relative_change": round(self.relative_change, 4)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScoreReport:
        return cls(model=str(data["model"]), baseline=str(data["baseline"]), prompts=int(data["prompts"]),
                   tokens=int(data["tokens"]), loss=float(data["loss"]), baseline_loss=float(data["baseline_loss"]))

    def line(self) -> str:
        return (f"{self.model}: held-out loss {self.loss:.2f} vs {self.baseline_loss:.2f} for {self.baseline} "
                f"({self.relative_change:+.0%}) on {self.prompts} held-out replies ({self.tokens:,} tokens)")


def loss_line(loss: float, baseline_loss: float) -> str:
    """"held-out loss 2.41 → 1.37 (−43 %)": the baseline first, as the team reads a before/after."""
    return f"held-out loss {baseline_loss:.2f} → {loss:.2f} ({(loss - baseline_loss) / baseline_loss:+.0%})"


def model_to_score(db: Database, name: str | None) -> RegisteredModel:
    """The named model, else the one in use, else the newest registered one."""
    if name:
        return get_model(db, name)
    chosen = active_model(db) or next(iter(list_models(db)), None)
    if chosen is None:
        raise ScoreUnavailable("no model is registered yet: train one first (`ftbot train`, `/ft train`).")
    return chosen


def baseline_of(model: RegisteredModel) -> str:
    """What the fine-tune started from: the DPO parent's name, else the base model."""
    metrics = model.metrics or {}
    return str(metrics.get("parent_model") or metrics.get("root_base_model") or model.base_model)


def heldout_conversations(db: Database, model: RegisteredModel) -> list[list[dict[str, Any]]]:
    conversations = scored_conversations(eval_items(db, model))
    if not conversations:
        raise ScoreUnavailable(
            f"{model.name} has no held-out replies to score: its snapshot has no validation split and no question "
            "added by hand carries a team reply. Add some with `ftbot eval add --file` (SFT lines) or "
            "`/ft eval add <link to a team reply>`.")
    return conversations


def score_model(db: Database, model: RegisteredModel, *, batch_size: int = 4, max_length: int = 1024) -> ScoreReport:
    """The held-out loss of ``model`` and of its baseline (one load: the adapter on, then off)."""
    if model.backend == TrainingBackend.OPENAI:
        raise ScoreUnavailable(
            f"{model.name} is an OpenAI model: OpenAI returns log-probabilities only of text the model writes, not of "
            "the team's replies, so its held-out loss cannot be measured. Compare it in a round with `/ft eval`.")
    conversations = heldout_conversations(db, model)
    # Local: the ML stack (inference imports torch lazily; this module stays light for the bot's imports).
    from trainers.evaluation.inference import LocalGenerator

    loaded = LocalGenerator(model.base_model, model.location, cache_dir=ftbot_home() / "models")
    prepare_scoring_tokenizer(loaded.tokenizer)
    tuned = assistant_token_loss(loaded.model, loaded.tokenizer, conversations, batch_size=batch_size, max_length=max_length)
    base = assistant_token_loss(loaded.model, loaded.tokenizer, conversations, batch_size=batch_size,
                                max_length=max_length, adapter_disabled=True)
    return report_from(model.name, baseline_of(model), tuned, base)


def report_from(model: str, baseline: str, tuned: HeldoutLoss, base: HeldoutLoss) -> ScoreReport:
    return ScoreReport(model=model, baseline=baseline, prompts=tuned.conversations, tokens=tuned.tokens,
                       loss=tuned.loss, baseline_loss=base.loss)


# --- the worker process (the bot's `/ft eval score`) ---------------------------------------------------------------


def score_in_worker(model: str | None, *, database_url: str, timeout: float = 1800,
                    settings: Settings | None = None) -> ScoreReport:
    """Run the scoring in a fresh process (torch stays out of the caller), or as a Ray job when
    ``FTBOT_RAY_ADDRESS`` is set; its error message when it fails."""
    args = ["--json"] + ([model] if model else [])
    cluster = RayCluster.from_settings(settings)
    if cluster is not None:
        job_id = submission_id(WorkKind.SCORING, uuid4().hex[:8], utcnow())  # each request scores anew
        cluster.submit(job_id, "trainers.evaluation.score", args, database_url=database_url,
                       metadata={"kind": WorkKind.SCORING.value, "ftbot_model": model or ""})
        state = cluster.wait(job_id, timeout=timeout)
        code, stdout, stderr = state.exit_code, cluster.logs(job_id), ""
    else:
        completed = subprocess.run([sys.executable, "-m", "trainers.evaluation.score", *args], capture_output=True,
                                   text=True, timeout=timeout, check=False, env=worker_environment(database_url),
                                   cwd=str(PACKAGE_ROOT), stdin=subprocess.DEVNULL)
        code, stdout, stderr = completed.returncode, completed.stdout, completed.stderr
    answer = _last_json_line(stdout)
    if code == 0 and "loss" in answer:
        return ScoreReport.from_json(answer)
    log.warning("scoring worker exited with %s: %s", code, (stderr or stdout)[-2000:])
    raise ScoreUnavailable(str(answer.get("error") or "scoring failed; the server log says why."))


def _last_json_line(output: str) -> dict[str, Any]:
    """The worker's answer: its last line that is a JSON object (a Ray log has Ray's own lines around it)."""
    for line in reversed(output.strip().splitlines()):
        try:
            answer = json.loads(line)
        except ValueError:
            continue
        if isinstance(answer, dict):
            return answer
    return {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainers.evaluation.score", description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    settings = Settings.from_env()
    db = Database.open(settings.database_url, migrate=False)
    try:
        report = score_model(db, model_to_score(db, args.model))
    except (FtbotError, ConfigError) as error:
        print(json.dumps({"error": str(error)}) if args.json else f"error: {error}")
        return 1
    finally:
        db.close()
    print(json.dumps(report.to_json()) if args.json else report.line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
