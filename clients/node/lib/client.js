'use strict';

const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

// The package's version, which this client's user agent carries.
const { version: VERSION } = require('../package.json');
// The protos the package carries (npm pack copies them in), else the
// repository's, for a checkout.
const PACKED_PROTO_DIR = path.resolve(__dirname, '..', 'proto');
const DEFAULT_PROTO_DIR = fs.existsSync(PACKED_PROTO_DIR)
  ? PACKED_PROTO_DIR
  : path.resolve(__dirname, '..', '..', '..', 'proto');

function loadAccessService(protoDir) {
  const definition = protoLoader.loadSync('authgate/v1/access.proto', {
    includeDirs: [protoDir],
    // Counts and seconds in responses stay far below 2^53.
    longs: Number,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).authgate.v1.AccessService;
}

// Telegram ids are numbers; authgate's are strings, with '' meaning absent.
function subject({ userId, ip, sessionId }) {
  return {
    userId: userId == null ? '' : String(userId),
    ip: ip ?? '',
    sessionId: sessionId ?? '',
  };
}

// Only checkAccess and recordFailure send the password tried: some accounts
// do use a sprayed password, and a login to one of them (recordSuccess)
// must not forgive that password's count.
function attempt({ passwordFingerprint, ...who }) {
  return { ...subject(who), passwordFingerprint };
}

/**
 * An AccessService client whose calls return promises of the responses
 * (camelCase fields, enums as their names: verdict.decision ===
 * 'DECISION_ALLOW'). Every call carries `authorization: Bearer <apiKey>`
 * when a key is given and a deadline of timeoutMs. Failed calls reject with
 * grpc-js errors whose `code` is a grpc.status.
 */
function createClient({
  address,
  apiKey,
  credentials = grpc.credentials.createInsecure(),
  protoDir = DEFAULT_PROTO_DIR,
  timeoutMs = 5000,
}) {
  const AccessService = loadAccessService(protoDir);
  // Servers' logs and proxies tell this client, and its version, apart.
  const stub = new AccessService(address, credentials, {
    'grpc.primary_user_agent': `authgate-client-node/${VERSION}`,
  });

  function call(method, request) {
    const metadata = new grpc.Metadata();
    if (apiKey) metadata.set('authorization', `Bearer ${apiKey}`);
    const options = { deadline: Date.now() + timeoutMs };
    return new Promise((resolve, reject) => {
      stub[method](request, metadata, options, (error, response) =>
        error ? reject(error) : resolve(response),
      );
    });
  }

  return {
    // passwordFingerprint: passwordFingerprint(password) at a login, never
    // the password itself; left out, the password rules do not judge.
    checkAccess: ({ context, ...who }) =>
      call('CheckAccess', { context, subject: attempt(who) }),
    recordFailure: ({ context, activity = '', ...who }) =>
      call('RecordFailure', { context, subject: attempt(who), activity }),
    recordSuccess: ({ context, ...who }) =>
      call('RecordSuccess', { context, subject: subject(who) }),
    // code from the authenticator app, or recoveryCode (one of the user's
    // recovery codes), never both. The call that confirms an enrollment
    // answers with recoveryCodes: show them to the user once, privately.
    verifyTotp: ({ context, code = '', recoveryCode = '', ...who }) =>
      call('VerifyTotp', { context, subject: subject(who), code, recoveryCode }),
    // New recovery codes from the user's authenticated session; every
    // earlier one stops working.
    regenerateRecoveryCodes: ({ context, ...who }) =>
      call('RegenerateRecoveryCodes', { context, subject: subject(who) }).then(
        (r) => r.recoveryCodes,
      ),
    enrollTotp: ({ context, accountName = '', ...who }) =>
      call('EnrollTotp', { context, subject: subject(who), accountName }),
    // fingerprint: a Buffer of at most 64 bytes derived from the content
    // (a hash), never the content itself; left out, repeats go unnoticed.
    admit: ({ context, kind, fingerprint, ...who }) =>
      call('Admit', { context, subject: subject(who), kind, fingerprint }),
    close: () => stub.close(),
  };
}

module.exports = { createClient, DEFAULT_PROTO_DIR, VERSION };
