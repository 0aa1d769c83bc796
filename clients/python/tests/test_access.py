import unittest

import grpc

from authgate_client import AuthgateClient, access_pb2
from support import ServerTestCase, check_key, server_address, unique_ip, unique_user


class AccessTest(ServerTestCase):
    async def test_a_fresh_subject_is_allowed(self) -> None:
        response = await self.client.check_access("login", user_id=unique_user(), ip=unique_ip())
        self.assertEqual(response.verdict.decision, access_pb2.DECISION_ALLOW)
        self.assertEqual(response.verdict.reason, "ok")

    async def test_five_failures_on_one_user_and_ip_block_the_pair(self) -> None:
        user, ip = unique_user(), unique_ip()
        for _ in range(4):
            response = await self.client.record_failure(
                "login", user_id=user, ip=ip, activity="wrong_password"
            )
            self.assertEqual(response.verdict.decision, access_pb2.DECISION_ALLOW)
        response = await self.client.record_failure(
            "login", user_id=user, ip=ip, activity="wrong_password"
        )
        verdict = response.verdict
        self.assertTrue(response.lockout_applied)
        self.assertEqual(verdict.decision, access_pb2.DECISION_BLOCKED)
        self.assertEqual(verdict.reason, "locked")
        self.assertTrue(verdict.HasField("unblock_at"))
        self.assertGreater(verdict.retry_after_seconds, 0)

        checked = await self.client.check_access("login", user_id=user, ip=ip)
        self.assertEqual(checked.verdict.decision, access_pb2.DECISION_BLOCKED)
        self.assertEqual(checked.verdict.unblock_at, verdict.unblock_at)
        # A success clears counts but does not lift a lock in force.
        succeeded = await self.client.record_success("login", user_id=user, ip=ip)
        self.assertEqual(succeeded.verdict.decision, access_pb2.DECISION_BLOCKED)

    async def test_the_lock_is_per_pair(self) -> None:
        user, ip = unique_user(), unique_ip()
        for _ in range(5):
            await self.client.record_failure("login", user_id=user, ip=ip)
        other_ip = await self.client.check_access("login", user_id=user, ip=unique_ip())
        self.assertEqual(other_ip.verdict.decision, access_pb2.DECISION_ALLOW)

    async def test_a_missing_subject_is_invalid_argument(self) -> None:
        with self.assertRaises(grpc.aio.AioRpcError) as raised:
            await self.client.check_access("login")
        self.assertEqual(raised.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)


class ApiKeyTest(unittest.IsolatedAsyncioTestCase):
    async def test_a_wrong_or_missing_key_is_refused(self) -> None:
        addr = server_address()
        if check_key() is None:
            self.skipTest(
                "AUTHGATE_CHECK_KEY is empty: the server under test accepts anonymous calls"
            )
        for api_key in ("ag_not-a-key", None):
            async with AuthgateClient(addr, api_key) as client:
                with self.assertRaises(grpc.aio.AioRpcError) as raised:
                    await client.check_access("login", user_id=unique_user())
                self.assertEqual(raised.exception.code(), grpc.StatusCode.UNAUTHENTICATED, api_key)


if __name__ == "__main__":
    unittest.main()
