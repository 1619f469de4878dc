"""Reply drafts in Slack: the model in use drafts a reply in a customer thread, privately to the agent who asked.

- ``bot.drafts.ask``: the ways to ask (`@ftbot draft`, the *Draft a reply* shortcut, `/ft draft <link>`) and auto mode
  (`/ft drafts on|off`).
- ``bot.drafts.request``: one pipeline for all of them: the thread as chat turns, the model's draft, stored once per
  request, shown privately.
- ``bot.drafts.views``: the private draft with Send / Edit… / Discard, the two modals, the reply Send posts.
- ``bot.drafts.actions``: the buttons and the modals' submissions (each decision acts once).
- ``bot.drafts.events``: message events: auto-mode questions, and an agent's own reply after a discarded draft.

Storage is ``storage.drafts``; generation ``trainers.drafts.generate``; statistics ``trainers.drafts.stats``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from slack_bolt import App

from bot.drafts import actions, ask, events

if TYPE_CHECKING:  # bot.app imports every feature (so this package): a type-only import avoids the cycle
    from bot.app import BotContext


def register(app: App, bot: BotContext) -> None:
    """Add the drafts' listeners to the Bolt `app`, their /ft subcommands to `bot.router`, `draft` to the mentions."""
    ask.register(app, bot)
    actions.register(app, bot)
    events.register(app, bot)
