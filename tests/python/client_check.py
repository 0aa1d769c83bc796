#!/usr/bin/env python3
"""Drives authgate's gRPC contract from a Python grpcio client.

Usage: client_check.py HOST:PORT PROTO_DIR

The stubs are generated from PROTO_DIR at run time, so the check exercises the
protos as shipped rather than a checked-in copy. The server must run with the
default contexts and "py-admin" on its admin list; the scenario leaves state
behind (a lockout history), so give each run a fresh database.

Exit status: 0 when every step passes, 1 when one fails (later steps, which
depend on the earlier ones' state, are not run), 2 on bad usage, 3 when the
Python gRPC packages are missing.
"""

import collections
import importlib
import importlib.resources
import sys
import tempfile

try:
    import grpc
    from google.protobuf import descriptor_pool, message_factory
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )
    from grpc_tools import protoc
except ImportError:
    print(
        "python grpcio is missing: pip install -r tests/python/requirements.txt",
        file=sys.stderr,
    )
    sys.exit(3)

DEADLINE_SECONDS = 10.0
CONTEXT = "login"
USER_ID = "py-user"
IP = "203.0.113.7"
ADMIN = "py-admin"


class _CallDetails(
    collections.namedtuple(
        "_CallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


class _DefaultDeadline(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Gives every call without a deadline one.

    Done on the channel rather than per call because grpcio-reflection's
    descriptor database makes its own calls and sets no deadline, so a stuck
    reflection service would otherwise hang the check.
    """

    @staticmethod
    def _with_deadline(details):
        if details.timeout is not None:
            return details
        return _CallDetails(
            details.method,
            DEADLINE_SECONDS,
            details.metadata,
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_deadline(details), request)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._with_deadline(details), request_iterator)


def generate_stubs(proto_dir, out_dir):
    """Compiles the authgate protos into out_dir and imports them."""
    # google/protobuf/timestamp.proto ships inside grpc_tools, not in PROTO_DIR.
    bundled = importlib.resources.files("grpc_tools") / "_proto"
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"-I{bundled}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            "authgate/v1/access.proto",
            "authgate/v1/admin.proto",
        ]
    )
    if status != 0:
        raise RuntimeError(f"grpc_tools.protoc failed on {proto_dir} (exit {status})")
    # First on the path, so that no installed "authgate" package shadows the
    # generated one (authgate/v1 is a namespace package: protoc writes no
    # __init__.py).
    sys.path.insert(0, out_dir)
    return tuple(
        importlib.import_module(f"authgate.v1.{name}")
        for name in ("access_pb2", "access_pb2_grpc", "admin_pb2", "admin_pb2_grpc")
    )


def expect_status(call, code, details_part=None):
    """Asserts that call() fails with code and, if given, names details_part."""
    try:
        call()
    except grpc.RpcError as err:
        assert err.code() == code, f"expected {code.name}, got {err.code().name}: {err.details()}"
        if details_part is not None:
            assert details_part in (err.details() or ""), (
                f"expected the details to mention {details_part!r}, got {err.details()!r}"
            )
        return
    raise AssertionError(f"expected {code.name}, but the call succeeded")


class Scenario:
    def __init__(self, channel, access_pb2, access_grpc, admin_pb2, admin_grpc):
        self.channel = channel
        self.pb = access_pb2
        self.admin_pb = admin_pb2
        self.access = access_grpc.AccessServiceStub(channel)
        self.admin = admin_grpc.AdminServiceStub(channel)

    def steps(self):
        return [
            ("CheckAccess on a fresh subject allows", self.fresh_subject_is_allowed),
            ("five failures lock the user+ip pair", self.five_failures_lock),
            ("CheckAccess while locked blocks", self.locked_subject_is_blocked),
            ("ListLocked shows the lock", self.list_locked_shows_the_lock),
            ("AdminUnlock by subject lifts the lock", self.admin_unlocks_the_subject),
            ("CheckAccess after the unlock allows", self.unlocked_subject_is_allowed),
            ("AdminUnlock by a non-admin is denied", self.non_admin_is_denied),
            ("a malformed ip is rejected", self.bad_ip_is_rejected),
            ("an unknown context is rejected", self.unknown_context_is_rejected),
            ("server reflection (v1alpha) serves the services", self.reflection_lists_services),
            ("health check reports SERVING", self.health_is_serving),
        ]

    def subject(self, ip=IP):
        return self.pb.Subject(user_id=USER_ID, ip=ip)

    def check(self, context=CONTEXT, ip=IP):
        request = self.pb.CheckAccessRequest(context=context, subject=self.subject(ip))
        return self.access.CheckAccess(request).verdict

    def assert_decision(self, verdict, decision):
        expected, got = self.pb.Decision.Name(decision), self.pb.Decision.Name(verdict.decision)
        assert got == expected, f"expected {expected}, got {got} (verdict: {verdict})"

    def fresh_subject_is_allowed(self):
        verdict = self.check()
        self.assert_decision(verdict, self.pb.DECISION_ALLOW)
        assert verdict.reason == "ok", f"reason {verdict.reason!r}"

    def five_failures_lock(self):
        request = self.pb.RecordFailureRequest(context=CONTEXT, subject=self.subject())
        for failure in range(1, 5):
            response = self.access.RecordFailure(request)
            verdict = response.verdict
            self.assert_decision(verdict, self.pb.DECISION_ALLOW)
            assert verdict.HasField("remaining_attempts") and verdict.remaining_attempts == 5 - failure, (
                f"failure {failure}: expected remaining_attempts {5 - failure}, got {verdict}"
            )
            assert not response.lockout_applied, f"failure {failure} applied a lockout"

        response = self.access.RecordFailure(request)
        verdict = response.verdict
        self.assert_decision(verdict, self.pb.DECISION_BLOCKED)
        assert response.lockout_applied, "the 5th failure did not report lockout_applied"
        assert (verdict.reason, verdict.rule) == ("locked", "user_ip"), (
            f"reason/rule {verdict.reason!r}/{verdict.rule!r}"
        )
        assert not verdict.permanent, "the first lockout is permanent"
        assert verdict.HasField("unblock_at"), "unblock_at is not set"
        assert 1 <= verdict.retry_after_seconds <= 1800, (
            f"retry_after_seconds {verdict.retry_after_seconds} outside 1..1800"
        )

    def locked_subject_is_blocked(self):
        self.assert_decision(self.check(), self.pb.DECISION_BLOCKED)

    def list_locked_shows_the_lock(self):
        locks = self.admin.ListLocked(self.admin_pb.ListLockedRequest(actor_user_id=ADMIN)).locks
        assert any(
            lock.context == CONTEXT
            and lock.rule == "user_ip"
            and lock.key.user_id == USER_ID
            and lock.key.ip == IP
            and lock.tier == 1
            for lock in locks
        ), f"no tier-1 login/user_ip lock for {USER_ID}@{IP} in {list(locks)}"

    def admin_unlocks_the_subject(self):
        request = self.admin_pb.AdminUnlockRequest(
            actor_user_id=ADMIN, subject=self.pb.Subject(user_id=USER_ID)
        )
        unlocked = self.admin.AdminUnlock(request).unlocked
        assert unlocked == 1, f"unlocked {unlocked}, expected 1"

    def unlocked_subject_is_allowed(self):
        self.assert_decision(self.check(), self.pb.DECISION_ALLOW)

    def non_admin_is_denied(self):
        request = self.admin_pb.AdminUnlockRequest(
            actor_user_id="nobody", subject=self.pb.Subject(user_id=USER_ID)
        )
        expect_status(lambda: self.admin.AdminUnlock(request), grpc.StatusCode.PERMISSION_DENIED)

    def bad_ip_is_rejected(self):
        expect_status(lambda: self.check(ip="999.1.1.1"), grpc.StatusCode.INVALID_ARGUMENT, "subject.ip")

    def unknown_context_is_rejected(self):
        expect_status(lambda: self.check(context="nope"), grpc.StatusCode.INVALID_ARGUMENT, "context")

    def reflection_lists_services(self):
        database = ProtoReflectionDescriptorDatabase(self.channel)
        services = set(database.get_services())
        wanted = {"authgate.v1.AccessService", "authgate.v1.AdminService", "grpc.health.v1.Health"}
        assert wanted <= services, f"missing {sorted(wanted - services)} in {sorted(services)}"

        file = database.FindFileContainingSymbol("authgate.v1.AccessService")
        assert file.name == "authgate/v1/access.proto", f"AccessService resolved to {file.name!r}"
        assert "AccessService" in {service.name for service in file.service}, (
            f"{file.name} does not define AccessService"
        )

    def health_is_serving(self):
        # The health messages come from the server's own reflection data, which
        # spares the grpcio-health-checking dependency.
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(self.channel))
        method = pool.FindMethodByName("grpc.health.v1.Health.Check")
        request_type = message_factory.GetMessageClass(method.input_type)
        response_type = message_factory.GetMessageClass(method.output_type)
        check = self.channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )
        response = check(request_type(service=""))
        status_type = response_type.DESCRIPTOR.fields_by_name["status"].enum_type
        status = status_type.values_by_number[response.status].name
        assert status == "SERVING", f"health status {status}"


def main(argv):
    if len(argv) != 3:
        print(f"usage: {argv[0]} HOST:PORT PROTO_DIR", file=sys.stderr)
        return 2
    address, proto_dir = argv[1], argv[2]

    with tempfile.TemporaryDirectory(prefix="authgate-stubs-") as out_dir:
        try:
            stubs = generate_stubs(proto_dir, out_dir)
        except (RuntimeError, ImportError) as err:
            print(f"cannot generate the stubs: {err}", file=sys.stderr)
            return 1
        with grpc.insecure_channel(address) as raw_channel:
            channel = grpc.intercept_channel(raw_channel, _DefaultDeadline())
            steps = Scenario(channel, *stubs).steps()
            for number, (title, step) in enumerate(steps, start=1):
                try:
                    step()
                except Exception as err:  # any error, assertion or RPC, fails the step
                    print(f"step {number} ({title}) FAILED: {err}", file=sys.stderr)
                    print(
                        f"python client: {number - 1} passed, 1 failed, "
                        f"{len(steps) - number} not run"
                    )
                    return 1
                print(f"ok {number}: {title}")
            print(f"python client: {len(steps)} passed, 0 failed")
            return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
