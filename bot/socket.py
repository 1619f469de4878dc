"""Socket Mode: the app connects out to Slack over a WebSocket (no public URL; Slack signs nothing here).

Needs ``SLACK_APP_TOKEN`` (``xapp-…``, scope ``connections:write``). Retries arrive with ``retry_attempt``,
which Bolt maps onto the same ``X-Slack-Retry-Num`` header as HTTP mode, so deduplication is shared.
"""

from __future__ import annotations

import logging

from slack_bolt import App
from slack_bolt.adapter.socket_mode import SocketModeHandler

log = logging.getLogger(__name__)


def build_handler(app: App, app_token: str) -> SocketModeHandler:
    # The Socket Mode client talks to apps.connections.open through the app's own client settings (base_url).
    return SocketModeHandler(app, app_token, trace_enabled=False)


def serve(app: App, app_token: str) -> None:
    """Connect and serve until interrupted (``ftbot run`` with ``SLACK_APP_TOKEN``)."""
    log.info("ftbot connecting to Slack in Socket Mode")
    build_handler(app, app_token).start()
