'use strict';

// Runs against a real authgate: AUTHGATE_ADDR=host:port, and
// AUTHGATE_CHECK_KEY when the server requires API keys.

const { describe, test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const net = require('node:net');

const { createClient, authgateMiddleware, grpc } = require('..');

const ADDR = process.env.AUTHGATE_ADDR;
const KEY = process.env.AUTHGATE_CHECK_KEY || undefined;
if (!ADDR) {
  throw new Error(
    'AUTHGATE_ADDR is not set: start authgate and export AUTHGATE_ADDR=host:port ' +
      '(and AUTHGATE_CHECK_KEY when it requires API keys); see README.md',
  );
}

// Fresh identifiers for every test, so reruns against one server never meet
// the counters or lockouts an earlier run left behind.
const uniqueUser = () => `node-${crypto.randomUUID()}`;
// From 2001:db8::/32, the documentation range.
const uniqueIp = () =>
  `2001:db8:${crypto.randomBytes(12).toString('hex').match(/.{4}/g).join(':')}`;

// A bot's context as Telegraf and grammY shape it: the sender in ctx.from.
const botContext = (id) => ({ from: { id }, message: { text: 'hi' } });

async function unreachableAddress() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return `127.0.0.1:${port}`;
}

function base32Decode(text) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  const bytes = [];
  let value = 0;
  let bits = 0;
  for (const char of text.replace(/=+$/, '').toUpperCase()) {
    const digit = alphabet.indexOf(char);
    if (digit < 0) throw new Error(`not base32: ${char}`);
    value = ((value << 5) | digit) & 0xffff;
    bits += 5;
    if (bits >= 8) {
      bits -= 8;
      bytes.push((value >>> bits) & 0xff);
    }
  }
  return Buffer.from(bytes);
}

// RFC 6238, for the parameters EnrollTotp returned.
function totp({ secretBase32, algorithm, digits, periodSeconds }, unixSeconds) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(unixSeconds / periodSeconds)));
  const mac = crypto
    .createHmac(algorithm.toLowerCase(), base32Decode(secretBase32))
    .update(counter)
    .digest();
  const offset = mac[mac.length - 1] & 0x0f;
  const code = (mac.readUInt32BE(offset) & 0x7fffffff) % 10 ** digits;
  return String(code).padStart(digits, '0');
}

let client;
before(() => {
  client = createClient({ address: ADDR, apiKey: KEY });
});
after(() => client.close());

describe('AccessService', () => {
  test('a fresh subject is allowed', async () => {
    const { verdict } = await client.checkAccess({
      context: 'login',
      userId: uniqueUser(),
      ip: uniqueIp(),
    });
    assert.equal(verdict.decision, 'DECISION_ALLOW');
    assert.equal(verdict.reason, 'ok');
  });

  test('five failures on one user and ip block the pair', async () => {
    const who = { context: 'login', userId: uniqueUser(), ip: uniqueIp() };
    for (let i = 0; i < 4; i++) {
      const { verdict } = await client.recordFailure({ ...who, activity: 'wrong_password' });
      assert.equal(verdict.decision, 'DECISION_ALLOW');
    }
    const { verdict, lockoutApplied } = await client.recordFailure({
      ...who,
      activity: 'wrong_password',
    });
    assert.equal(lockoutApplied, true);
    assert.equal(verdict.decision, 'DECISION_BLOCKED');
    assert.equal(verdict.reason, 'locked');
    assert.ok(verdict.unblockAt, 'unblockAt is set');
    assert.ok(verdict.retryAfterSeconds > 0);

    const checked = await client.checkAccess(who);
    assert.equal(checked.verdict.decision, 'DECISION_BLOCKED');
    assert.deepEqual(checked.verdict.unblockAt, verdict.unblockAt);
    // A success clears counts but does not lift a lock in force.
    const succeeded = await client.recordSuccess(who);
    assert.equal(succeeded.verdict.decision, 'DECISION_BLOCKED');
  });

  test('a missing subject is INVALID_ARGUMENT', async () => {
    await assert.rejects(client.checkAccess({ context: 'login' }), {
      code: grpc.status.INVALID_ARGUMENT,
    });
  });

  test(
    'a wrong or missing API key is refused',
    { skip: KEY ? false : 'AUTHGATE_CHECK_KEY is empty: the server accepts anonymous calls' },
    async () => {
      for (const apiKey of ['ag_not-a-key', undefined]) {
        const other = createClient({ address: ADDR, apiKey });
        try {
          await assert.rejects(other.checkAccess({ context: 'login', userId: uniqueUser() }), {
            code: grpc.status.UNAUTHENTICATED,
          });
        } finally {
          other.close();
        }
      }
    },
  );
});

describe('middleware', () => {
  function gate(options) {
    const denied = [];
    const middleware = authgateMiddleware(options.client ?? client, {
      context: 'bot',
      onDenied: (ctx, verdict) => {
        denied.push(verdict);
        return 'denied';
      },
      ...options,
    });
    return { middleware, denied };
  }

  function recordingNext() {
    const next = async () => {
      next.calls += 1;
      return 'handled';
    };
    next.calls = 0;
    return next;
  }

  test('an allowed update reaches next() with the verdict', async () => {
    const { middleware, denied } = gate({});
    const ctx = botContext(uniqueUser());
    const next = recordingNext();
    assert.equal(await middleware(ctx, next), 'handled');
    assert.equal(next.calls, 1);
    assert.equal(ctx.authgate.decision, 'DECISION_ALLOW');
    assert.deepEqual(denied, []);
  });

  test('strikes challenge, then block, and next() is skipped', async () => {
    const { middleware, denied } = gate({});
    const userId = uniqueUser();
    const next = recordingNext();
    for (let i = 0; i < 3; i++) {
      await client.recordFailure({ context: 'bot', userId, activity: 'spam' });
    }
    assert.equal(await middleware(botContext(userId), next), 'denied');
    assert.equal(denied.at(-1).decision, 'DECISION_CHALLENGE_CAPTCHA');

    let response;
    for (let i = 0; i < 2; i++) {
      response = await client.recordFailure({ context: 'bot', userId, activity: 'spam' });
    }
    assert.equal(response.lockoutApplied, true);
    assert.equal(await middleware(botContext(userId), next), 'denied');
    assert.equal(denied.at(-1).decision, 'DECISION_BLOCKED');
    assert.ok(denied.at(-1).unblockAt);
    assert.equal(next.calls, 0);
  });

  test('an update without a user is not judged', async () => {
    const { middleware } = gate({});
    const ctx = { chat: { id: 1 } };
    const next = recordingNext();
    assert.equal(await middleware(ctx, next), 'handled');
    assert.equal(ctx.authgate, null);
  });

  describe('with authgate unreachable', () => {
    let down;
    before(async () => {
      // A port nobody listens on: the outage is real, not simulated.
      down = createClient({ address: await unreachableAddress(), apiKey: KEY, timeoutMs: 2000 });
    });
    after(() => down.close());

    test('fails closed', async () => {
      const { middleware, denied } = gate({ client: down });
      const next = recordingNext();
      assert.equal(await middleware(botContext(uniqueUser()), next), 'denied');
      assert.deepEqual(denied, [null]);
      assert.equal(next.calls, 0);
    });

    test('failOpen lets the update through', async () => {
      const { middleware, denied } = gate({ client: down, failOpen: true });
      const ctx = botContext(uniqueUser());
      const next = recordingNext();
      assert.equal(await middleware(ctx, next), 'handled');
      assert.equal(ctx.authgate, null);
      assert.deepEqual(denied, []);
    });
  });
});

describe('TOTP', () => {
  // "admin" is a context of the default configuration that requires TOTP.
  test('enroll, then a valid code opens a session', async () => {
    const who = { context: 'admin', userId: uniqueUser() };
    const unenrolled = await client.checkAccess(who);
    assert.equal(unenrolled.verdict.decision, 'DECISION_ENROLL_TOTP');

    const enrolled = await client.enrollTotp(who);
    assert.match(enrolled.otpauthUri, /^otpauth:\/\/totp\//);
    const verified = await client.verifyTotp({ ...who, code: totp(enrolled, Date.now() / 1000) });
    assert.equal(verified.result, 'TOTP_RESULT_OK');
    assert.equal(verified.verdict.decision, 'DECISION_ALLOW');
    assert.ok(verified.sessionExpiresAt);

    const signedIn = await client.checkAccess(who);
    assert.equal(signedIn.verdict.decision, 'DECISION_ALLOW');
  });
});
