// Types for @authgate/client. Responses are the protos' messages as
// @grpc/proto-loader gives them: camelCase fields, enums as their names,
// 64-bit integers as strings.

import * as grpc from '@grpc/grpc-js';

export { grpc };

/** The package's version, which the client's user agent carries. */
export const VERSION: string;
/** Where the client finds authgate.v1's protos. */
export const DEFAULT_PROTO_DIR: string;

export type Decision =
  | 'DECISION_UNSPECIFIED'
  | 'DECISION_ALLOW'
  | 'DECISION_DENY'
  | 'DECISION_CHALLENGE_CAPTCHA'
  | 'DECISION_BLOCKED'
  | 'DECISION_CHALLENGE_TOTP'
  | 'DECISION_ENROLL_TOTP';

export interface Key {
  kind: string;
  userId: string;
  ip: string;
  sessionId: string;
  password: string;
}

export interface Verdict {
  decision: Decision;
  /** Stable, machine-readable: "ok", "locked", "banned", ... */
  reason: string;
  rule: string;
  key: Key | null;
  remainingAttempts?: number;
  unblockAt: { seconds: string; nanos: number } | null;
  retryAfterSeconds: string;
  permanent: boolean;
  banReason: string;
}

/** Who is acting: at least one of userId, ip, sessionId. */
export interface Who {
  userId?: string | number;
  ip?: string;
  sessionId?: string;
}

/** A login attempt: also the fingerprint of the password tried. */
export interface Attempt extends Who {
  /** passwordFingerprint(password), never the password. */
  passwordFingerprint?: Buffer;
}

export interface CheckAccessResponse {
  verdict: Verdict;
  shadow: Verdict[];
}

export interface RecordFailureResponse {
  verdict: Verdict;
  lockoutApplied: boolean;
  shadow: Verdict[];
}

export interface RecordSuccessResponse {
  verdict: Verdict;
  shadow: Verdict[];
}

export interface VerifyTotpResponse {
  result: string;
  verdict: Verdict;
  clockDriftSeconds?: string;
  sessionExpiresAt: { seconds: string; nanos: number } | null;
  /** Issued by the call that confirmed an enrollment: show them once. */
  recoveryCodes: string[];
  /** After a recovery code signed the user in. */
  recoveryCodesRemaining?: number;
}

export interface EnrollTotpResponse {
  secretBase32: string;
  otpauthUri: string;
  qrPng: Buffer;
  algorithm: string;
  digits: number;
  periodSeconds: number;
}

export interface AdmitResponse {
  admitted: boolean;
  verdict: Verdict;
  [field: string]: unknown;
}

export interface Client {
  checkAccess(request: { context: string } & Attempt): Promise<CheckAccessResponse>;
  recordFailure(
    request: { context: string; activity?: string } & Attempt,
  ): Promise<RecordFailureResponse>;
  recordSuccess(request: { context: string } & Who): Promise<RecordSuccessResponse>;
  /** `code` from the authenticator app, or `recoveryCode`: never both. */
  verifyTotp(
    request: { context: string; code?: string; recoveryCode?: string } & Who,
  ): Promise<VerifyTotpResponse>;
  regenerateRecoveryCodes(request: { context: string } & Who): Promise<string[]>;
  enrollTotp(request: { context: string; accountName?: string } & Who): Promise<EnrollTotpResponse>;
  admit(
    request: { context: string; kind: string; fingerprint?: Buffer } & Who,
  ): Promise<AdmitResponse>;
  close(): void;
}

export interface ClientOptions {
  /** host:port */
  address: string;
  apiKey?: string;
  credentials?: grpc.ChannelCredentials;
  protoDir?: string;
  timeoutMs?: number;
}

export function createClient(options: ClientOptions): Client;

/** A bot's update as Telegraf and grammY give it, as far as authgate reads it. */
export interface BotContext {
  from?: { id: number | string };
  [field: string]: unknown;
}

export function authgateMiddleware<C extends BotContext>(
  client: Client,
  options: {
    context: string;
    failOpen?: boolean;
    onDenied?: (ctx: C, verdict: Verdict | null) => unknown;
    userId?: (ctx: C) => string | number | undefined | null;
  },
): (ctx: C, next: () => Promise<void>) => Promise<unknown>;

export function admissionMiddleware<C extends BotContext>(
  client: Client,
  options?: {
    context?: string;
    adminIds?: Iterable<string | number>;
    failOpen?: boolean;
    texts?: Record<string, (response?: AdmitResponse) => string | null | undefined>;
  },
): (ctx: C, next: () => Promise<void>) => Promise<unknown>;

/** The SHA-256 of `password` (UTF-8): what checkAccess is told of it. */
export function passwordFingerprint(password: string): Buffer;
