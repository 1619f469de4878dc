"""``ftbot shell``: try ftbot without a Slack workspace.

The SAME Bolt app as in production runs against ``FakeSlack`` (a fake Web API on 127.0.0.1). What you type
becomes what Slack would send: messages are posted to the fake workspace (``@ftbot`` mentions become
``app_mention`` events), ``/ft …`` becomes a signed slash-command request (other commands get Slack's kind of
answer: the app never sees them), ``:add N`` a ``message_action``, ``:react N emoji`` a reaction and its
``reaction_added`` event, ``:click N`` a ``block_actions`` payload, ``:submit`` a ``view_submission``; ``:link N``
prints a message's link, as "Copy link" would. Every request is signed with a per-session secret and goes through
``app.dispatch`` with Bolt's signature check on. What the bot sends back (messages, ephemerals, updates, modals,
files, App Home) is printed as text, Slack's markup (mentions, links, dates) as it reads in Slack. Reads commands
from stdin when it is not a terminal, so it is scriptable.
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
import shlex
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any, TextIO, cast
from urllib.parse import urlencode

from slack_bolt import BoltRequest, BoltResponse
from slack_sdk.signature import SignatureVerifier

from bot.app import bot_context, build_app
from bot.commands import COMMAND
from bot.console.fake_slack import Call, FakeSlack
from bot.console.render import Button, file_lines, is_binary, mrkdwn_to_text, render_blocks
from bot.executor import TrackingExecutor, wait_all_idle
from storage.config import Settings
from storage.db import Database
from trainers.data.imports import import_file

CHANNEL = "C0SUPPORT"
PEOPLE = {"customer": "U0CUSTOMER", "agent": "U0AGENT", "lead": "U0LEAD"}
BOT_TOKEN = "xoxb-console-not-a-real-token"
# The slash commands the app's manifest declares: Slack sends the app no others (it answers them itself).
APP_COMMANDS = (COMMAND,)

HELP = """\
Type a message to post it in #support as the current person (start with @ftbot to mention the bot).
  /ft <subcommand>        run a slash command (try /ft help)
  :as customer|agent|lead switch person (agent = support agent, lead = reviewer)
  :thread N | :main       reply in the thread of message N | post in the channel again
  :add N                  the "Add to ftbot" message shortcut on message N (opens the capture form)
  :draft N                the "Draft a reply" message shortcut on message N (a private draft by the model in use)
  :react N emoji          add a reaction to message N (:unreact N emoji removes it)
  :link N                 print the link of message N (for /ft add <link> or /ft eval add <link>)
  :click N                press button N of the last output
  :view                   show the open form;  :set F text  set field F ("\\n" for a new line)
  :submit | :cancel       submit or close the open form
  :history | :home        show the channel | open the App Home tab
  :sample                 load the bundled sample dataset (40 approved support conversations)
  :help | :quit
"""


class Console:
    """The console session: a fake workspace, the real app, and a line-oriented REPL."""

    def __init__(self, settings: Settings, db: Database, *, out: TextIO = sys.stdout, files_dir: Path | None = None):
        self.out = out
        # Binary uploads (loss curves, evaluation charts) are saved here and named in the output.
        self.files_dir = files_dir or settings.home / "console-files"
        self._print_lock = threading.Lock()
        self.fake = FakeSlack(token=BOT_TOKEN, team_domain="ftbot-console").start()
        # Everyone is in #support, as in a real support channel (auto drafts go to its agents).
        self.fake.add_channel(CHANNEL, "support", members=list(PEOPLE.values()))
        for name, user_id in PEOPLE.items():
            self.fake.add_user(user_id, name)
        secret = secrets.token_hex(16)
        roles_configured = any((settings.agents, settings.reviewers, settings.trainers, settings.admins))
        demo_roles: dict[str, Any] = {} if roles_configured else {"agents": (PEOPLE["agent"],), "reviewers": (PEOPLE["lead"],),
                                                                  "trainers": (PEOPLE["lead"],)}
        # demo_mode: with no base model configured, training uses the offline tiny model (no accounts, no downloads).
        self.settings = dataclasses.replace(settings, slack_bot_token=BOT_TOKEN, slack_signing_secret=secret,
                                            slack_app_token=None, slack_api_url=self.fake.base_url, demo_mode=True,
                                            **demo_roles)
        self._verifier = SignatureVerifier(secret)
        self.executor = TrackingExecutor(max_workers=4)
        self.app = build_app(self.settings, db, listener_executor=self.executor)
        self.bot = bot_context(self.app)
        self.user = PEOPLE["customer"]
        self.thread_ts: str | None = None
        self.numbers: dict[str, int] = {}  # message ts -> number shown
        self.by_number: dict[int, str] = {}
        self.buttons: list[Button] = []
        self.view: dict[str, Any] | None = None
        self.view_values: dict[str, str] = {}
        self.view_inputs: list[tuple[str, str, str]] = []
        self._event_seq = 0
        self.fake.subscribe(self._on_call)

    # ---- output ---------------------------------------------------------------------------------------------------
    def say(self, *lines: str) -> None:
        with self._print_lock:
            for line in lines:
                print(line, file=self.out)
            self.out.flush()

    def name_of(self, user_or_channel: str) -> str:
        if user_or_channel in self.fake.users:
            return self.fake.users[user_or_channel]["name"]
        if user_or_channel in self.fake.channels:
            return self.fake.channels[user_or_channel]["name"]
        return user_or_channel

    def _number(self, ts: str) -> int:
        if ts not in self.numbers:
            self.numbers[ts] = len(self.numbers) + 1
            self.by_number[self.numbers[ts]] = ts
        return self.numbers[ts]

    def _render(self, blocks: list[dict[str, Any]] | None, text: str, where: tuple[str, str, str]) -> list[str]:
        if blocks:
            return render_blocks(blocks, name_of=self.name_of, buttons=self.buttons, where=where)
        return ["    " + line for line in mrkdwn_to_text(text, self.name_of).splitlines()]

    def _on_call(self, call: Call, response: dict[str, Any]) -> None:
        args = call.args
        if not (response.get("ok") or call.method in ("response_url", "upload")):
            if call.method != "upload":
                self.say(f"  (Slack API {call.method} answered {response.get('error')})")
            return
        if call.method == "chat.postMessage":
            message = response["message"]
            n = self._number(message["ts"])
            arrow = " ↳" if message.get("thread_ts") and message["thread_ts"] != message["ts"] else ""
            self.say(f"#{n}{arrow} ftbot:", *self._render(args.get("blocks"), args.get("text", ""), ("message", CHANNEL, message["ts"])))
        elif call.method == "chat.update":
            n = self._number(args["ts"])
            self.say(f"#{n} ftbot (edited):", *self._render(args.get("blocks"), args.get("text", ""), ("message", CHANNEL, args["ts"])))
        elif call.method == "chat.postEphemeral":
            # Slack shows it to that person only: here everyone sees it, labelled (an auto draft goes to the agents).
            who = args.get("user") or "?"
            label = "(only you) ftbot:" if who == self.user else f"(only {self.name_of(who)} sees this) ftbot:"
            self.say(label, *self._render(args.get("blocks"), args.get("text", ""), ("ephemeral", args["channel"], "")))
        elif call.method == "response_url":
            label = "(only you, replacing the last reply) ftbot:" if args.get("replace_original") else "(only you) ftbot:"
            if args.get("response_type") == "in_channel":
                label = "ftbot (in channel):"
            self.say(label, *self._render(args.get("blocks"), args.get("text", ""), ("ephemeral", CHANNEL, "")))
        elif call.method in ("views.open", "views.update", "views.push"):
            self._show_view(response["view"])
        elif call.method == "views.publish":
            view = response["view"]
            self.say("== App Home ==", *render_blocks(view.get("blocks") or [], name_of=self.name_of, buttons=self.buttons,
                                                      where=("view", view["id"], "")))
        elif call.method in ("reactions.add", "reactions.remove"):
            number = self.numbers.get(args.get("timestamp", ""))
            verb = "reacted" if call.method == "reactions.add" else "removed its reaction"
            self.say(f"  (ftbot {verb} :{args.get('name')}: on #{number or '?'})")
        elif call.method == "files.completeUploadExternal":
            for f in response.get("files") or []:
                content = (self.fake.files.get(f["id"]) or {}).get("content") or b""
                saved_to = self._save_file(f["id"], f["name"], content) if is_binary(content) else None
                self.say(*file_lines(f["title"], f["name"], content, saved_to=saved_to))
                if args.get("initial_comment"):
                    self.say("    " + mrkdwn_to_text(args["initial_comment"], self.name_of))

    def _save_file(self, file_id: str, name: str, content: bytes) -> Path | None:
        """Keep a binary upload (a chart) where the user can open it: ``<files_dir>/<file id>-<name>``."""
        safe_name = re.sub(r"[^\w.-]+", "_", Path(name).name).strip("._") or "file"
        path = self.files_dir / f"{file_id}-{safe_name}"
        try:
            self.files_dir.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        except OSError as error:
            self.say(f"  (could not save {name} to {self.files_dir}: {error.strerror or error})")
            return None
        return path

    def _show_view(self, view: dict[str, Any]) -> None:
        changed = self.view is None or self.view.get("id") != view["id"]
        self.view = view
        if changed:
            self.view_values = {}
        inputs: list[tuple[str, str, str]] = []
        # keep what the user typed in fields whose block_id is unchanged (as Slack does)
        lines = render_blocks(view.get("blocks") or [], name_of=self.name_of, buttons=self.buttons,
                              where=("view", view["id"], ""), inputs=inputs, values=self.view_values)
        known = {block_id for block_id, _a, _l in inputs}
        self.view_values = {k: v for k, v in self.view_values.items() if k in known}
        self.view_inputs = inputs
        title = (view.get("title") or {}).get("text", "")
        actions = " · :set F text to edit, :submit" if view.get("submit") else ""
        self.say(f"┌ modal: {title}{actions} · :cancel to close", *lines, "└")

    # ---- requests to the app ----------------------------------------------------------------------------------------
    def _dispatch(self, body: str, content_type: str) -> BoltResponse:
        timestamp = str(int(time.time()))
        # slack_sdk types the signature as optional; it is None only when the timestamp or the body is.
        signature = cast(str, self._verifier.generate_signature(timestamp=timestamp, body=body))
        headers: dict[str, str | Sequence[str]] = {"Content-Type": content_type, "X-Slack-Request-Timestamp": timestamp,
                                                   "X-Slack-Signature": signature}
        response = self.app.dispatch(BoltRequest(body=body, headers=headers))
        wait_all_idle(self.executor, self.bot.work, timeout=60)
        return response

    def _interactive(self, payload: dict[str, Any]) -> BoltResponse:
        base = {"team": {"id": self.fake.team_id, "domain": self.fake.team_domain},
                "user": {"id": self.user, "name": self.name_of(self.user), "team_id": self.fake.team_id},
                "api_app_id": "A0FTBOT", "token": "console", "trigger_id": self.fake.new_trigger_id()}
        return self._dispatch(urlencode({"payload": json.dumps({**base, **payload})}), "application/x-www-form-urlencoded")

    def _event(self, event: dict[str, Any]) -> None:
        self._event_seq += 1
        body = {"type": "event_callback", "team_id": self.fake.team_id, "api_app_id": "A0FTBOT", "event": event,
                "event_id": f"EvConsole{secrets.token_hex(4)}{self._event_seq}", "event_time": int(time.time()),
                "authorizations": [{"team_id": self.fake.team_id, "user_id": self.fake.bot_user_id, "is_bot": True}]}
        self._dispatch(json.dumps(body), "application/json")

    # ---- commands ---------------------------------------------------------------------------------------------------
    def _message_ts(self, arg: str) -> str:
        try:
            return self.by_number[int(arg.lstrip("#"))]
        except (ValueError, KeyError):
            if not self.by_number:
                raise ValueError(f"there is no message #{arg.lstrip('#')}: nothing has been posted yet") from None
            existing = "the only message is #1" if len(self.by_number) == 1 else f"messages are #1–#{len(self.by_number)}"
            raise ValueError(f"there is no message #{arg.lstrip('#')} ({existing}; :history lists them)") from None

    def _message_channel(self, ts: str) -> str:
        """The channel of a numbered message: #support, or another conversation the bot posted in (a DM)."""
        if self.fake.find_message(CHANNEL, ts) is not None:
            return CHANNEL
        return next((cid for cid in list(self.fake.channels) if self.fake.find_message(cid, ts) is not None), CHANNEL)

    def post(self, text: str) -> None:
        mentions_bot = "@ftbot" in text
        slack_text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace(
            "@ftbot", f"<@{self.fake.bot_user_id}>")
        message = self.fake.post_message(CHANNEL, self.user, slack_text, thread_ts=self.thread_ts)
        n = self._number(message["ts"])
        arrow = " ↳" if self.thread_ts else ""
        self.say(f"#{n}{arrow} {self.name_of(self.user)}: {text}")
        # Slack sends a message event for every message in a channel the app reads (message.channels), mentions too.
        posted = {"type": "message", "user": self.user, "text": slack_text, "ts": message["ts"], "channel": CHANNEL,
                  "event_ts": message["ts"], "channel_type": "channel"}
        if self.thread_ts:
            posted.update(thread_ts=self.thread_ts,
                          parent_user_id=(self.fake.find_message(CHANNEL, self.thread_ts) or {}).get("user"))
        self._event(posted)
        if mentions_bot:
            event = {"type": "app_mention", "user": self.user, "text": slack_text, "ts": message["ts"], "channel": CHANNEL,
                     "event_ts": message["ts"]}
            if self.thread_ts:
                event["thread_ts"] = self.thread_ts
            self._event(event)

    def slash(self, line: str) -> None:
        command, _, text = line.partition(" ")
        if command not in APP_COMMANDS:
            # Slack answers a command no installed app declares itself; sending it to the app would only get
            # Bolt's "unhandled request" hint for developers (code to add a listener), not an answer for a user.
            self._unknown_command(command)
            return
        body = urlencode({"token": "console", "team_id": self.fake.team_id, "team_domain": self.fake.team_domain,
                          "channel_id": CHANNEL, "channel_name": "support", "user_id": self.user,
                          "user_name": self.name_of(self.user), "command": command, "text": text.strip(),
                          "api_app_id": "A0FTBOT", "response_url": self.fake.response_url(),
                          "trigger_id": self.fake.new_trigger_id()})
        response = self._dispatch(body, "application/x-www-form-urlencoded")
        if response.status == 404:
            self._unknown_command(command)

    def _unknown_command(self, command: str) -> None:
        self.say(f"  Unknown command {command}. ftbot answers {COMMAND} — try {COMMAND} help.")

    def link(self, number: str) -> None:
        """Print message N's permalink, as chat.getPermalink gives it (what "Copy link" copies in Slack)."""
        ts = self._message_ts(number)
        answer = self.fake.call_method("chat.getPermalink", {"channel": self._message_channel(ts), "message_ts": ts})
        if not answer.get("ok"):
            raise ValueError(f"message #{number.lstrip('#')} has no link ({answer.get('error')}): it was deleted")
        self.say(f"  {answer['permalink']}")

    def shortcut(self, number: str, callback_id: str = "ft_add_message") -> None:
        ts = self._message_ts(number)
        message = dict(self.fake.find_message(CHANNEL, ts) or {})
        self._interactive({"type": "message_action", "callback_id": callback_id, "channel": {"id": CHANNEL, "name": "support"},
                           "message_ts": ts, "message": message, "response_url": self.fake.response_url()})

    def react(self, number: str, emoji: str, *, added: bool = True) -> None:
        """Add or remove the current person's reaction, then deliver the event, in Slack's order: the bot may ask
        ``reactions.get`` what is left (a voter's other vote reaction), so the workspace must already show it."""
        ts, name, shown = self._message_ts(number), emoji.strip(":"), f"#{number.lstrip('#')}"
        channel = self._message_channel(ts)
        who = self.name_of(self.user)
        if added and not self.fake.add_reaction(channel, ts, name, self.user):
            raise ValueError(f"{who} already reacted :{name}: on {shown}")
        if not added and not self.fake.remove_reaction(channel, ts, name, self.user):
            raise ValueError(f"{who} has no :{name}: reaction on {shown} to remove")
        message = self.fake.find_message(channel, ts) or {}
        self._event({"type": "reaction_added" if added else "reaction_removed", "user": self.user,
                     "reaction": name, "item_user": message.get("user"),
                     "item": {"type": "message", "channel": channel, "ts": ts}, "event_ts": self.fake.next_ts()})
        self.say(f"  ({who} {'reacted' if added else 'removed'} :{name}: on {shown})")

    def _state_values(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for block in (self.view or {}).get("blocks") or []:
            if block.get("type") == "input":
                element = block.get("element") or {}
                value = self.view_values.get(block["block_id"], element.get("initial_value"))
                values[block["block_id"]] = {element.get("action_id", "value"): {"type": "plain_text_input", "value": value}}
        return values

    def click(self, number: str) -> None:
        try:
            button = self.buttons[int(number) - 1]
        except (ValueError, IndexError):
            raise ValueError(f"there is no button {number}") from None
        action = {"type": "button", "action_id": button.action_id, "block_id": button.block_id, "value": button.value,
                  "text": {"type": "plain_text", "text": button.label}, "action_ts": self.fake.next_ts()}
        kind, place, ts = button.where
        payload: dict[str, Any] = {"type": "block_actions", "actions": [action]}
        if kind == "view":
            view = self.view if self.view and self.view["id"] == place else None
            view = view or self.fake.views.get(place) or self.fake.home_views.get(self.user)
            payload["container"] = {"type": "view", "view_id": place}
            payload["view"] = {**(view or {}), "state": {"values": self._state_values()}}
        else:
            payload["container"] = {"type": "message", "message_ts": ts, "channel_id": place, "is_ephemeral": kind == "ephemeral"}
            payload["channel"] = {"id": place, "name": self.name_of(place)}
            payload["response_url"] = self.fake.response_url()
            if kind == "message":
                payload["message"] = dict(self.fake.find_message(place, ts) or {"ts": ts})
        self._interactive(payload)

    def set_field(self, number: str, text: str) -> None:
        if self.view is None:
            raise ValueError("no form is open")
        try:
            block_id, _action, label = self.view_inputs[int(number) - 1]
        except (ValueError, IndexError):
            raise ValueError(f"the form has no field {number}") from None
        self.view_values[block_id] = text.replace("\\n", "\n")
        self.say(f"  field {number} ({label}) set")

    def submit(self) -> None:
        if self.view is None or not self.view.get("submit"):
            raise ValueError("no form to submit")
        view = {**self.view, "state": {"values": self._state_values()}}
        response = self._interactive({"type": "view_submission", "view": view, "response_urls": []})
        body = json.loads(response.body) if response.body else {}
        if body.get("response_action") == "errors":
            numbers = {block_id: i + 1 for i, (block_id, _a, _l) in enumerate(self.view_inputs)}
            self.say("  The form has errors:", *(f"    field {numbers.get(k, '?')}: {v}" for k, v in body["errors"].items()))
        else:
            self.view = None
            self.say("  (form submitted)")

    def cancel(self) -> None:
        if self.view is not None:
            self._interactive({"type": "view_closed", "view": self.view, "is_cleared": False})
            self.view = None
        self.say("  (form closed)")

    def load_sample(self) -> None:
        with as_file(files("bot") / "data" / "sample.jsonl") as path:
            result = import_file(self.bot.db, path, approved_by="console", max_line_bytes=self.bot.settings.max_line_bytes)
        self.say(f"  (sample dataset: {result.added} examples added, {result.unchanged} already there;"
                 " try /ft validate, /ft price or /ft train local)")

    def history(self) -> None:
        for message in self.fake.channels[CHANNEL]["messages"]:
            n = self._number(message["ts"])
            who = "ftbot" if message.get("bot_id") else self.name_of(message.get("user", "?"))
            arrow = " ↳" if message.get("thread_ts") and message["thread_ts"] != message["ts"] else ""
            self.say(f"#{n}{arrow} {who}: {mrkdwn_to_text(message.get('text', ''), self.name_of)}")

    def handle(self, line: str) -> bool:
        """Run one input line; False means quit."""
        line = line.strip()
        if not line:
            return True
        try:
            if line.startswith("/"):
                self.slash(line)
            elif line.startswith(":"):
                command, *rest = shlex.split(line[1:]) if line.count('"') % 2 == 0 else line[1:].split()
                raw_rest = line[1:].split(None, 1)[1] if len(line[1:].split(None, 1)) > 1 else ""
                return self._colon(command.lower(), rest, raw_rest)
            else:
                self.post(line)
        except ValueError as exc:
            self.say(f"  ! {exc}")
        return True

    def _colon(self, command: str, args: list[str], raw: str) -> bool:
        if command in ("quit", "exit", "q"):
            return False
        if command == "help":
            self.say(HELP)
        elif command == "as":
            who = (args or [""])[0].lower()
            if who not in PEOPLE:
                raise ValueError("use :as customer, :as agent or :as lead")
            self.user = PEOPLE[who]
            self.say(f"  (you are now {who})")
        elif command == "thread":
            ts = self._message_ts((args or [""])[0])
            message = self.fake.find_message(CHANNEL, ts) or {}
            self.thread_ts = message.get("thread_ts") or ts
            self.say(f"  (replying in the thread of #{self._number(self.thread_ts)})")
        elif command == "main":
            self.thread_ts = None
            self.say("  (posting in #support)")
        elif command == "add":
            self.shortcut((args or [""])[0])
        elif command == "draft":
            self.shortcut((args or [""])[0], "ft_draft_message")
        elif command in ("react", "unreact"):
            if len(args) < 2:
                raise ValueError(f"usage: :{command} N emoji")
            self.react(args[0], args[1], added=command == "react")
        elif command == "link":
            if not args:
                raise ValueError("usage: :link N")
            self.link(args[0])
        elif command == "click":
            self.click((args or [""])[0])
        elif command == "view":
            if self.view is None:
                raise ValueError("no form is open")
            self._show_view(self.view)
        elif command == "set":
            number, _, text = raw.partition(" ")
            self.set_field(number, text)
        elif command == "submit":
            self.submit()
        elif command == "cancel":
            self.cancel()
        elif command == "sample":
            self.load_sample()
        elif command == "history":
            self.history()
        elif command == "home":
            self._event({"type": "app_home_opened", "user": self.user, "channel": "D0HOME", "tab": "home",
                         "event_ts": self.fake.next_ts()})
        else:
            raise ValueError(f"unknown command :{command}; :help lists them")
        return True

    def run(self, lines: Iterable[str] | None = None, *, prompt: Callable[[], str] | None = None) -> None:
        """The REPL: from ``lines`` (a script / piped stdin) or interactively with ``input()``."""
        self.say("ftbot console — a local Slack workspace with #support, and you as `customer` (:as agent, :as lead).",
                 "Type :help for commands, :quit to leave.")
        if lines is not None:
            for line in lines:
                if line.strip() and not line.lstrip().startswith("#!"):
                    self.say(f"> {line.rstrip()}")
                if not self.handle(line):
                    break
            return
        while True:
            try:
                line = input(prompt() if prompt else f"[{self.name_of(self.user)}{' ↳' if self.thread_ts else ''}] > ")
            except (EOFError, KeyboardInterrupt):
                self.say("")
                break
            if not self.handle(line):
                break

    def close(self) -> None:
        wait_all_idle(self.executor, self.bot.work, timeout=30)
        self.bot.close()  # stops ftbot's drafting process, if a draft started it
        self.executor.shutdown(wait=True)
        self.bot.work.shutdown(wait=True)
        self.fake.stop()


def run_console(settings: Settings, db: Database, *, stdin: TextIO = sys.stdin, out: TextIO = sys.stdout) -> None:
    console = Console(settings, db, out=out)
    try:
        console.run(None if stdin.isatty() else stdin)
    finally:
        console.close()
