"""Price table, default epochs, billed tokens, training/inference cost, ROI and on-prem estimates."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.config import Settings
from storage.errors import ConfigError
from trainers.data.pricing import (
    DEFAULT_PRICES_FILE,
    PriceTable,
    billed_tokens,
    default_epochs,
    inference_cost,
    load_price_table,
    on_prem_estimate,
    roi_estimate,
    training_cost,
)


@pytest.mark.parametrize(
    ("examples", "epochs"),
    [(5, 20), (10, 10), (20, 5), (33, 3), (100, 3), (8333, 3), (8334, 2), (12500, 2), (25000, 1)],
)
def test_default_epochs_check_values(examples: int, epochs: int) -> None:
    assert default_epochs(examples) == epochs


def test_default_epochs_edges() -> None:
    assert default_epochs(1) == 25  # 100 // 1 capped at 25
    assert default_epochs(100_000) == 1  # never below one epoch
    with pytest.raises(ValueError):
        default_epochs(0)


def test_bundled_table_has_the_reference_prices() -> None:
    table = PriceTable.load(DEFAULT_PRICES_FILE)
    assert table.as_of == "2026-11-01"
    expected = {
        "gpt-4.1-2025-04-14": (25, 3.00, 12.00),
        "gpt-4.1-mini-2025-04-14": (5, 0.80, 3.20),
        "gpt-4.1-nano-2025-04-14": (1.50, 0.20, 0.80),
        "gpt-4o-2024-08-06": (25, 3.75, 15.00),
        "gpt-4o-mini-2024-07-18": (3, 0.30, 1.20),
        "gpt-3.5-turbo-0125": (8, 3.00, 6.00),
    }
    assert {m.name: (m.training, m.input, m.output) for m in table.fine_tunable()} == expected
    assert (table.get("gpt-4o-mini").base_input, table.get("gpt-4o-mini").base_output) == (0.15, 0.60)
    assert (table.get("gpt-4o").base_input, table.get("gpt-4o").base_output) == (2.50, 10.00)
    assert (table.get("gpt-4.1").base_input, table.get("gpt-4.1").base_output) == (2.00, 8.00)
    assert table.context_limit("gpt-4o-mini-2024-07-18") == 65536
    assert table.context_limit("gpt-3.5-turbo-0125") == 16385
    assert table.get("ft:gpt-4o-mini-2024-07-18:acme::abc").name == "gpt-4o-mini-2024-07-18"


def test_openai_worked_example_100k_tokens_3_epochs_gpt4o_mini() -> None:
    table = load_price_table()
    billed = billed_tokens([1_000] * 100, 3, table.context_limit("gpt-4o-mini"))  # 100k tokens in 100 examples
    assert billed == 300_000
    assert training_cost(table.get("gpt-4o-mini"), billed) == pytest.approx(0.90)


def test_billed_tokens_cap_each_example_at_the_limit() -> None:
    assert billed_tokens([100, 70_000, 16_385, 20_000], 2, 16_385) == 2 * (100 + 16_385 + 16_385 + 16_385)


def test_override_file_through_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    custom = tmp_path / "prices.toml"
    custom.write_text(
        'as_of = "2027-01-01"\nsource = "our contract"\n[models."my-model"]\ntraining = 10\ninput = 1\noutput = 2\ncontext_limit = 1000\n'
    )
    monkeypatch.setenv("FTBOT_PRICES_FILE", str(custom))
    table = load_price_table(Settings.from_env().prices_file)
    assert table.as_of == "2027-01-01"
    assert table.get("my-model").training == 10
    assert table.context_limit("my-model") == 1000
    with pytest.raises(ConfigError, match="no prices for model 'gpt-4o'"):
        table.get("gpt-4o")
    # Edited on disk: re-read.
    custom.write_text('as_of = "2027-02-01"\n[models."my-model"]\ntraining = 12\n')
    assert load_price_table(Settings.from_env().prices_file).get("my-model").training == 12


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not toml [", "not valid TOML"),
        ('[models."x"]\ntraining = 1\n', "no as_of date"),
        ('as_of = "2026-01-01"\n[models."x"]\ntraining = -1\n', "must be a price >= 0"),
    ],
)
def test_broken_price_tables_are_clear_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        PriceTable.load(path)
    with pytest.raises(ConfigError, match="not found"):
        PriceTable.load(tmp_path / "missing.toml")


def test_inference_cost_fine_tuned_and_base() -> None:
    mini = load_price_table().get("gpt-4o-mini")
    # 1M in + 1M out
    assert inference_cost(mini, input_tokens=1e6, output_tokens=1e6) == pytest.approx(0.30 + 1.20)
    assert inference_cost(mini, input_tokens=1e6, output_tokens=1e6, fine_tuned=False) == pytest.approx(0.15 + 0.60)


def test_roi_dropping_a_long_prompt_pays_back() -> None:
    table = load_price_table()
    roi = roi_estimate(
        table, baseline_model="gpt-4o", fine_tuned_model="gpt-4o-mini", daily_requests=10_000,
        prompt_tokens=2_500, prompt_tokens_saved=2_000, completion_tokens=200, training_cost_usd=9.0,
    )
    today = 10_000 * (2_500 * 2.50 + 200 * 10.00) / 1e6  # gpt-4o base: $82.50/day
    after = 10_000 * (500 * 0.30 + 200 * 1.20) / 1e6  # ft gpt-4o-mini without the long prompt: $3.90/day
    assert roi.daily_cost_today_usd == pytest.approx(today)
    assert roi.daily_cost_fine_tuned_usd == pytest.approx(after)
    assert roi.daily_savings_usd == pytest.approx(today - after)
    assert roi.monthly_savings_usd == pytest.approx(30 * (today - after))
    assert roi.break_even_days == pytest.approx(9.0 / (today - after))


def test_roi_that_never_pays_back() -> None:
    roi = roi_estimate(
        load_price_table(), baseline_model="gpt-4o-mini", fine_tuned_model="gpt-4o-mini", daily_requests=100,
        prompt_tokens=300, prompt_tokens_saved=0, completion_tokens=100, training_cost_usd=5.0,
    )
    assert roi.daily_savings_usd < 0  # fine-tuned tokens cost twice the base ones
    assert roi.break_even_days is None


def test_roi_rejects_impossible_inputs() -> None:
    with pytest.raises(ConfigError, match="cannot exceed"):
        roi_estimate(load_price_table(), baseline_model="gpt-4o", fine_tuned_model="gpt-4o-mini", daily_requests=1,
                     prompt_tokens=100, prompt_tokens_saved=200, completion_tokens=10, training_cost_usd=1)


def test_on_prem_estimate() -> None:
    estimate = on_prem_estimate(7_200_000, gpu_hour_price=2.5, tokens_per_second=2_000)
    assert estimate.gpu_hours == pytest.approx(1.0)
    assert estimate.cost_usd == pytest.approx(2.5)
    with pytest.raises(ConfigError):
        on_prem_estimate(1, gpu_hour_price=1, tokens_per_second=0)
