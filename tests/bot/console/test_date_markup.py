"""Slack's ``<!date^…>`` markup, rendered as the console's reader would see it in Slack."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from bot.console.date_markup import render_date
from bot.console.render import mrkdwn_to_text

# Slack's own example: 1392734382 is Tuesday 2014-02-18 14:39:42 UTC.
STAMP = 1392734382
NOW = datetime(2014, 2, 18, 20, 0, tzinfo=UTC)


@pytest.mark.parametrize(("tokens", "shown"), [
    ("{date_num}", "2014-02-18"),
    ("{date}", "February 18th, 2014"),
    ("{date_short}", "Feb 18, 2014"),
    ("{date_long}", "Tuesday, February 18th, 2014"),
    ("{date_pretty}", "today"),
    ("{date_short_pretty} at {time}", "today at 14:39"),
    ("{date_long_pretty}", "today"),
    ("Posted {date_num} {time_secs}", "Posted 2014-02-18 14:39:42"),
    ("{ago}", "5 hours ago"),
])
def test_tokens(tokens, shown):
    assert render_date(f"!date^{STAMP}^{tokens}", "fallback", now=NOW, tz=UTC) == shown


def test_pretty_dates_away_from_today_and_ordinals():
    def pretty(now: datetime) -> str:
        return render_date(f"!date^{STAMP}^{{date_pretty}}", "", now=now, tz=UTC)

    assert pretty(NOW + timedelta(days=1)) == "yesterday"
    assert pretty(NOW - timedelta(days=1)) == "tomorrow"
    assert pretty(NOW + timedelta(days=3)) == "February 18th, 2014"
    for day, ordinal in ((1, "1st"), (2, "2nd"), (3, "3rd"), (11, "11th"), (12, "12th"), (22, "22nd"), (23, "23rd")):
        stamp = int(datetime(2024, 3, day, 12, tzinfo=UTC).timestamp())
        assert render_date(f"!date^{stamp}^{{date}}", "", now=NOW, tz=UTC) == f"March {ordinal}, 2024"


def test_ago_in_the_past_and_the_future():
    def ago(seconds: int) -> str:
        return render_date(f"!date^{STAMP}^{{ago}}", "", now=datetime.fromtimestamp(STAMP + seconds, UTC), tz=UTC)

    assert (ago(20), ago(60), ago(150), ago(2 * 86400), ago(400 * 86400)) == (
        "just now", "1 minute ago", "2 minutes ago", "2 days ago", "1 year ago")
    assert (ago(-3600), ago(-3 * 86400)) == ("in 1 hour", "in 3 days")


def test_the_readers_time_zone_decides_the_day_and_time():
    tokyo = timezone(timedelta(hours=9))
    assert render_date(f"!date^{STAMP}^{{date_num}} {{time}}", "", now=NOW, tz=tokyo) == "2014-02-18 23:39"
    # At 14:00 UTC on the 18th (23:00 in Tokyo), 17:39 UTC is later today in London and already tomorrow in Tokyo.
    late, now = STAMP + 3 * 3600, datetime(2014, 2, 18, 14, 0, tzinfo=UTC)
    assert render_date(f"!date^{late}^{{date_short_pretty}} at {{time}}", "", now=now, tz=UTC) == "today at 17:39"
    assert render_date(f"!date^{late}^{{date_short_pretty}} at {{time}}", "", now=now, tz=tokyo) == "tomorrow at 02:39"


def test_unknown_tokens_and_bad_timestamps_show_the_fallback():
    assert render_date(f"!date^{STAMP}^{{date}} {{weekday_emoji}}", "Feb 18", now=NOW, tz=UTC) == "Feb 18"
    assert render_date("!date^soon^{date}", "some day", now=NOW, tz=UTC) == "some day"
    assert render_date(f"!date^{STAMP}", "Feb 18", now=NOW, tz=UTC) == "Feb 18"  # no token string at all


def test_the_optional_link_is_shown_after_the_date():
    target = f"!date^{STAMP}^{{date_short}}^https://example.com/changelog?a=1"
    assert render_date(target, "x", now=NOW, tz=UTC) == "Feb 18, 2014 (https://example.com/changelog?a=1)"


def test_mrkdwn_renders_dates_in_local_time_among_other_markup():
    text = f"<@U1> voting closes <!date^{STAMP}^{{date_num}} at {{time_secs}}|Feb 18 &amp; later> (<!here>)"
    local = datetime.fromtimestamp(STAMP)
    assert mrkdwn_to_text(text, lambda user: {"U1": "lee"}.get(user, user)) == f"@lee voting closes {local:%Y-%m-%d at %H:%M:%S} (@here)"
    assert mrkdwn_to_text(f"<!date^{STAMP}^{{nope}}|Feb 18 &amp; later>") == "Feb 18 & later"
