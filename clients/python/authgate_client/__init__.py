"""Python client for authgate: an asyncio AccessService client and a bot
middleware.

The generated protobuf modules are re-exported for their messages and enum
values (`access_pb2.DECISION_ALLOW`, `access_pb2.TOTP_RESULT_OK`, ...) and
for AdminService (`admin_pb2_grpc.AdminServiceStub`). `password_fingerprint`
turns a password tried at login into what authgate may be told of it.
"""

from ._proto.authgate.v1 import access_pb2, access_pb2_grpc, admin_pb2, admin_pb2_grpc
from .client import AuthgateClient
from .middleware import AuthgateMiddleware
from ._version import __version__
from .password import password_fingerprint

__all__ = [
    "__version__",
    "AuthgateClient",
    "AuthgateMiddleware",
    "access_pb2",
    "access_pb2_grpc",
    "admin_pb2",
    "admin_pb2_grpc",
    "password_fingerprint",
]
