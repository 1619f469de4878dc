"""The training quote names examples by their example id (as ``/ft list`` does), never by snapshot position."""

from __future__ import annotations

from storage.examples import import_records, set_status
from storage.pairs import add_pair
from storage.records import dpo_record
from storage.vocabulary import ExampleStatus, PairSource
from trainers.tiny_model import sample_conversations
from trainers.training.jobs import quote_job
from trainers.training.quote import quote_lines

NO_REPLY = [{"messages": [{"role": "system", "content": "Support."}, {"role": "user", "content": f"Where is parcel {n}?"}]}
            for n in range(3)]


def test_quote_issues_name_the_example_id_and_file_level_issues_name_none(sqlite_db):
    good = sample_conversations(12, seed=3, max_turns=1)
    import_records(sqlite_db, enumerate(good, 1), source_file="t.jsonl", approved_by="U1")
    for example_id in range(1, 9):  # rejected examples leave gaps: positions and ids differ
        set_status(sqlite_db, example_id, ExampleStatus.REJECTED, by="U1")
    import_records(sqlite_db, enumerate(NO_REPLY, 1), source_file="bad.jsonl", approved_by="U1")  # examples #13-#15

    quoted = quote_job(sqlite_db, backend="openai", model="gpt-4o-mini-2024-07-18")
    text = "\n".join(quote_lines(quoted.quote))
    named = [issue for issue in quoted.quote.errors if issue["line"] is not None]
    assert len(named) >= 2 and {issue["example_id"] for issue in named} <= {13, 14, 15}
    for issue in named:
        assert f"error in example #{issue['example_id']}: example_missing_assistant_message: no assistant message" in text
        assert f"example {issue['line']}" not in text  # never the position in the snapshot
    assert "None" not in text
    # OpenAI's minimum is about the whole snapshot: named without an example.
    assert "  error: too_few_examples: only" in text


def test_too_few_examples_or_pairs_block_the_start_and_say_how_to_get_more(sqlite_db):
    import_records(sqlite_db, enumerate(sample_conversations(4, seed=3, max_turns=1), 1), source_file="t.jsonl", approved_by="U1")
    sft = quote_job(sqlite_db, backend="local", model="ftbot:tiny").quote
    [reason] = [r for r in sft.blockers() if "at least 10" in r]
    assert f"only {sft.train_examples} approved example(s)" in reason and "/ft review" in reason

    for n in range(3):
        record = dpo_record([{"role": "user", "content": f"Where is parcel {n}?"}], {"role": "assistant", "content": f"Here {n}."},
                            {"role": "assistant", "content": "No idea."})
        add_pair(sqlite_db, record, source_kind=PairSource.IMPORT)
    dpo = quote_job(sqlite_db, backend="local", model="ftbot:tiny", method="dpo").quote
    [reason] = [r for r in dpo.blockers() if "at least 10" in r]
    assert f"only {dpo.train_examples} preference pair(s)" in reason and "/ft eval" in reason

    import_records(sqlite_db, enumerate(sample_conversations(20, seed=4, max_turns=1), 1), source_file="u.jsonl", approved_by="U1")
    assert not [r for r in quote_job(sqlite_db, backend="local", model="ftbot:tiny").quote.blockers() if "at least 10" in r]


def _tokens_by_transformers(model_dir, records) -> int:
    from transformers import AutoTokenizer

    from trainers.training.local.data import hf_chat_message

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return sum(len(tokenizer.apply_chat_template([hf_chat_message(m) for m in r["messages"]], tokenize=True,
                                                 return_dict=True)["input_ids"]) for r in records)


def test_local_quote_counts_tokens_with_the_base_models_own_tokenizer_and_honours_max_steps(sqlite_db, tiny_model_dir, tmp_path):
    import shutil

    from storage.config import Settings
    from storage.snapshots import snapshot_records

    settings = Settings(home=tmp_path)
    shutil.copytree(tiny_model_dir, tmp_path / "models" / "tiny-model")  # where ftbot:tiny is built on first use
    import_records(sqlite_db, enumerate(sample_conversations(30, seed=5), 1), source_file="t.jsonl", approved_by="U1")
    quote = quote_job(sqlite_db, backend="local", model="ftbot:tiny", settings=settings).quote
    train = snapshot_records(sqlite_db, quote.snapshot["id"], "train")
    # The tiny model's byte-level tokenizer needs far more tokens than an OpenAI encoding: the old estimate was half.
    assert quote.tokens_per_epoch == _tokens_by_transformers(tiny_model_dir, train)
    assert quote.trained_tokens == quote.tokens_per_epoch * 3
    assert "the base model's own tokenizer and chat template" in quote_lines(quote)[-1]

    # --max-steps 2, no packing, batch 4: two steps of four examples each (of the epoch's 27), whatever the epochs.
    capped = quote_job(sqlite_db, backend="local", model="ftbot:tiny", settings=settings,
                       local_options={"max_steps": 2, "packing": False, "batch_size": 4}).quote
    assert capped.max_steps == 2
    assert capped.trained_tokens == round(capped.tokens_per_epoch * 2 / 7)  # ceil(27 / 4) = 7 steps per epoch
    assert "2 steps (--max-steps)" in "\n".join(quote_lines(capped))


def test_without_the_tokenizer_on_this_machine_the_quote_says_it_estimated(sqlite_db, tmp_path):
    from storage.config import Settings

    import_records(sqlite_db, enumerate(sample_conversations(12, seed=5), 1), source_file="t.jsonl", approved_by="U1")
    quote = quote_job(sqlite_db, backend="local", model="ftbot:tiny", settings=Settings(home=tmp_path)).quote
    assert quote.tokens_per_epoch > 0
    assert "an OpenAI encoding (the base model's tokenizer is not on this machine yet)" in quote_lines(quote)[-1]


def test_a_quote_says_the_job_trains_on_the_ray_cluster_and_warns_when_nodes_share_no_artifact_store(sqlite_db, tmp_path):
    from storage.config import Settings

    import_records(sqlite_db, enumerate(sample_conversations(12, seed=5), 1), source_file="t.jsonl", approved_by="U1")
    on_ray = Settings(home=tmp_path, ray_address="http://gpu-head:8265", ray_num_gpus=1.0)
    text = "\n".join(quote_lines(quote_job(sqlite_db, backend="local", model="ftbot:tiny", settings=on_ray).quote))
    assert "trains as a job on the Ray cluster (FTBOT_RAY_ADDRESS), 1 GPU(s) per process" in text
    assert "set FTBOT_ARTIFACTS_URL" in text and "gpu-head" not in text  # no infrastructure address in a Slack quote
    shared = Settings(home=tmp_path, ray_address="http://gpu-head:8265", artifacts_url="s3://models/team")
    text = "\n".join(quote_lines(quote_job(sqlite_db, backend="local", model="ftbot:tiny", settings=shared).quote))
    assert "on the Ray cluster" in text and "FTBOT_ARTIFACTS_URL" not in text
    here = "\n".join(quote_lines(quote_job(sqlite_db, backend="local", model="ftbot:tiny", settings=Settings(home=tmp_path)).quote))
    assert "Ray" not in here
