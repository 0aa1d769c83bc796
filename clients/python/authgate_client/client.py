"""An asyncio client for authgate's AccessService."""

from __future__ import annotations

from typing import Optional, Union

import grpc

from ._proto.authgate.v1 import access_pb2, access_pb2_grpc
from ._version import __version__

Id = Union[str, int]

# The codes of an authgate that cannot answer (down, overloaded, too slow),
# as opposed to one that refuses the request (a bad key, a bad argument):
# only these may fail open.
OUTAGE = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
)


def _subject(
    user_id: Optional[Id],
    ip: Optional[str],
    session_id: Optional[str],
    password_fingerprint: bytes = b"",
) -> access_pb2.Subject:
    # Telegram ids are ints; authgate's are strings, with "" meaning absent.
    return access_pb2.Subject(
        user_id="" if user_id is None else str(user_id),
        ip=ip or "",
        session_id=session_id or "",
        password_fingerprint=password_fingerprint,
    )


class AuthgateClient:
    """AccessService over one grpc.aio channel.

    Every call carries `authorization: Bearer <api_key>` when a key is given
    and a deadline of `timeout` seconds. Errors are raised as
    grpc.aio.AioRpcError; authgate answers UNAVAILABLE when its store is
    down, and callers should then deny (see AuthgateMiddleware).

    Create it inside the event loop that will use it (grpc.aio channels are
    bound to one loop) and close it with `await client.close()` or
    `async with`.
    """

    def __init__(
        self,
        target: str,
        api_key: Optional[str] = None,
        *,
        credentials: Optional[grpc.ChannelCredentials] = None,
        timeout: float = 5.0,
    ) -> None:
        # Servers' logs and proxies tell this client, and its version, apart.
        options = (("grpc.primary_user_agent", f"authgate-client-python/{__version__}"),)
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(target, options=options)
        else:
            self._channel = grpc.aio.secure_channel(target, credentials, options=options)
        self._stub = access_pb2_grpc.AccessServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self._timeout = timeout

    async def __aenter__(self) -> "AuthgateClient":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def check_access(
        self,
        context: str,
        user_id: Optional[Id] = None,
        ip: Optional[str] = None,
        session_id: Optional[str] = None,
        password_fingerprint: bytes = b"",
    ) -> access_pb2.CheckAccessResponse:
        """Asks whether the subject may act in `context` now.

        At a login, pass `password_fingerprint(password)` of the password
        tried, so the context's password rule can judge it.
        """
        request = access_pb2.CheckAccessRequest(
            context=context,
            subject=_subject(user_id, ip, session_id, password_fingerprint),
        )
        return await self._stub.CheckAccess(request, timeout=self._timeout, metadata=self._metadata)

    async def record_failure(
        self,
        context: str,
        user_id: Optional[Id] = None,
        ip: Optional[str] = None,
        session_id: Optional[str] = None,
        activity: str = "",
        password_fingerprint: bytes = b"",
    ) -> access_pb2.RecordFailureResponse:
        """Counts a failure (a wrong password, a spam strike) in `context`.

        After a wrong password, pass the same `password_fingerprint` as to
        check_access, so the password is counted across accounts.
        record_success takes none: spraying works because some accounts do
        use the sprayed password, and a login to one of them must not
        forgive that password's count.
        """
        request = access_pb2.RecordFailureRequest(
            context=context,
            subject=_subject(user_id, ip, session_id, password_fingerprint),
            activity=activity,
        )
        return await self._stub.RecordFailure(
            request, timeout=self._timeout, metadata=self._metadata
        )

    async def record_success(
        self,
        context: str,
        user_id: Optional[Id] = None,
        ip: Optional[str] = None,
        session_id: Optional[str] = None,
    ) -> access_pb2.RecordSuccessResponse:
        request = access_pb2.RecordSuccessRequest(
            context=context, subject=_subject(user_id, ip, session_id)
        )
        return await self._stub.RecordSuccess(
            request, timeout=self._timeout, metadata=self._metadata
        )

    async def verify_totp(
        self,
        context: str,
        user_id: Id,
        code: str = "",
        ip: Optional[str] = None,
        session_id: Optional[str] = None,
        *,
        recovery_code: str = "",
    ) -> access_pb2.VerifyTotpResponse:
        """Proves the second factor with `code` from the authenticator app,
        or with one of the user's `recovery_code`s (never both).

        The response of the call that confirms an enrollment carries the
        user's `recovery_codes`: show them to the user once, privately, and
        keep them nowhere. After a recovery code, `recovery_codes_remaining`
        says how many the user has left.
        """
        request = access_pb2.VerifyTotpRequest(
            context=context,
            subject=_subject(user_id, ip, session_id),
            code=code,
            recovery_code=recovery_code,
        )
        return await self._stub.VerifyTotp(request, timeout=self._timeout, metadata=self._metadata)

    async def regenerate_recovery_codes(self, context: str, user_id: Id) -> list[str]:
        """New recovery codes for a user with an authenticated session in
        `context`; every earlier code stops working. Shown once."""
        request = access_pb2.RegenerateRecoveryCodesRequest(
            context=context, subject=_subject(user_id, None, None)
        )
        response = await self._stub.RegenerateRecoveryCodes(
            request, timeout=self._timeout, metadata=self._metadata
        )
        return list(response.recovery_codes)

    async def enroll_totp(
        self,
        context: str,
        user_id: Id,
        account_name: str = "",
    ) -> access_pb2.EnrollTotpResponse:
        request = access_pb2.EnrollTotpRequest(
            context=context, subject=_subject(user_id, None, None), account_name=account_name
        )
        return await self._stub.EnrollTotp(request, timeout=self._timeout, metadata=self._metadata)

    async def admit(
        self,
        context: str,
        user_id: Id,
        kind: str,
        fingerprint: bytes = b"",
        ip: Optional[str] = None,
    ) -> access_pb2.AdmitResponse:
        """Judges one incoming update of `kind` and records it when admitted.

        `fingerprint` is a hash of the update's content (at most 64 bytes),
        never the content itself: equal fingerprints are how authgate
        recognises repeated content. Handle the update only when the
        response's `admitted` is true.
        """
        request = access_pb2.AdmitRequest(
            context=context,
            subject=_subject(user_id, ip, None),
            kind=kind,
            fingerprint=fingerprint,
        )
        return await self._stub.Admit(request, timeout=self._timeout, metadata=self._metadata)
