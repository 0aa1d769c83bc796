"""What every test against a running authgate shares."""

import ipaddress
import os
import socket
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


def unique_telegram_user() -> int:
    # Telegram ids are positive integers below 2**52.
    return 1 + (uuid.uuid4().int >> 80)


def unique_ip() -> str:
    # From 2001:db8::/32, the documentation range.
    return str(ipaddress.IPv6Address((0x20010DB8 << 96) | (uuid.uuid4().int >> 32)))


def unreachable_address() -> str:
    # A port nobody listens on: an outage that is real, not simulated.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


class ServerTestCase(unittest.IsolatedAsyncioTestCase):
    # grpc.aio channels belong to one event loop, and each test has its own.
    async def asyncSetUp(self) -> None:
        self.client = AuthgateClient(server_address(), check_key())

    async def asyncTearDown(self) -> None:
        await self.client.close()
