"""What every test against a running authgate shares."""

import ipaddress
import os
import unittest
import uuid

from authgate_client import AuthgateClient


def server_address() -> str:
    addr = os.environ.get("AUTHGATE_ADDR", "")
    if not addr:
        raise AssertionError(
            "AUTHGATE_ADDR is not set: start authgate and export AUTHGATE_ADDR=host:port "
            "(and AUTHGATE_CHECK_KEY when it requires API keys); see README.md"
        )
    return addr


def check_key() -> str | None:
    return os.environ.get("AUTHGATE_CHECK_KEY") or None


# Fresh identifiers for every test, so reruns against one server never meet
# the counters or lockouts an earlier run left behind.


def unique_user() -> str:
    return f"py-{uuid.uuid4().hex}"


def unique_ip() -> str:
    # From 2001:db8::/32, the documentation range.
    return str(ipaddress.IPv6Address((0x20010DB8 << 96) | (uuid.uuid4().int >> 32)))


class ServerTestCase(unittest.IsolatedAsyncioTestCase):
    # grpc.aio channels belong to one event loop, and each test has its own.
    async def asyncSetUp(self) -> None:
        self.client = AuthgateClient(server_address(), check_key())

    async def asyncTearDown(self) -> None:
        await self.client.close()
