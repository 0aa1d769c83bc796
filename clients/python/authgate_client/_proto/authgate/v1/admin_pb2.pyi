import datetime

from authgate_client._proto.authgate.v1 import access_pb2 as _access_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SessionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SESSION_STATE_UNSPECIFIED: _ClassVar[SessionState]
    SESSION_STATE_UNAUTHENTICATED: _ClassVar[SessionState]
    SESSION_STATE_PROCESSING: _ClassVar[SessionState]
    SESSION_STATE_AUTHENTICATED: _ClassVar[SessionState]
    SESSION_STATE_BLOCKED: _ClassVar[SessionState]
    SESSION_STATE_EXPIRED: _ClassVar[SessionState]
SESSION_STATE_UNSPECIFIED: SessionState
SESSION_STATE_UNAUTHENTICATED: SessionState
SESSION_STATE_PROCESSING: SessionState
SESSION_STATE_AUTHENTICATED: SessionState
SESSION_STATE_BLOCKED: SessionState
SESSION_STATE_EXPIRED: SessionState

class BanSpec(_message.Message):
    __slots__ = ("context", "key", "range", "password_fingerprint", "duration", "until", "permanent", "reason", "force")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    PERMANENT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    context: str
    key: _access_pb2.Key
    range: str
    password_fingerprint: bytes
    duration: _duration_pb2.Duration
    until: _timestamp_pb2.Timestamp
    permanent: bool
    reason: str
    force: bool
    def __init__(self, context: _Optional[str] = ..., key: _Optional[_Union[_access_pb2.Key, _Mapping]] = ..., range: _Optional[str] = ..., password_fingerprint: _Optional[bytes] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., permanent: _Optional[bool] = ..., reason: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class BanRequest(_message.Message):
    __slots__ = ("actor_user_id", "ban")
    ACTOR_USER_ID_FIELD_NUMBER: _ClassVar[int]
    BAN_FIELD_NUMBER: _ClassVar[int]
    actor_user_id: str
    ban: BanSpec
    def __init__(self, actor_user_id: _Optional[str] = ..., ban: _Optional[_Union[BanSpec, _Mapping]] = ...) -> None: ...

class BanResponse(_message.Message):
    __slots__ = ("ban", "changed")
    BAN_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    ban: Lock
    changed: bool
    def __init__(self, ban: _Optional[_Union[Lock, _Mapping]] = ..., changed: _Optional[bool] = ...) -> None: ...

class ImportBansRequest(_message.Message):
    __slots__ = ("actor_user_id", "bans", "validate_only")
    ACTOR_USER_ID_FIELD_NUMBER: _ClassVar[int]
    BANS_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    actor_user_id: str
    bans: _containers.RepeatedCompositeFieldContainer[BanSpec]
    validate_only: bool
    def __init__(self, actor_user_id: _Optional[str] = ..., bans: _Optional[_Iterable[_Union[BanSpec, _Mapping]]] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class ImportBansResponse(_message.Message):
    __slots__ = ("written", "unchanged", "ended")
    WRITTEN_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    written: int
    unchanged: int
    ended: int
    def __init__(self, written: _Optional[int] = ..., unchanged: _Optional[int] = ..., ended: _Optional[int] = ...) -> None: ...

class KeyRef(_message.Message):
    __slots__ = ("context", "key")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    context: str
    key: _access_pb2.Key
    def __init__(self, context: _Optional[str] = ..., key: _Optional[_Union[_access_pb2.Key, _Mapping]] = ...) -> None: ...

class AdminUnlockRequest(_message.Message):
    __slots__ = ("actor_user_id", "key", "subject", "all")
    ACTOR_USER_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    actor_user_id: str
    key: KeyRef
    subject: _access_pb2.Subject
    all: bool
    def __init__(self, actor_user_id: _Optional[str] = ..., key: _Optional[_Union[KeyRef, _Mapping]] = ..., subject: _Optional[_Union[_access_pb2.Subject, _Mapping]] = ..., all: _Optional[bool] = ...) -> None: ...

class AdminUnlockResponse(_message.Message):
    __slots__ = ("unlocked",)
    UNLOCKED_FIELD_NUMBER: _ClassVar[int]
    unlocked: int
    def __init__(self, unlocked: _Optional[int] = ...) -> None: ...

class Lock(_message.Message):
    __slots__ = ("context", "rule", "key", "tier", "locked_at", "unblock_at", "permanent", "reason", "actor", "caller")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    LOCKED_AT_FIELD_NUMBER: _ClassVar[int]
    UNBLOCK_AT_FIELD_NUMBER: _ClassVar[int]
    PERMANENT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    context: str
    rule: str
    key: _access_pb2.Key
    tier: int
    locked_at: _timestamp_pb2.Timestamp
    unblock_at: _timestamp_pb2.Timestamp
    permanent: bool
    reason: str
    actor: str
    caller: str
    def __init__(self, context: _Optional[str] = ..., rule: _Optional[str] = ..., key: _Optional[_Union[_access_pb2.Key, _Mapping]] = ..., tier: _Optional[int] = ..., locked_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., unblock_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., permanent: _Optional[bool] = ..., reason: _Optional[str] = ..., actor: _Optional[str] = ..., caller: _Optional[str] = ...) -> None: ...

class ListLockedRequest(_message.Message):
    __slots__ = ("actor_user_id", "context", "page_size", "page_token")
    ACTOR_USER_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    actor_user_id: str
    context: str
    page_size: int
    page_token: str
    def __init__(self, actor_user_id: _Optional[str] = ..., context: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListLockedResponse(_message.Message):
    __slots__ = ("locks", "next_page_token")
    LOCKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    locks: _containers.RepeatedCompositeFieldContainer[Lock]
    next_page_token: str
    def __init__(self, locks: _Optional[_Iterable[_Union[Lock, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetSubjectRequest(_message.Message):
    __slots__ = ("actor_user_id", "subject")
    ACTOR_USER_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    actor_user_id: str
    subject: _access_pb2.Subject
    def __init__(self, actor_user_id: _Optional[str] = ..., subject: _Optional[_Union[_access_pb2.Subject, _Mapping]] = ...) -> None: ...

class KeyState(_message.Message):
    __slots__ = ("context", "rule", "key", "failures_in_window", "failures_total", "last_failure_at", "recent_lockouts", "lockouts_total", "lock")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    FAILURES_IN_WINDOW_FIELD_NUMBER: _ClassVar[int]
    FAILURES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    LAST_FAILURE_AT_FIELD_NUMBER: _ClassVar[int]
    RECENT_LOCKOUTS_FIELD_NUMBER: _ClassVar[int]
    LOCKOUTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    LOCK_FIELD_NUMBER: _ClassVar[int]
    context: str
    rule: str
    key: _access_pb2.Key
    failures_in_window: int
    failures_total: int
    last_failure_at: _timestamp_pb2.Timestamp
    recent_lockouts: int
    lockouts_total: int
    lock: Lock
    def __init__(self, context: _Optional[str] = ..., rule: _Optional[str] = ..., key: _Optional[_Union[_access_pb2.Key, _Mapping]] = ..., failures_in_window: _Optional[int] = ..., failures_total: _Optional[int] = ..., last_failure_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., recent_lockouts: _Optional[int] = ..., lockouts_total: _Optional[int] = ..., lock: _Optional[_Union[Lock, _Mapping]] = ...) -> None: ...

class GetSubjectResponse(_message.Message):
    __slots__ = ("allowed", "admin", "states", "session", "totp", "admission", "bans")
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    ADMIN_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    TOTP_FIELD_NUMBER: _ClassVar[int]
    ADMISSION_FIELD_NUMBER: _ClassVar[int]
    BANS_FIELD_NUMBER: _ClassVar[int]
    allowed: bool
    admin: bool
    states: _containers.RepeatedCompositeFieldContainer[KeyState]
    session: Session
    totp: TotpEnrollment
    admission: _containers.RepeatedCompositeFieldContainer[AdmissionState]
    bans: _containers.RepeatedCompositeFieldContainer[Lock]
    def __init__(self, allowed: _Optional[bool] = ..., admin: _Optional[bool] = ..., states: _Optional[_Iterable[_Union[KeyState, _Mapping]]] = ..., session: _Optional[_Union[Session, _Mapping]] = ..., totp: _Optional[_Union[TotpEnrollment, _Mapping]] = ..., admission: _Optional[_Iterable[_Union[AdmissionState, _Mapping]]] = ..., bans: _Optional[_Iterable[_Union[Lock, _Mapping]]] = ...) -> None: ...

class AdmissionState(_message.Message):
    __slots__ = ("context", "user_id", "warnings", "reputation", "blocked_until", "block_cause", "updates_in_window", "updates_total", "blocks_total", "warnings_total", "refused_total", "first_seen", "last_seen")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    REPUTATION_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_UNTIL_FIELD_NUMBER: _ClassVar[int]
    BLOCK_CAUSE_FIELD_NUMBER: _ClassVar[int]
    UPDATES_IN_WINDOW_FIELD_NUMBER: _ClassVar[int]
    UPDATES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    REFUSED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    context: str
    user_id: str
    warnings: int
    reputation: float
    blocked_until: _timestamp_pb2.Timestamp
    block_cause: _access_pb2.SpamCause
    updates_in_window: int
    updates_total: int
    blocks_total: int
    warnings_total: int
    refused_total: int
    first_seen: _timestamp_pb2.Timestamp
    last_seen: _timestamp_pb2.Timestamp
    def __init__(self, context: _Optional[str] = ..., user_id: _Optional[str] = ..., warnings: _Optional[int] = ..., reputation: _Optional[float] = ..., blocked_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., block_cause: _Optional[_Union[_access_pb2.SpamCause, str]] = ..., updates_in_window: _Optional[int] = ..., updates_total: _Optional[int] = ..., blocks_total: _Optional[int] = ..., warnings_total: _Optional[int] = ..., refused_total: _Optional[int] = ..., first_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ResetWarningsRequest(_message.Message):
    __slots__ = ("actor_user_id", "context", "user_id")
    ACTOR_USER_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    actor_user_id: str
    context: str
    user_id: str
    def __init__(self, actor_user_id: _Optional[str] = ..., context: _Optional[str] = ..., user_id: _Optional[str] = ...) -> None: ...

class ResetWarningsResponse(_message.Message):
    __slots__ = ("reset",)
    RESET_FIELD_NUMBER: _ClassVar[int]
    reset: int
    def __init__(self, reset: _Optional[int] = ...) -> None: ...

class ListOffendersRequest(_message.Message):
    __slots__ = ("actor_user_id", "context", "page_size", "page_token")
    ACTOR_USER_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    actor_user_id: str
    context: str
    page_size: int
    page_token: str
    def __init__(self, actor_user_id: _Optional[str] = ..., context: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListOffendersResponse(_message.Message):
    __slots__ = ("offenders", "next_page_token")
    OFFENDERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    offenders: _containers.RepeatedCompositeFieldContainer[AdmissionState]
    next_page_token: str
    def __init__(self, offenders: _Optional[_Iterable[_Union[AdmissionState, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class Session(_message.Message):
    __slots__ = ("state", "since", "last_seen_at")
    STATE_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_AT_FIELD_NUMBER: _ClassVar[int]
    state: SessionState
    since: _timestamp_pb2.Timestamp
    last_seen_at: _timestamp_pb2.Timestamp
    def __init__(self, state: _Optional[_Union[SessionState, str]] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seen_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TotpEnrollment(_message.Message):
    __slots__ = ("confirmed", "algorithm", "digits", "period_seconds", "created_at", "recovery_codes_remaining")
    CONFIRMED_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    DIGITS_FIELD_NUMBER: _ClassVar[int]
    PERIOD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    RECOVERY_CODES_REMAINING_FIELD_NUMBER: _ClassVar[int]
    confirmed: bool
    algorithm: str
    digits: int
    period_seconds: int
    created_at: _timestamp_pb2.Timestamp
    recovery_codes_remaining: int
    def __init__(self, confirmed: _Optional[bool] = ..., algorithm: _Optional[str] = ..., digits: _Optional[int] = ..., period_seconds: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., recovery_codes_remaining: _Optional[int] = ...) -> None: ...

class AdminServiceRegenerateRecoveryCodesRequest(_message.Message):
    __slots__ = ("actor_user_id", "user_id")
    ACTOR_USER_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    actor_user_id: str
    user_id: str
    def __init__(self, actor_user_id: _Optional[str] = ..., user_id: _Optional[str] = ...) -> None: ...

class AdminServiceRegenerateRecoveryCodesResponse(_message.Message):
    __slots__ = ("recovery_codes",)
    RECOVERY_CODES_FIELD_NUMBER: _ClassVar[int]
    recovery_codes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, recovery_codes: _Optional[_Iterable[str]] = ...) -> None: ...

class RevokeSessionRequest(_message.Message):
    __slots__ = ("actor_user_id", "user_id", "all")
    ACTOR_USER_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    actor_user_id: str
    user_id: str
    all: bool
    def __init__(self, actor_user_id: _Optional[str] = ..., user_id: _Optional[str] = ..., all: _Optional[bool] = ...) -> None: ...

class RevokeSessionResponse(_message.Message):
    __slots__ = ("revoked",)
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    revoked: int
    def __init__(self, revoked: _Optional[int] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ("actor_user_id",)
    ACTOR_USER_ID_FIELD_NUMBER: _ClassVar[int]
    actor_user_id: str
    def __init__(self, actor_user_id: _Optional[str] = ...) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = ("total", "authenticated", "processing", "blocked", "expired", "locks_temporary", "locks_permanent", "admission_users", "admission_refused", "admission_warnings", "admission_blocks_active")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    AUTHENTICATED_FIELD_NUMBER: _ClassVar[int]
    PROCESSING_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    LOCKS_TEMPORARY_FIELD_NUMBER: _ClassVar[int]
    LOCKS_PERMANENT_FIELD_NUMBER: _ClassVar[int]
    ADMISSION_USERS_FIELD_NUMBER: _ClassVar[int]
    ADMISSION_REFUSED_FIELD_NUMBER: _ClassVar[int]
    ADMISSION_WARNINGS_FIELD_NUMBER: _ClassVar[int]
    ADMISSION_BLOCKS_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    total: int
    authenticated: int
    processing: int
    blocked: int
    expired: int
    locks_temporary: int
    locks_permanent: int
    admission_users: int
    admission_refused: int
    admission_warnings: int
    admission_blocks_active: int
    def __init__(self, total: _Optional[int] = ..., authenticated: _Optional[int] = ..., processing: _Optional[int] = ..., blocked: _Optional[int] = ..., expired: _Optional[int] = ..., locks_temporary: _Optional[int] = ..., locks_permanent: _Optional[int] = ..., admission_users: _Optional[int] = ..., admission_refused: _Optional[int] = ..., admission_warnings: _Optional[int] = ..., admission_blocks_active: _Optional[int] = ...) -> None: ...

class ResetTotpRequest(_message.Message):
    __slots__ = ("actor_user_id", "user_id")
    ACTOR_USER_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    actor_user_id: str
    user_id: str
    def __init__(self, actor_user_id: _Optional[str] = ..., user_id: _Optional[str] = ...) -> None: ...

class ResetTotpResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: bool
    def __init__(self, removed: _Optional[bool] = ...) -> None: ...

class ImportTotpRequest(_message.Message):
    __slots__ = ("actor_user_id", "user_id", "secret_base32", "algorithm", "digits", "period_seconds")
    ACTOR_USER_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SECRET_BASE32_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    DIGITS_FIELD_NUMBER: _ClassVar[int]
    PERIOD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    actor_user_id: str
    user_id: str
    secret_base32: str
    algorithm: str
    digits: int
    period_seconds: int
    def __init__(self, actor_user_id: _Optional[str] = ..., user_id: _Optional[str] = ..., secret_base32: _Optional[str] = ..., algorithm: _Optional[str] = ..., digits: _Optional[int] = ..., period_seconds: _Optional[int] = ...) -> None: ...

class ImportTotpResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchSecurityEventsRequest(_message.Message):
    __slots__ = ("actor_user_id",)
    ACTOR_USER_ID_FIELD_NUMBER: _ClassVar[int]
    actor_user_id: str
    def __init__(self, actor_user_id: _Optional[str] = ...) -> None: ...

class SecurityAlert(_message.Message):
    __slots__ = ("kind", "at", "context", "rule", "key", "tier", "unblock_at", "permanent", "suppressed", "dropped", "detail")
    KIND_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    UNBLOCK_AT_FIELD_NUMBER: _ClassVar[int]
    PERMANENT_FIELD_NUMBER: _ClassVar[int]
    SUPPRESSED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    kind: str
    at: _timestamp_pb2.Timestamp
    context: str
    rule: str
    key: _access_pb2.Key
    tier: int
    unblock_at: _timestamp_pb2.Timestamp
    permanent: bool
    suppressed: int
    dropped: int
    detail: str
    def __init__(self, kind: _Optional[str] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., context: _Optional[str] = ..., rule: _Optional[str] = ..., key: _Optional[_Union[_access_pb2.Key, _Mapping]] = ..., tier: _Optional[int] = ..., unblock_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., permanent: _Optional[bool] = ..., suppressed: _Optional[int] = ..., dropped: _Optional[int] = ..., detail: _Optional[str] = ...) -> None: ...

class ListAuditEventsRequest(_message.Message):
    __slots__ = ("actor_user_id", "user_id", "ip", "session_id", "context", "kind", "to", "page_size", "page_token")
    ACTOR_USER_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    actor_user_id: str
    user_id: str
    ip: str
    session_id: str
    context: str
    kind: str
    to: _timestamp_pb2.Timestamp
    page_size: int
    page_token: str
    def __init__(self, actor_user_id: _Optional[str] = ..., user_id: _Optional[str] = ..., ip: _Optional[str] = ..., session_id: _Optional[str] = ..., context: _Optional[str] = ..., kind: _Optional[str] = ..., to: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., **kwargs) -> None: ...

class AuditEvent(_message.Message):
    __slots__ = ("id", "kind", "at", "context", "rule", "key", "tier", "unblock_at", "permanent", "actor", "detail", "caller")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    UNBLOCK_AT_FIELD_NUMBER: _ClassVar[int]
    PERMANENT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    id: int
    kind: str
    at: _timestamp_pb2.Timestamp
    context: str
    rule: str
    key: _access_pb2.Key
    tier: int
    unblock_at: _timestamp_pb2.Timestamp
    permanent: bool
    actor: str
    detail: str
    caller: str
    def __init__(self, id: _Optional[int] = ..., kind: _Optional[str] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., context: _Optional[str] = ..., rule: _Optional[str] = ..., key: _Optional[_Union[_access_pb2.Key, _Mapping]] = ..., tier: _Optional[int] = ..., unblock_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., permanent: _Optional[bool] = ..., actor: _Optional[str] = ..., detail: _Optional[str] = ..., caller: _Optional[str] = ...) -> None: ...

class ListAuditEventsResponse(_message.Message):
    __slots__ = ("events", "next_page_token")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[AuditEvent]
    next_page_token: str
    def __init__(self, events: _Optional[_Iterable[_Union[AuditEvent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
