import hashlib
import time
import unittest
from types import SimpleNamespace
from typing import Any

import pyotp

from authgate_client import AuthgateMiddleware, access_pb2
from support import ServerTestCase, unique_user

# "admin" is a context of the default configuration that requires TOTP.
CONTEXT = "admin"


def authenticator(enrolled: access_pb2.EnrollTotpResponse) -> pyotp.TOTP:
    return pyotp.TOTP(
        enrolled.secret_base32,
        digits=enrolled.digits,
        interval=enrolled.period_seconds,
        digest=getattr(hashlib, enrolled.algorithm.lower()),
    )


def wrong_code(totp: pyotp.TOTP) -> str:
    """A code valid in no period near now, so it is neither accepted nor
    answered as clock skew."""
    now = time.time()
    near = {totp.at(now + k * totp.interval) for k in range(-20, 21)}
    return next(
        c for c in (str(n).zfill(totp.digits) for n in range(10**totp.digits)) if c not in near
    )


class TotpTest(ServerTestCase):
    async def test_recovery_codes_come_once_and_sign_in_once(self) -> None:
        user = unique_user()
        totp = authenticator(await self.client.enroll_totp(CONTEXT, user))
        confirmed = await self.client.verify_totp(CONTEXT, user, totp.now())
        codes = list(confirmed.recovery_codes)
        self.assertEqual(len(codes), 10)

        used = await self.client.verify_totp(CONTEXT, user, recovery_code=codes[0].lower())
        self.assertEqual(used.result, access_pb2.TOTP_RESULT_OK)
        self.assertEqual(used.recovery_codes_remaining, 9)
        again = await self.client.verify_totp(CONTEXT, user, recovery_code=codes[0])
        self.assertEqual(again.result, access_pb2.TOTP_RESULT_INVALID)

        fresh = await self.client.regenerate_recovery_codes(CONTEXT, user)
        self.assertEqual(len(fresh), 10)
        old = await self.client.verify_totp(CONTEXT, user, recovery_code=codes[1])
        self.assertEqual(old.result, access_pb2.TOTP_RESULT_INVALID)

    async def test_enroll_then_verify_opens_a_session(self) -> None:
        user = unique_user()
        before = await self.client.check_access(CONTEXT, user_id=user)
        self.assertEqual(before.verdict.decision, access_pb2.DECISION_ENROLL_TOTP)

        enrolled = await self.client.enroll_totp(CONTEXT, user)
        self.assertTrue(enrolled.otpauth_uri.startswith("otpauth://totp/"))
        totp = authenticator(enrolled)

        wrong = await self.client.verify_totp(CONTEXT, user, wrong_code(totp))
        self.assertEqual(wrong.result, access_pb2.TOTP_RESULT_INVALID)
        self.assertNotEqual(wrong.verdict.decision, access_pb2.DECISION_ALLOW)

        verified = await self.client.verify_totp(CONTEXT, user, totp.now())
        self.assertEqual(verified.result, access_pb2.TOTP_RESULT_OK)
        self.assertEqual(verified.verdict.decision, access_pb2.DECISION_ALLOW)
        self.assertTrue(verified.HasField("session_expires_at"))

        after = await self.client.check_access(CONTEXT, user_id=user)
        self.assertEqual(after.verdict.decision, access_pb2.DECISION_ALLOW)

    async def test_the_middleware_challenges_until_a_code_is_verified(self) -> None:
        denied: list = []
        handled: list = []

        class Gate(AuthgateMiddleware):
            async def on_denied(self, event: Any, verdict: Any) -> None:
                denied.append(verdict.decision)

        async def handler(event: Any, data: dict) -> None:
            handled.append(data["authgate"].decision)

        gate = Gate(self.client, CONTEXT)
        user = unique_user()
        event = SimpleNamespace(from_user=SimpleNamespace(id=user), text="/stats")

        await gate(handler, event, {})
        enrolled = await self.client.enroll_totp(CONTEXT, user)
        verified = await gate.verify_totp(event, authenticator(enrolled).now())
        self.assertEqual(verified.result, access_pb2.TOTP_RESULT_OK)
        await gate(handler, event, {})

        self.assertEqual(denied, [access_pb2.DECISION_ENROLL_TOTP])
        self.assertEqual(handled, [access_pb2.DECISION_ALLOW])


if __name__ == "__main__":
    unittest.main()
