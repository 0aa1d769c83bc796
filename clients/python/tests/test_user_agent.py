import unittest

import grpc

from authgate_client import AuthgateClient, __version__, access_pb2


class UserAgentTest(unittest.IsolatedAsyncioTestCase):
    async def test_calls_name_the_client_and_its_version(self) -> None:
        """A real grpc server, standing in for authgate, sees who called."""
        seen: list[str] = []

        async def check_access(request, context):  # type: ignore[no-untyped-def]
            seen.append(dict(context.invocation_metadata()).get("user-agent", ""))
            return access_pb2.CheckAccessResponse()

        handler = grpc.method_handlers_generic_handler(
            "authgate.v1.AccessService",
            {
                "CheckAccess": grpc.unary_unary_rpc_method_handler(
                    check_access,
                    request_deserializer=access_pb2.CheckAccessRequest.FromString,
                    response_serializer=access_pb2.CheckAccessResponse.SerializeToString,
                )
            },
        )
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with AuthgateClient(f"127.0.0.1:{port}") as client:
                await client.check_access("login", user_id="u")
        finally:
            await server.stop(None)
        self.assertEqual(len(seen), 1)
        self.assertTrue(seen[0].startswith(f"authgate-client-python/{__version__} "), seen)
