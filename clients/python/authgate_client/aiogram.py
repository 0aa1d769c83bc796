"""Anti-spam admission for aiogram 3 bots: every message and button press
goes through authgate's Admit before its handler runs.

Needs aiogram (`pip install authgate-client[aiogram]`); the rest of the
package does not.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Awaitable, Callable, Dict, Iterable, Optional, Union

import grpc
from aiogram import BaseMiddleware
from aiogram.types import CallbackQuery, Message, TelegramObject, Update

from ._proto.authgate.v1 import access_pb2
from .client import OUTAGE, AuthgateClient

Handler = Callable[[TelegramObject, Dict[str, Any]], Awaitable[Any]]

# The message fields that make an update of the "media" kind. Animations and
# video notes are media to a user as much as videos are, so a flood of them
# counts against the media limit rather than the text one.
_MEDIA_FIELDS = (
    "photo",
    "video",
    "document",
    "audio",
    "voice",
    "sticker",
    "animation",
    "video_note",
)


class AdmissionTexts:
    """What the user is told when an update is not handled.

    Subclass it and override any method to reword (or translate) a text;
    return None to say nothing. `alert` is true for a button press, whose
    answer is a pop-up that Telegram cuts at 200 characters.
    """

    def blocked(self, response: access_pb2.AdmitResponse, *, alert: bool) -> Optional[str]:
        verdict = response.verdict
        if verdict.permanent:
            left = "until an admin lifts the block"
        else:
            left = self.duration(verdict.retry_after_seconds)
        if alert:
            return f"🚫 Blocked: {left}"
        lines = ["🚫 You are blocked for spam.", "", f"⏳ Time left: {left}"]
        # No block number: the lock comes from the context's failure rules
        # (the bot's own record_failure calls), not from admission.
        if response.block_number:
            lines.append(f"⚠️ Cause: {self.cause(response.block_cause)}")
            lines.append(f"📊 Block #{response.block_number}")
        return "\n".join(lines)

    def warning(self, response: access_pb2.AdmitResponse, *, alert: bool) -> Optional[str]:
        if alert:
            return f"⚠️ Warning {response.warnings}/{response.warning_limit}"
        return (
            f"⚠️ Warning #{response.warnings}\n\n"
            "You are sending requests too often!\n"
            f"Limit: {response.limit} requests per {self.duration(response.window_seconds)}\n\n"
            f"At {response.warning_limit} warnings you will be blocked."
        )

    def denied(self, response: access_pb2.AdmitResponse, *, alert: bool) -> Optional[str]:
        # A user the bot's allow list does not name: answering each of their
        # updates would only give a stranger a way to make the bot talk.
        return None

    def unavailable(self, *, alert: bool) -> Optional[str]:
        return "⏳ The bot cannot take requests right now. Try again in a minute."

    def cause(self, cause: access_pb2.SpamCause) -> str:
        return {
            access_pb2.SPAM_CAUSE_RATE_LIMIT: "too many requests",
            access_pb2.SPAM_CAUSE_IDENTICAL_MESSAGES: "the same message again and again",
            access_pb2.SPAM_CAUSE_CALLBACK_SPAM: "the same button again and again",
            access_pb2.SPAM_CAUSE_MEDIA_FLOOD: "too many media files",
        }.get(cause, "spam")

    def duration(self, seconds: int) -> str:
        # Rounded up: "1 min" while 119 s remain would send the user back
        # into a block that has not ended.
        if seconds < 60:
            return f"{seconds} s"
        if seconds < 3600:
            return f"{math.ceil(seconds / 60)} min"
        return f"{math.ceil(seconds / 3600)} h"


class AdmissionMiddleware(BaseMiddleware):
    """Admits each message and button press through authgate's Admit.

    Register it as an outer middleware, so that updates no handler matches
    are counted too::

        gate = AdmissionMiddleware(client, admin_ids={OWNER_ID})
        dp.message.outer_middleware(gate)
        dp.callback_query.outer_middleware(gate)

    (or once, as `dp.update.outer_middleware(gate)`). An admitted update
    reaches its handler with the AdmitResponse in `data["admission"]`, so a
    handler can still see a warning that did not refuse it. A refused one
    is answered with `texts` (see AdmissionTexts) and never handled. Users
    in `admin_ids` are handled without asking authgate, as are updates
    without a user (channel posts) and events other than messages and
    button presses; their `data["admission"]` is None.

    When authgate cannot answer (down, overloaded, too slow) the middleware
    fails closed, telling the user `texts.unavailable`, unless `fail_open`;
    every other error propagates, so a wrong context or kind cannot pass as
    an admitted update.
    """

    def __init__(
        self,
        client: AuthgateClient,
        context: str = "bot",
        *,
        admin_ids: Iterable[int] = (),
        fail_open: bool = False,
        texts: Optional[AdmissionTexts] = None,
    ) -> None:
        self.client = client
        self.context = context
        self.admin_ids = frozenset(admin_ids)
        self.fail_open = fail_open
        self.texts = texts or AdmissionTexts()

    def classify(self, event: Union[Message, CallbackQuery]) -> tuple[str, bytes]:
        """The update's kind and fingerprint (the README has the table).
        Override it for a context with kinds of its own."""
        if isinstance(event, CallbackQuery):
            return "callback", _fingerprint(event.data)
        text = event.text or event.caption
        # Servers older than Bot API 7.0 set only forward_date.
        if event.forward_origin is not None or event.forward_date is not None:
            kind = "forward"
        # Only a message's own text is a command: a "/" caption on a photo or
        # a forwarded "/start" would otherwise escape every limit.
        elif event.text and event.text.startswith("/"):
            kind = "command"
        elif any(getattr(event, field) is not None for field in _MEDIA_FIELDS):
            kind = "media"
        else:
            kind = "text"
        return kind, _fingerprint(text)

    async def __call__(self, handler: Handler, event: TelegramObject, data: Dict[str, Any]) -> Any:
        # At the update level the message or button press is inside.
        inner = event.event if isinstance(event, Update) else event
        user = getattr(inner, "from_user", None)
        if (
            not isinstance(inner, (Message, CallbackQuery))
            or user is None
            or user.id in self.admin_ids
        ):
            data["admission"] = None
            return await handler(event, data)
        kind, fingerprint = self.classify(inner)
        try:
            response = await self.client.admit(self.context, user.id, kind, fingerprint)
        except grpc.aio.AioRpcError as error:
            if error.code() not in OUTAGE:
                raise
            if self.fail_open:
                data["admission"] = None
                return await handler(event, data)
            await _tell(inner, self.texts.unavailable(alert=isinstance(inner, CallbackQuery)))
            return None
        if response.admitted:
            data["admission"] = response
            return await handler(event, data)
        await _tell(inner, self._refusal(response, alert=isinstance(inner, CallbackQuery)))
        return None

    def _refusal(self, response: access_pb2.AdmitResponse, *, alert: bool) -> Optional[str]:
        # The verdict is the most severe of admission's and the context's
        # other rules, so it (not `warning`) says what stopped the update:
        # "rate_limited" is one update too many, which warns; any other
        # block is a block, even one this update's warning started.
        verdict = response.verdict
        if verdict.decision != access_pb2.DECISION_BLOCKED:
            return self.texts.denied(response, alert=alert)
        if verdict.reason == "rate_limited":
            return self.texts.warning(response, alert=alert)
        return self.texts.blocked(response, alert=alert)


def _fingerprint(content: Optional[str]) -> bytes:
    # A hash, never the content: authgate only compares fingerprints.
    return hashlib.sha256(content.encode()).digest() if content else b""


async def _tell(event: Union[Message, CallbackQuery], text: Optional[str]) -> None:
    if text is None:
        return
    if isinstance(event, CallbackQuery):
        await event.answer(text, show_alert=True)
    else:
        await event.answer(text)
