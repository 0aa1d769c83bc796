import unittest
from types import SimpleNamespace
from typing import Any

from authgate_client import AuthgateClient, AuthgateMiddleware, access_pb2
from support import ServerTestCase, check_key, unique_user, unreachable_address


def message(user_id: Any) -> SimpleNamespace:
    """A bot's incoming message, shaped as aiogram's: the sender in from_user."""
    return SimpleNamespace(from_user=SimpleNamespace(id=user_id), text="hi")


class Recording(AuthgateMiddleware):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.denied: list = []

    async def on_denied(self, event: Any, verdict: Any) -> str:
        self.denied.append(verdict)
        return "denied"


class Handler:
    def __init__(self) -> None:
        self.calls: list = []

    async def __call__(self, event: Any, data: dict) -> str:
        self.calls.append((event, dict(data)))
        return "handled"


class MiddlewareTest(ServerTestCase):
    async def test_an_allowed_event_reaches_the_handler_with_the_verdict(self) -> None:
        middleware, handler = Recording(self.client, "bot"), Handler()
        event = message(unique_user())
        self.assertEqual(await middleware(handler, event, {}), "handled")
        [(seen, data)] = handler.calls
        self.assertIs(seen, event)
        self.assertEqual(data["authgate"].decision, access_pb2.DECISION_ALLOW)
        self.assertEqual(middleware.denied, [])

    async def test_strikes_challenge_then_block_and_the_handler_is_skipped(self) -> None:
        middleware, handler = Recording(self.client, "bot"), Handler()
        event = message(unique_user())
        for _ in range(3):
            await middleware.record_failure(event, activity="spam")
        self.assertEqual(await middleware(handler, event, {}), "denied")
        self.assertEqual(middleware.denied[-1].decision, access_pb2.DECISION_CHALLENGE_CAPTCHA)

        for _ in range(2):
            response = await middleware.record_failure(event, activity="spam")
        self.assertTrue(response.lockout_applied)
        self.assertEqual(await middleware(handler, event, {}), "denied")
        blocked = middleware.denied[-1]
        self.assertEqual(blocked.decision, access_pb2.DECISION_BLOCKED)
        self.assertTrue(blocked.HasField("unblock_at"))
        self.assertEqual(handler.calls, [])

    async def test_an_update_level_middleware_finds_the_user_in_data(self) -> None:
        user = unique_user()
        middleware, handler = Recording(self.client, "bot"), Handler()
        for _ in range(5):
            await middleware.record_failure(message(user))
        update = SimpleNamespace(update_id=1)
        result = await middleware(handler, update, {"event_from_user": SimpleNamespace(id=user)})
        self.assertEqual(result, "denied")
        self.assertEqual(middleware.denied[-1].decision, access_pb2.DECISION_BLOCKED)
        self.assertEqual(handler.calls, [])

    async def test_an_event_without_a_user_is_not_judged(self) -> None:
        middleware, handler = Recording(self.client, "bot"), Handler()
        self.assertEqual(
            await middleware(handler, SimpleNamespace(chat=SimpleNamespace(id=1)), {}), "handled"
        )
        self.assertIsNone(handler.calls[0][1]["authgate"])

    async def test_the_default_on_denied_returns_none(self) -> None:
        middleware, handler = AuthgateMiddleware(self.client, "bot"), Handler()
        event = message(unique_user())
        for _ in range(5):
            await middleware.record_failure(event)
        self.assertIsNone(await middleware(handler, event, {}))
        self.assertEqual(handler.calls, [])


class OutageTest(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self) -> None:
        self.client = AuthgateClient(unreachable_address(), check_key(), timeout=2.0)

    async def asyncTearDown(self) -> None:
        await self.client.close()

    async def test_an_unreachable_authgate_fails_closed(self) -> None:
        middleware, handler = Recording(self.client, "bot"), Handler()
        self.assertEqual(await middleware(handler, message(unique_user()), {}), "denied")
        self.assertEqual(middleware.denied, [None])
        self.assertEqual(handler.calls, [])

    async def test_fail_open_lets_the_event_through(self) -> None:
        middleware, handler = Recording(self.client, "bot", fail_open=True), Handler()
        self.assertEqual(await middleware(handler, message(unique_user()), {}), "handled")
        self.assertIsNone(handler.calls[0][1]["authgate"])
        self.assertEqual(middleware.denied, [])


if __name__ == "__main__":
    unittest.main()
