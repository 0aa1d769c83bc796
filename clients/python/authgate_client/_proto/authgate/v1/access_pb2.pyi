import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_UNSPECIFIED: _ClassVar[Decision]
    DECISION_ALLOW: _ClassVar[Decision]
    DECISION_DENY: _ClassVar[Decision]
    DECISION_CHALLENGE_CAPTCHA: _ClassVar[Decision]
    DECISION_BLOCKED: _ClassVar[Decision]
    DECISION_CHALLENGE_TOTP: _ClassVar[Decision]
    DECISION_ENROLL_TOTP: _ClassVar[Decision]

class KeyKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KEY_KIND_UNSPECIFIED: _ClassVar[KeyKind]
    KEY_KIND_USER: _ClassVar[KeyKind]
    KEY_KIND_IP: _ClassVar[KeyKind]
    KEY_KIND_USER_IP: _ClassVar[KeyKind]
    KEY_KIND_SESSION: _ClassVar[KeyKind]
    KEY_KIND_PASSWORD: _ClassVar[KeyKind]

class TotpResult(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TOTP_RESULT_UNSPECIFIED: _ClassVar[TotpResult]
    TOTP_RESULT_OK: _ClassVar[TotpResult]
    TOTP_RESULT_INVALID: _ClassVar[TotpResult]
    TOTP_RESULT_CLOCK_SKEW: _ClassVar[TotpResult]
    TOTP_RESULT_BLOCKED: _ClassVar[TotpResult]
    TOTP_RESULT_NOT_ENROLLED: _ClassVar[TotpResult]

class SpamCause(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SPAM_CAUSE_UNSPECIFIED: _ClassVar[SpamCause]
    SPAM_CAUSE_RATE_LIMIT: _ClassVar[SpamCause]
    SPAM_CAUSE_IDENTICAL_MESSAGES: _ClassVar[SpamCause]
    SPAM_CAUSE_CALLBACK_SPAM: _ClassVar[SpamCause]
    SPAM_CAUSE_MEDIA_FLOOD: _ClassVar[SpamCause]
DECISION_UNSPECIFIED: Decision
DECISION_ALLOW: Decision
DECISION_DENY: Decision
DECISION_CHALLENGE_CAPTCHA: Decision
DECISION_BLOCKED: Decision
DECISION_CHALLENGE_TOTP: Decision
DECISION_ENROLL_TOTP: Decision
KEY_KIND_UNSPECIFIED: KeyKind
KEY_KIND_USER: KeyKind
KEY_KIND_IP: KeyKind
KEY_KIND_USER_IP: KeyKind
KEY_KIND_SESSION: KeyKind
KEY_KIND_PASSWORD: KeyKind
TOTP_RESULT_UNSPECIFIED: TotpResult
TOTP_RESULT_OK: TotpResult
TOTP_RESULT_INVALID: TotpResult
TOTP_RESULT_CLOCK_SKEW: TotpResult
TOTP_RESULT_BLOCKED: TotpResult
TOTP_RESULT_NOT_ENROLLED: TotpResult
SPAM_CAUSE_UNSPECIFIED: SpamCause
SPAM_CAUSE_RATE_LIMIT: SpamCause
SPAM_CAUSE_IDENTICAL_MESSAGES: SpamCause
SPAM_CAUSE_CALLBACK_SPAM: SpamCause
SPAM_CAUSE_MEDIA_FLOOD: SpamCause

class Subject(_message.Message):
    __slots__ = ("user_id", "ip", "session_id", "password_fingerprint")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    ip: str
    session_id: str
    password_fingerprint: bytes
    def __init__(self, user_id: _Optional[str] = ..., ip: _Optional[str] = ..., session_id: _Optional[str] = ..., password_fingerprint: _Optional[bytes] = ...) -> None: ...

class Key(_message.Message):
    __slots__ = ("kind", "user_id", "ip", "session_id", "password")
    KIND_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    kind: KeyKind
    user_id: str
    ip: str
    session_id: str
    password: str
    def __init__(self, kind: _Optional[_Union[KeyKind, str]] = ..., user_id: _Optional[str] = ..., ip: _Optional[str] = ..., session_id: _Optional[str] = ..., password: _Optional[str] = ...) -> None: ...

class Verdict(_message.Message):
    __slots__ = ("decision", "reason", "rule", "key", "remaining_attempts", "unblock_at", "retry_after_seconds", "permanent", "ban_reason")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    REMAINING_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    UNBLOCK_AT_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PERMANENT_FIELD_NUMBER: _ClassVar[int]
    BAN_REASON_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    reason: str
    rule: str
    key: Key
    remaining_attempts: int
    unblock_at: _timestamp_pb2.Timestamp
    retry_after_seconds: int
    permanent: bool
    ban_reason: str
    def __init__(self, decision: _Optional[_Union[Decision, str]] = ..., reason: _Optional[str] = ..., rule: _Optional[str] = ..., key: _Optional[_Union[Key, _Mapping]] = ..., remaining_attempts: _Optional[int] = ..., unblock_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., retry_after_seconds: _Optional[int] = ..., permanent: _Optional[bool] = ..., ban_reason: _Optional[str] = ...) -> None: ...

class CheckAccessRequest(_message.Message):
    __slots__ = ("context", "subject")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    context: str
    subject: Subject
    def __init__(self, context: _Optional[str] = ..., subject: _Optional[_Union[Subject, _Mapping]] = ...) -> None: ...

class CheckAccessResponse(_message.Message):
    __slots__ = ("verdict", "shadow")
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    verdict: Verdict
    shadow: _containers.RepeatedCompositeFieldContainer[Verdict]
    def __init__(self, verdict: _Optional[_Union[Verdict, _Mapping]] = ..., shadow: _Optional[_Iterable[_Union[Verdict, _Mapping]]] = ...) -> None: ...

class RecordFailureRequest(_message.Message):
    __slots__ = ("context", "subject", "activity")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_FIELD_NUMBER: _ClassVar[int]
    context: str
    subject: Subject
    activity: str
    def __init__(self, context: _Optional[str] = ..., subject: _Optional[_Union[Subject, _Mapping]] = ..., activity: _Optional[str] = ...) -> None: ...

class RecordFailureResponse(_message.Message):
    __slots__ = ("verdict", "lockout_applied", "shadow")
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    LOCKOUT_APPLIED_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    verdict: Verdict
    lockout_applied: bool
    shadow: _containers.RepeatedCompositeFieldContainer[Verdict]
    def __init__(self, verdict: _Optional[_Union[Verdict, _Mapping]] = ..., lockout_applied: _Optional[bool] = ..., shadow: _Optional[_Iterable[_Union[Verdict, _Mapping]]] = ...) -> None: ...

class RecordSuccessRequest(_message.Message):
    __slots__ = ("context", "subject")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    context: str
    subject: Subject
    def __init__(self, context: _Optional[str] = ..., subject: _Optional[_Union[Subject, _Mapping]] = ...) -> None: ...

class RecordSuccessResponse(_message.Message):
    __slots__ = ("verdict", "shadow")
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    verdict: Verdict
    shadow: _containers.RepeatedCompositeFieldContainer[Verdict]
    def __init__(self, verdict: _Optional[_Union[Verdict, _Mapping]] = ..., shadow: _Optional[_Iterable[_Union[Verdict, _Mapping]]] = ...) -> None: ...

class VerifyTotpRequest(_message.Message):
    __slots__ = ("context", "subject", "code", "recovery_code")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    RECOVERY_CODE_FIELD_NUMBER: _ClassVar[int]
    context: str
    subject: Subject
    code: str
    recovery_code: str
    def __init__(self, context: _Optional[str] = ..., subject: _Optional[_Union[Subject, _Mapping]] = ..., code: _Optional[str] = ..., recovery_code: _Optional[str] = ...) -> None: ...

class RegenerateRecoveryCodesRequest(_message.Message):
    __slots__ = ("context", "subject")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    context: str
    subject: Subject
    def __init__(self, context: _Optional[str] = ..., subject: _Optional[_Union[Subject, _Mapping]] = ...) -> None: ...

class RegenerateRecoveryCodesResponse(_message.Message):
    __slots__ = ("recovery_codes",)
    RECOVERY_CODES_FIELD_NUMBER: _ClassVar[int]
    recovery_codes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, recovery_codes: _Optional[_Iterable[str]] = ...) -> None: ...

class VerifyTotpResponse(_message.Message):
    __slots__ = ("result", "verdict", "clock_drift_seconds", "session_expires_at", "recovery_codes", "recovery_codes_remaining")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    CLOCK_DRIFT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SESSION_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    RECOVERY_CODES_FIELD_NUMBER: _ClassVar[int]
    RECOVERY_CODES_REMAINING_FIELD_NUMBER: _ClassVar[int]
    result: TotpResult
    verdict: Verdict
    clock_drift_seconds: int
    session_expires_at: _timestamp_pb2.Timestamp
    recovery_codes: _containers.RepeatedScalarFieldContainer[str]
    recovery_codes_remaining: int
    def __init__(self, result: _Optional[_Union[TotpResult, str]] = ..., verdict: _Optional[_Union[Verdict, _Mapping]] = ..., clock_drift_seconds: _Optional[int] = ..., session_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., recovery_codes: _Optional[_Iterable[str]] = ..., recovery_codes_remaining: _Optional[int] = ...) -> None: ...

class AdmitRequest(_message.Message):
    __slots__ = ("context", "subject", "kind", "fingerprint")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    context: str
    subject: Subject
    kind: str
    fingerprint: bytes
    def __init__(self, context: _Optional[str] = ..., subject: _Optional[_Union[Subject, _Mapping]] = ..., kind: _Optional[str] = ..., fingerprint: _Optional[bytes] = ...) -> None: ...

class AdmitResponse(_message.Message):
    __slots__ = ("verdict", "admitted", "warning", "warning_cause", "warnings", "warning_limit", "limit", "used", "window_seconds", "reputation", "block_number", "block_cause", "block_started", "exempt")
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    ADMITTED_FIELD_NUMBER: _ClassVar[int]
    WARNING_FIELD_NUMBER: _ClassVar[int]
    WARNING_CAUSE_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    WARNING_LIMIT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REPUTATION_FIELD_NUMBER: _ClassVar[int]
    BLOCK_NUMBER_FIELD_NUMBER: _ClassVar[int]
    BLOCK_CAUSE_FIELD_NUMBER: _ClassVar[int]
    BLOCK_STARTED_FIELD_NUMBER: _ClassVar[int]
    EXEMPT_FIELD_NUMBER: _ClassVar[int]
    verdict: Verdict
    admitted: bool
    warning: bool
    warning_cause: SpamCause
    warnings: int
    warning_limit: int
    limit: int
    used: int
    window_seconds: int
    reputation: float
    block_number: int
    block_cause: SpamCause
    block_started: bool
    exempt: bool
    def __init__(self, verdict: _Optional[_Union[Verdict, _Mapping]] = ..., admitted: _Optional[bool] = ..., warning: _Optional[bool] = ..., warning_cause: _Optional[_Union[SpamCause, str]] = ..., warnings: _Optional[int] = ..., warning_limit: _Optional[int] = ..., limit: _Optional[int] = ..., used: _Optional[int] = ..., window_seconds: _Optional[int] = ..., reputation: _Optional[float] = ..., block_number: _Optional[int] = ..., block_cause: _Optional[_Union[SpamCause, str]] = ..., block_started: _Optional[bool] = ..., exempt: _Optional[bool] = ...) -> None: ...

class EnrollTotpRequest(_message.Message):
    __slots__ = ("context", "subject", "account_name")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_NAME_FIELD_NUMBER: _ClassVar[int]
    context: str
    subject: Subject
    account_name: str
    def __init__(self, context: _Optional[str] = ..., subject: _Optional[_Union[Subject, _Mapping]] = ..., account_name: _Optional[str] = ...) -> None: ...

class EnrollTotpResponse(_message.Message):
    __slots__ = ("secret_base32", "otpauth_uri", "qr_png", "algorithm", "digits", "period_seconds")
    SECRET_BASE32_FIELD_NUMBER: _ClassVar[int]
    OTPAUTH_URI_FIELD_NUMBER: _ClassVar[int]
    QR_PNG_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    DIGITS_FIELD_NUMBER: _ClassVar[int]
    PERIOD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    secret_base32: str
    otpauth_uri: str
    qr_png: bytes
    algorithm: str
    digits: int
    period_seconds: int
    def __init__(self, secret_base32: _Optional[str] = ..., otpauth_uri: _Optional[str] = ..., qr_png: _Optional[bytes] = ..., algorithm: _Optional[str] = ..., digits: _Optional[int] = ..., period_seconds: _Optional[int] = ...) -> None: ...
