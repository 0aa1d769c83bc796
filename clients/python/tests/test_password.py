import hashlib
import unittest
import uuid

from authgate_client import access_pb2, password_fingerprint
from support import ServerTestCase, unique_ip, unique_user


class FingerprintTest(unittest.TestCase):
    def test_it_is_the_sha256_of_the_utf8_password(self) -> None:
        fingerprint = password_fingerprint("Summer2024!")
        self.assertEqual(fingerprint, hashlib.sha256("Summer2024!".encode("utf-8")).digest())
        self.assertEqual(len(fingerprint), 32)


class PasswordSprayTest(ServerTestCase):
    async def test_one_password_sprayed_across_accounts_is_challenged(self) -> None:
        # Unique, so reruns against one server start from a fresh count.
        sprayed = password_fingerprint(f"Summer2024!-{uuid.uuid4().hex}")
        for _ in range(10):
            who = dict(user_id=unique_user(), ip=unique_ip(), password_fingerprint=sprayed)
            checked = await self.client.check_access("login", **who)
            self.assertEqual(checked.verdict.decision, access_pb2.DECISION_ALLOW)
            await self.client.record_failure("login", activity="wrong_password", **who)

        checked = await self.client.check_access(
            "login", user_id=unique_user(), ip=unique_ip(), password_fingerprint=sprayed
        )
        verdict = checked.verdict
        self.assertEqual(verdict.decision, access_pb2.DECISION_CHALLENGE_CAPTCHA)
        self.assertEqual(verdict.rule, "password")
        self.assertEqual(verdict.key.kind, access_pb2.KEY_KIND_PASSWORD)

        other = await self.client.check_access(
            "login",
            user_id=unique_user(),
            ip=unique_ip(),
            password_fingerprint=password_fingerprint(f"correct horse-{uuid.uuid4().hex}"),
        )
        self.assertEqual(other.verdict.decision, access_pb2.DECISION_ALLOW)


if __name__ == "__main__":
    unittest.main()
