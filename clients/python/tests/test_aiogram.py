import hashlib
import itertools
import unittest
from datetime import datetime, timezone
from typing import Any, AsyncGenerator, Optional

import grpc
from aiogram import Bot, Dispatcher
from aiogram.client.session.base import BaseSession
from aiogram.methods import AnswerCallbackQuery, SendMessage, TelegramMethod
from aiogram.types import (
    CallbackQuery,
    Chat,
    Location,
    Message,
    MessageOriginUser,
    PhotoSize,
    Sticker,
    Update,
    User,
)

from authgate_client import AuthgateClient, access_pb2
from authgate_client.aiogram import AdmissionMiddleware, AdmissionTexts
from support import ServerTestCase, check_key, unique_telegram_user, unreachable_address


class RecordingSession(BaseSession):
    """Records the bot's API calls instead of sending them to Telegram, and
    answers each as Telegram would."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[TelegramMethod[Any]] = []

    async def make_request(
        self, bot: Bot, method: TelegramMethod[Any], timeout: Optional[int] = None
    ) -> Any:
        self.requests.append(method)
        if isinstance(method, SendMessage):
            return Message(
                message_id=len(self.requests),
                date=datetime.now(timezone.utc),
                chat=Chat(id=method.chat_id, type="private"),
                text=method.text,
            )
        return True

    async def stream_content(self, *args: Any, **kwargs: Any) -> AsyncGenerator[bytes, None]:
        yield b""

    async def close(self) -> None:
        pass


class BotHarness:
    """A real Dispatcher with the middleware registered, its handlers
    recording what reached them, and a Bot whose calls are recorded."""

    def __init__(self, gate: AdmissionMiddleware, *, update_level: bool = False) -> None:
        self.session = RecordingSession()
        self.bot = Bot("42:TEST", session=self.session)
        self.dispatcher = Dispatcher()
        self.handled: list[tuple[Any, Optional[access_pb2.AdmitResponse]]] = []
        self.dispatcher.message.register(self._handle)
        self.dispatcher.callback_query.register(self._handle)
        if update_level:
            self.dispatcher.update.outer_middleware(gate)
        else:
            self.dispatcher.message.outer_middleware(gate)
            self.dispatcher.callback_query.outer_middleware(gate)

    async def _handle(self, received: Any, admission: Optional[access_pb2.AdmitResponse]) -> None:
        self.handled.append((received, admission))

    async def feed(self, *updates: Update) -> None:
        for update in updates:
            await self.dispatcher.feed_update(self.bot, update)

    @property
    def admissions(self) -> list[Optional[access_pb2.AdmitResponse]]:
        return [admission for _, admission in self.handled]


_ids = itertools.count(1)


def user(user_id: int) -> User:
    return User(id=user_id, is_bot=False, first_name="Test")


def message(user_id: int, text: Optional[str] = None, **fields: Any) -> Message:
    return Message(
        message_id=next(_ids),
        date=datetime.now(timezone.utc),
        chat=Chat(id=user_id, type="private"),
        from_user=user(user_id),
        text=text,
        **fields,
    )


def text_update(user_id: int, text: Optional[str] = None, **fields: Any) -> Update:
    return Update(update_id=next(_ids), message=message(user_id, text, **fields))


def callback(user_id: int, data: str) -> CallbackQuery:
    return CallbackQuery(
        id=str(next(_ids)), from_user=user(user_id), chat_instance="test", data=data
    )


def callback_update(user_id: int, data: str) -> Update:
    return Update(update_id=next(_ids), callback_query=callback(user_id, data))


def photo() -> list[PhotoSize]:
    return [PhotoSize(file_id="p", file_unique_id="p", width=1, height=1)]


def forwarded(user_id: int) -> MessageOriginUser:
    return MessageOriginUser(date=datetime.now(timezone.utc), sender_user=user(user_id + 1))


def sha256(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


class ClassifyTest(unittest.IsolatedAsyncioTestCase):
    async def test_kinds_and_fingerprints_come_from_the_update(self) -> None:
        sticker = Sticker(
            file_id="s",
            file_unique_id="s",
            type="regular",
            width=1,
            height=1,
            is_animated=False,
            is_video=False,
        )
        cases = [
            (message(1, "hello"), ("text", sha256("hello"))),
            (message(1, "/start"), ("command", sha256("/start"))),
            (message(1, "hello", forward_origin=forwarded(1)), ("forward", sha256("hello"))),
            # A forwarded "/start" is not the user's command to this bot.
            (message(1, "/start", forward_origin=forwarded(1)), ("forward", sha256("/start"))),
            (message(1, photo=photo()), ("media", b"")),
            (message(1, photo=photo(), caption="look"), ("media", sha256("look"))),
            # Captions are never commands.
            (message(1, photo=photo(), caption="/start"), ("media", sha256("/start"))),
            (message(1, sticker=sticker), ("media", b"")),
            (message(1, location=Location(latitude=0, longitude=0)), ("text", b"")),
            (callback(1, "page:2"), ("callback", sha256("page:2"))),
        ]
        # Telling updates apart asks authgate nothing.
        async with AuthgateClient(unreachable_address()) as client:
            gate = AdmissionMiddleware(client)
            for event, expected in cases:
                self.assertEqual(gate.classify(event), expected, event)


class AdmissionTest(ServerTestCase):
    async def test_eight_texts_are_handled_and_the_ninth_draws_a_warning(self) -> None:
        uid = unique_telegram_user()
        chat = BotHarness(AdmissionMiddleware(self.client))
        await chat.feed(*(text_update(uid, f"message {i}") for i in range(9)))

        self.assertEqual([a.used for a in chat.admissions], list(range(1, 9)))
        self.assertTrue(all(a.admitted and a.limit == 8 for a in chat.admissions))
        [warning] = chat.session.requests
        self.assertIsInstance(warning, SendMessage)
        self.assertEqual(warning.chat_id, uid)
        self.assertEqual(
            warning.text,
            "⚠️ Warning #1\n\nYou are sending requests too often!\n"
            "Limit: 8 requests per 10 s\n\nAt 3 warnings you will be blocked.",
        )

    async def test_the_sixth_identical_text_blocks_the_user_and_tells_them(self) -> None:
        uid = unique_telegram_user()
        chat = BotHarness(AdmissionMiddleware(self.client))
        await chat.feed(*(text_update(uid, "buy now") for _ in range(6)))
        self.assertEqual(len(chat.handled), 5)
        [blocked] = chat.session.requests
        self.assertEqual(
            blocked.text,
            "🚫 You are blocked for spam.\n\n⏳ Time left: 2 min\n"
            "⚠️ Cause: the same message again and again\n📊 Block #1",
        )

        # Blocked, even a different text is refused, and the user told again.
        await chat.feed(text_update(uid, "hello"))
        self.assertEqual(len(chat.handled), 5)
        self.assertEqual(chat.session.requests[-1].text, blocked.text)

    async def test_a_callback_flood_is_answered_with_an_alert(self) -> None:
        uid = unique_telegram_user()
        chat = BotHarness(AdmissionMiddleware(self.client))
        presses = [callback_update(uid, f"page:{i}") for i in range(11)]
        await chat.feed(*presses)
        self.assertEqual(len(chat.handled), 10)
        [alert] = chat.session.requests
        self.assertIsInstance(alert, AnswerCallbackQuery)
        self.assertEqual(alert.callback_query_id, presses[-1].callback_query.id)
        self.assertEqual(alert.text, "⚠️ Warning 1/3")
        self.assertTrue(alert.show_alert)

    async def test_one_button_pressed_again_and_again_warns_then_blocks(self) -> None:
        uid = unique_telegram_user()
        chat = BotHarness(AdmissionMiddleware(self.client))
        await chat.feed(*(callback_update(uid, "like") for _ in range(10)))
        # The ninth press is still handled, and its handler sees the warning.
        self.assertEqual(len(chat.handled), 9)
        ninth = chat.admissions[-1]
        self.assertTrue(ninth.warning)
        self.assertEqual(ninth.warning_cause, access_pb2.SPAM_CAUSE_CALLBACK_SPAM)
        [alert] = chat.session.requests
        self.assertIsInstance(alert, AnswerCallbackQuery)
        self.assertTrue(alert.show_alert)
        self.assertEqual(alert.text, "🚫 Blocked: 4 min")

    async def test_commands_are_never_limited(self) -> None:
        uid = unique_telegram_user()
        chat = BotHarness(AdmissionMiddleware(self.client))
        await chat.feed(*(text_update(uid, "/start") for _ in range(30)))
        self.assertEqual(len(chat.handled), 30)
        self.assertFalse(any(a.HasField("limit") for a in chat.admissions))
        self.assertEqual(chat.session.requests, [])

    async def test_each_kind_counts_against_its_own_limit(self) -> None:
        uid = unique_telegram_user()
        chat = BotHarness(AdmissionMiddleware(self.client))
        await chat.feed(*(text_update(uid, f"message {i}") for i in range(8)))
        await chat.feed(
            text_update(uid, "look", forward_origin=forwarded(uid)),
            text_update(uid, photo=photo()),
            callback_update(uid, "page:1"),
            text_update(uid, "/help"),
        )
        self.assertEqual(len(chat.handled), 12)
        self.assertEqual([a.used for a in chat.admissions[8:]], [1, 1, 1, 1])
        self.assertEqual(chat.session.requests, [])

    async def test_registered_on_the_update_it_judges_the_update_inside(self) -> None:
        uid = unique_telegram_user()
        chat = BotHarness(AdmissionMiddleware(self.client), update_level=True)
        await chat.feed(*(text_update(uid, f"message {i}") for i in range(9)))
        self.assertEqual(len(chat.handled), 8)
        [warning] = chat.session.requests
        self.assertTrue(warning.text.startswith("⚠️ Warning #1"))

    async def test_texts_can_be_overridden_or_silenced(self) -> None:
        class Terse(AdmissionTexts):
            def warning(self, response: access_pb2.AdmitResponse, *, alert: bool) -> str:
                return f"Slow down: {response.used}/{response.limit}"

            def blocked(self, response: access_pb2.AdmitResponse, *, alert: bool) -> None:
                return None

        uid = unique_telegram_user()
        chat = BotHarness(AdmissionMiddleware(self.client, texts=Terse()))
        await chat.feed(*(text_update(uid, f"message {i}") for i in range(9)))
        self.assertEqual([m.text for m in chat.session.requests], ["Slow down: 8/8"])
        # Two more warnings block; the block is told nothing.
        await chat.feed(*(text_update(uid, f"more {i}") for i in range(3)))
        self.assertEqual(len(chat.session.requests), 2)
        self.assertEqual(len(chat.handled), 8)

    async def test_a_context_without_admission_raises(self) -> None:
        chat = BotHarness(AdmissionMiddleware(self.client, "login"))
        with self.assertRaises(grpc.aio.AioRpcError) as raised:
            await chat.feed(text_update(unique_telegram_user(), "hello"))
        self.assertEqual(raised.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertEqual(chat.handled, [])

    async def test_an_unknown_kind_raises(self) -> None:
        class Inline(AdmissionMiddleware):
            def classify(self, event: Any) -> tuple[str, bytes]:
                return "inline", b""

        chat = BotHarness(Inline(self.client))
        with self.assertRaises(grpc.aio.AioRpcError) as raised:
            await chat.feed(text_update(unique_telegram_user(), "hello"))
        self.assertEqual(raised.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertEqual(chat.handled, [])


class OutageTest(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self) -> None:
        self.client = AuthgateClient(unreachable_address(), check_key(), timeout=2.0)

    async def asyncTearDown(self) -> None:
        await self.client.close()

    async def test_an_unreachable_authgate_fails_closed_and_tells_the_user(self) -> None:
        uid = unique_telegram_user()
        chat = BotHarness(AdmissionMiddleware(self.client))
        press = callback_update(uid, "page:1")
        await chat.feed(text_update(uid, "hello"), press)
        self.assertEqual(chat.handled, [])
        told, alert = chat.session.requests
        unavailable = "⏳ The bot cannot take requests right now. Try again in a minute."
        self.assertIsInstance(told, SendMessage)
        self.assertEqual((told.chat_id, told.text), (uid, unavailable))
        self.assertIsInstance(alert, AnswerCallbackQuery)
        self.assertEqual(
            (alert.callback_query_id, alert.text, alert.show_alert),
            (press.callback_query.id, unavailable, True),
        )

    async def test_fail_open_lets_the_update_through(self) -> None:
        chat = BotHarness(AdmissionMiddleware(self.client, fail_open=True))
        await chat.feed(text_update(unique_telegram_user(), "hello"))
        self.assertEqual(chat.admissions, [None])
        self.assertEqual(chat.session.requests, [])

    async def test_admins_skip_authgate_entirely(self) -> None:
        # authgate is unreachable here: only an update that never asks it
        # can reach its handler.
        admin, other = unique_telegram_user(), unique_telegram_user()
        chat = BotHarness(AdmissionMiddleware(self.client, admin_ids={admin}))
        await chat.feed(*(text_update(admin, "same") for _ in range(20)))
        await chat.feed(callback_update(admin, "like"))
        self.assertEqual(chat.admissions, [None] * 21)
        self.assertEqual(chat.session.requests, [])

        await chat.feed(text_update(other, "hello"))
        self.assertEqual(len(chat.handled), 21)


if __name__ == "__main__":
    unittest.main()
