"""The local console: the real Bolt app against an in-process fake Slack (``ftbot shell``)."""
