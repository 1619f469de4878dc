"""Slack's date markup as the console shows it: ``<!date^1392734382^{date_short} at {time}|fallback>``.

Slack's clients render the timestamp in each reader's own time zone, so messages that name a moment (the bot's
"Voting closes …") use this markup instead of a fixed UTC time. The console is one reader at one terminal: it
renders in the machine's local time zone. Formats follow Slack's English ones (``{date}`` is "February 18th,
2014"); times are 24-hour, like the fallback texts the bot writes. A token Slack has that this module does not
know, or a timestamp that is not a number, shows the fallback text, as an older Slack client would.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, tzinfo

# English names, not the locale's (``%B``): Slack renders these tokens in English, and tests must not depend on LANG.
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_TOKEN = re.compile(r"\{(\w+)\}")


def _ordinal(day: int) -> str:
    suffix = "th" if 11 <= day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def _date(moment: datetime) -> str:
    return f"{_MONTHS[moment.month - 1]} {_ordinal(moment.day)}, {moment.year}"


def _date_short(moment: datetime) -> str:
    return f"{_MONTHS[moment.month - 1][:3]} {moment.day}, {moment.year}"


def _date_long(moment: datetime) -> str:
    return f"{_WEEKDAYS[moment.weekday()]}, {_date(moment)}"


def _pretty(plain: Callable[[datetime], str]) -> Callable[[datetime, datetime], str]:
    """Slack's ``*_pretty`` tokens: "today", "yesterday" or "tomorrow" when they apply, else the plain format."""

    def render(moment: datetime, now: datetime) -> str:
        days = (moment.date() - now.date()).days
        return {-1: "yesterday", 0: "today", 1: "tomorrow"}.get(days) or plain(moment)

    return render


def _ago(moment: datetime, now: datetime) -> str:
    """Slack's ``{ago}``: "3 minutes ago", or "in 2 days" for a moment still to come."""
    seconds = round((now - moment).total_seconds())
    size = abs(seconds)
    if size < 60:
        return "just now"
    for unit, length in (("year", 365 * 86400), ("month", 30 * 86400), ("day", 86400), ("hour", 3600), ("minute", 60)):
        if size >= length:
            count = size // length
            amount = f"{count} {unit}{'s' if count != 1 else ''}"
            return f"{amount} ago" if seconds > 0 else f"in {amount}"
    raise AssertionError("unreachable: a minute or more matches a unit")


_FORMATS: dict[str, Callable[[datetime, datetime], str]] = {
    "date_num": lambda moment, _now: f"{moment:%Y-%m-%d}",
    "date": lambda moment, _now: _date(moment),
    "date_short": lambda moment, _now: _date_short(moment),
    "date_long": lambda moment, _now: _date_long(moment),
    "date_pretty": _pretty(_date),
    "date_short_pretty": _pretty(_date_short),
    "date_long_pretty": _pretty(_date_long),
    "time": lambda moment, _now: f"{moment:%H:%M}",
    "time_secs": lambda moment, _now: f"{moment:%H:%M:%S}",
    "ago": _ago,
}


def render_date(target: str, fallback: str, *, now: datetime | None = None, tz: tzinfo | None = None) -> str:
    """The text for ``<target|fallback>`` where `target` is ``!date^UNIX_TS^TOKEN_STRING`` (then ``^link``, optional).

    `tz` is the reader's time zone (the machine's local one when None); `now` is for the relative tokens.
    """
    _marker, _, rest = target.partition("^")
    stamp, _, rest = rest.partition("^")
    # The token string comes before the optional link, and a URL may itself contain "^": split once only.
    tokens, _, link = rest.partition("^")
    try:
        moment = datetime.fromtimestamp(int(stamp), tz).astimezone(tz)
    except (ValueError, OverflowError, OSError):
        return fallback
    now = (now or datetime.now(tz)).astimezone(tz)
    unknown = [name for name in _TOKEN.findall(tokens) if name not in _FORMATS]
    if unknown or not tokens:
        return fallback or tokens
    text = _TOKEN.sub(lambda match: _FORMATS[match.group(1)](moment, now), tokens)
    return f"{text} ({link})" if link else text


def is_date_markup(target: str) -> bool:
    return target.startswith("!date^")

