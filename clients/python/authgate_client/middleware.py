"""A bot middleware in aiogram 3's shape, with no dependency on aiogram."""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Dict, Optional

import grpc

from ._proto.authgate.v1 import access_pb2
from .client import OUTAGE, AuthgateClient, Id

Handler = Callable[[Any, Dict[str, Any]], Awaitable[Any]]


class AuthgateMiddleware:
    """Asks authgate before each event's handler runs.

    Register it like any aiogram 3 middleware, e.g.
    `router.message.middleware(AuthgateMiddleware(client, "bot"))`: aiogram
    accepts any callable of the shape `(handler, event, data)`.

    On ALLOW the handler runs with the verdict in `data["authgate"]`. Any
    other decision skips the handler and returns `on_denied(event, verdict)`,
    which a subclass overrides to answer the user (a captcha, "try again in
    N minutes", a prompt for a TOTP code). When authgate cannot answer
    (down, overloaded, too slow) the middleware fails closed
    (`on_denied(event, None)`) unless `fail_open`; other errors propagate,
    so a wrong API key cannot pass as an outage.

    Events without a user (channel posts, polls) carry nothing authgate
    could judge and reach the handler unchecked, with `data["authgate"]`
    None.
    """

    def __init__(self, client: AuthgateClient, context: str, *, fail_open: bool = False) -> None:
        self.client = client
        self.context = context
        self.fail_open = fail_open

    def user_id(self, event: Any, data: Optional[Dict[str, Any]] = None) -> Optional[Id]:
        user = getattr(event, "from_user", None)
        # An outer middleware on aiogram's Update sees no from_user; aiogram
        # puts the update's user in data["event_from_user"] instead.
        if user is None and data is not None:
            user = data.get("event_from_user")
        return None if user is None else user.id

    async def on_denied(self, event: Any, verdict: Optional[access_pb2.Verdict]) -> Any:
        return None

    async def __call__(self, handler: Handler, event: Any, data: Dict[str, Any]) -> Any:
        user_id = self.user_id(event, data)
        if user_id is None:
            data["authgate"] = None
            return await handler(event, data)
        try:
            response = await self.client.check_access(self.context, user_id=user_id)
        except grpc.aio.AioRpcError as error:
            if error.code() not in OUTAGE:
                raise
            if self.fail_open:
                data["authgate"] = None
                return await handler(event, data)
            return await self.on_denied(event, None)
        if response.verdict.decision == access_pb2.DECISION_ALLOW:
            data["authgate"] = response.verdict
            return await handler(event, data)
        return await self.on_denied(event, response.verdict)

    # The bot's own checks (a wrong password, a spam strike, a TOTP prompt)
    # report back in the same context, for the event's user. A handler that
    # receives TOTP codes must not sit behind this middleware in a context
    # that requires TOTP, or the code never reaches it.

    async def record_failure(
        self, event: Any, activity: str = ""
    ) -> access_pb2.RecordFailureResponse:
        return await self.client.record_failure(
            self.context, user_id=self._required_user_id(event), activity=activity
        )

    async def record_success(self, event: Any) -> access_pb2.RecordSuccessResponse:
        return await self.client.record_success(self.context, user_id=self._required_user_id(event))

    async def verify_totp(self, event: Any, code: str) -> access_pb2.VerifyTotpResponse:
        return await self.client.verify_totp(self.context, self._required_user_id(event), code)

    async def verify_recovery_code(self, event: Any, code: str) -> access_pb2.VerifyTotpResponse:
        """Signs the event's user in with one of their recovery codes."""
        return await self.client.verify_totp(
            self.context, self._required_user_id(event), recovery_code=code
        )

    def _required_user_id(self, event: Any) -> Id:
        user_id = self.user_id(event)
        if user_id is None:
            raise ValueError("the event has no user (event.from_user is missing)")
        return user_id
