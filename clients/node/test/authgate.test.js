'use strict';

// Runs against a real authgate: AUTHGATE_ADDR=host:port, and
// AUTHGATE_CHECK_KEY when the server requires API keys.

const { describe, test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const net = require('node:net');

const { Bot, BotError } = require('grammy');

const {
  createClient,
  authgateMiddleware,
  admissionMiddleware,
  passwordFingerprint,
  grpc,
  DEFAULT_PROTO_DIR,
  VERSION,
} = require('..');

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

  test('Admit counts an update against its kind', async () => {
    const response = await client.admit({
      context: 'bot',
      userId: uniqueUser(),
      kind: 'text',
      fingerprint: crypto.createHash('sha256').update('hello').digest(),
    });
    assert.equal(response.admitted, true);
    assert.equal(response.verdict.decision, 'DECISION_ALLOW');
    assert.equal(response.limit, 8);
    assert.equal(response.used, 1);
    assert.equal(response.windowSeconds, 10);
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

describe('passwords', () => {
  test('the fingerprint is the SHA-256 of the UTF-8 password', () => {
    const fingerprint = passwordFingerprint('Summer2024!');
    assert.ok(Buffer.isBuffer(fingerprint));
    assert.equal(fingerprint.length, 32);
    assert.deepEqual(
      fingerprint,
      crypto.createHash('sha256').update(Buffer.from('Summer2024!', 'utf8')).digest(),
    );
  });

  test('one password sprayed across accounts is challenged', async () => {
    // Unique, so reruns against one server start from a fresh count.
    const sprayed = passwordFingerprint(`Summer2024!-${crypto.randomUUID()}`);
    const attempt = () => ({
      context: 'login',
      userId: uniqueUser(),
      ip: uniqueIp(),
      passwordFingerprint: sprayed,
    });
    for (let i = 0; i < 10; i++) {
      const who = attempt();
      const { verdict } = await client.checkAccess(who);
      assert.equal(verdict.decision, 'DECISION_ALLOW', `attempt ${i + 1}`);
      await client.recordFailure({ ...who, activity: 'wrong_password' });
    }

    const { verdict } = await client.checkAccess(attempt());
    assert.equal(verdict.decision, 'DECISION_CHALLENGE_CAPTCHA');
    assert.equal(verdict.rule, 'password');
    assert.equal(verdict.key.kind, 'KEY_KIND_PASSWORD');

    const other = await client.checkAccess({
      ...attempt(),
      passwordFingerprint: passwordFingerprint(`correct horse-${crypto.randomUUID()}`),
    });
    assert.equal(other.verdict.decision, 'DECISION_ALLOW');
  });
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

  test('recovery codes come with the confirmation and each signs in once', async () => {
    const who = { context: 'admin', userId: uniqueUser() };
    const enrolled = await client.enrollTotp(who);
    const confirmed = await client.verifyTotp({ ...who, code: totp(enrolled, Date.now() / 1000) });
    assert.equal(confirmed.recoveryCodes.length, 10);
    const [first, second] = confirmed.recoveryCodes;
    const used = await client.verifyTotp({ ...who, recoveryCode: first.replaceAll('-', '') });
    assert.equal(used.result, 'TOTP_RESULT_OK');
    assert.equal(used.recoveryCodesRemaining, 9);
    const again = await client.verifyTotp({ ...who, recoveryCode: first });
    assert.equal(again.result, 'TOTP_RESULT_INVALID');
    const fresh = await client.regenerateRecoveryCodes(who);
    assert.equal(fresh.length, 10);
    const old = await client.verifyTotp({ ...who, recoveryCode: second });
    assert.equal(old.result, 'TOTP_RESULT_INVALID');
  });
});

// grammY end to end: a real Bot handles real update objects; its API calls
// are recorded instead of reaching Telegram.
describe('admissionMiddleware', () => {
  // Telegram user ids are numbers; random ones keep runs apart.
  const uniqueTelegramId = () => crypto.randomInt(2 ** 40, 2 ** 47);
  const BOT_INFO = {
    id: 42,
    is_bot: true,
    first_name: 'Test',
    username: 'authgate_test_bot',
    can_join_groups: true,
    can_read_all_group_messages: false,
    supports_inline_queries: false,
    can_connect_to_business: false,
    has_main_web_app: false,
    has_topics_enabled: false,
    allows_users_to_create_topics: false,
    can_manage_bots: false,
    supports_join_request_queries: false,
  };
  const RESULTS = {
    sendMessage: ({ chat_id, text }) => ({
      message_id: crypto.randomInt(1, 2 ** 31),
      date: Math.floor(Date.now() / 1000),
      chat: { id: chat_id, type: 'private', first_name: 'User' },
      from: BOT_INFO,
      text,
    }),
    answerCallbackQuery: () => true,
  };

  // A bot with the middleware and a last handler that records what reached
  // it; `calls` are the API calls the bot made.
  function testBot(options = {}) {
    const bot = new Bot('42:test-token', { botInfo: BOT_INFO });
    const calls = [];
    bot.api.config.use(async (_prev, method, payload) => {
      calls.push({ method, payload });
      return { ok: true, result: RESULTS[method](payload) };
    });
    const handled = [];
    bot.use(admissionMiddleware(options.client ?? client, { context: 'bot', ...options }));
    bot.use((ctx) => {
      handled.push(ctx.admission);
    });
    return { bot, calls, handled };
  }

  let updateId = 0;
  const user = (id) => ({ id, is_bot: false, first_name: 'User' });
  function message(userId, fields) {
    updateId += 1;
    return {
      update_id: updateId,
      message: {
        message_id: updateId,
        date: Math.floor(Date.now() / 1000),
        chat: { id: userId, type: 'private', first_name: 'User' },
        from: user(userId),
        ...fields,
      },
    };
  }
  const text = (userId, body) => message(userId, { text: body });
  const command = (userId, body) =>
    message(userId, {
      text: body,
      entities: [{ type: 'bot_command', offset: 0, length: body.split(' ')[0].length }],
    });
  function callback(userId, data) {
    updateId += 1;
    return {
      update_id: updateId,
      callback_query: {
        id: String(updateId),
        from: user(userId),
        chat_instance: '-1',
        data,
        message: {
          message_id: 1,
          date: Math.floor(Date.now() / 1000),
          chat: { id: userId, type: 'private', first_name: 'User' },
          from: BOT_INFO,
          text: 'Pick one',
        },
      },
    };
  }
  const file = (id) => ({ file_id: `file-${id}`, file_unique_id: `unique-${id}` });

  const sha256 = (content) => crypto.createHash('sha256').update(content).digest();
  const UNAVAILABLE = '⏳ The bot cannot take requests right now. Try again in a minute.';

  // The client, with every Admit request it sends recorded.
  function recordingClient() {
    const requests = [];
    const recording = {
      ...client,
      admit: (request) => {
        requests.push(request);
        return client.admit(request);
      },
    };
    return { recording, requests };
  }

  test('eight texts are handled; the ninth is not and draws a warning', async () => {
    const { bot, calls, handled } = testBot();
    const userId = uniqueTelegramId();
    for (let i = 1; i <= 8; i++) await bot.handleUpdate(text(userId, `message ${i}`));
    assert.equal(handled.length, 8);
    assert.deepEqual(calls, []);

    const ninth = text(userId, 'message 9');
    await bot.handleUpdate(ninth);
    assert.equal(handled.length, 8);
    assert.equal(calls.length, 1);
    const [{ method, payload }] = calls;
    assert.equal(method, 'sendMessage');
    assert.equal(payload.chat_id, userId);
    assert.equal(payload.reply_parameters.message_id, ninth.message.message_id);
    assert.equal(
      payload.text,
      '⚠️ Warning #1\n\nYou are sending requests too often!\n' +
        'Limit: 8 requests per 10 s\n\nAt 3 warnings you will be blocked.',
    );
  });

  test('five identical texts are handled; the sixth blocks and the user is told', async () => {
    const { bot, calls, handled } = testBot();
    const userId = uniqueTelegramId();
    for (let i = 0; i < 5; i++) await bot.handleUpdate(text(userId, 'buy now'));
    assert.equal(handled.length, 5);
    assert.deepEqual(calls, []);

    await bot.handleUpdate(text(userId, 'buy now'));
    assert.equal(handled.length, 5);
    assert.deepEqual(calls.map((c) => c.method), ['sendMessage']);
    assert.equal(
      calls[0].payload.text,
      '🚫 You are blocked for spam.\n\n⏳ Time left: 2 min\n' +
        '⚠️ Cause: the same message again and again\n📊 Block #1',
    );

    // Still blocked: a different text is refused too, and explained again.
    await bot.handleUpdate(text(userId, 'hello?'));
    assert.equal(handled.length, 5);
    assert.equal(calls.length, 2);
    assert.equal(calls[1].payload.text, calls[0].payload.text);
  });

  test('a callback flood is answered with alerts', async () => {
    const { bot, calls, handled } = testBot();
    const userId = uniqueTelegramId();
    for (let i = 1; i <= 10; i++) await bot.handleUpdate(callback(userId, `page:${i}`));
    assert.equal(handled.length, 10);

    const presses = [11, 12, 13].map((i) => callback(userId, `page:${i}`));
    for (const press of presses) await bot.handleUpdate(press);
    assert.equal(handled.length, 10);
    assert.deepEqual(
      calls.map((c) => c.method),
      ['answerCallbackQuery', 'answerCallbackQuery', 'answerCallbackQuery'],
    );
    assert.deepEqual(
      calls.map((c) => c.payload.callback_query_id),
      presses.map((p) => p.callback_query.id),
    );
    for (const { payload } of calls) assert.equal(payload.show_alert, true);
    assert.equal(calls[0].payload.text, '⚠️ Warning 1/3');
    assert.equal(calls[1].payload.text, '⚠️ Warning 2/3');
    assert.match(calls[2].payload.text, /^🚫 Blocked: \d+ min$/);
  });

  test('the texts can be overridden one by one, or silenced', async () => {
    const { bot, calls, handled } = testBot({
      texts: {
        warning: (r) => `Slow down: ${r.used}/${r.limit}`,
        blocked: () => null,
      },
    });
    const userId = uniqueTelegramId();
    for (let i = 0; i < 9; i++) await bot.handleUpdate(text(userId, `message ${i}`));
    assert.deepEqual(calls.map((c) => c.payload.text), ['Slow down: 8/8']);
    // Two more warnings block; the block is told nothing.
    for (let i = 0; i < 3; i++) await bot.handleUpdate(text(userId, `more ${i}`));
    assert.equal(calls.length, 2);
    assert.equal(handled.length, 8);
    // The alert was not overridden.
    await bot.handleUpdate(callback(userId, 'yes'));
    assert.equal(calls.length, 3);
    assert.match(calls[2].payload.text, /^🚫 Blocked: \d+ min$/);
  });

  test('a misspelt or non-function text is refused at once', () => {
    assert.throws(() => admissionMiddleware(client, { texts: { block: () => 'x' } }), {
      name: 'TypeError',
      message: /unknown text "block"/,
    });
    assert.throws(() => admissionMiddleware(client, { texts: { warning: 'slow down' } }), {
      name: 'TypeError',
      message: /texts\.warning must be a function/,
    });
  });

  test('a lockout by the failure rules gets the blocked text, without cause', async () => {
    const { bot, calls, handled } = testBot();
    const userId = uniqueTelegramId();
    // The bot context's failure rule locks a user after 5 failures for 1 min.
    let recorded;
    for (let i = 0; i < 5; i++) {
      recorded = await client.recordFailure({ context: 'bot', userId, activity: 'spam' });
    }
    assert.equal(recorded.lockoutApplied, true);

    await bot.handleUpdate(text(userId, 'hello'));
    await bot.handleUpdate(callback(userId, 'yes'));
    assert.deepEqual(handled, []);
    assert.deepEqual(calls.map((c) => c.method), ['sendMessage', 'answerCallbackQuery']);
    // Rounded up: a minute, or the seconds left once less than one remains.
    assert.match(
      calls[0].payload.text,
      /^🚫 You are blocked for spam\.\n\n⏳ Time left: (1 min|\d+ s)$/,
    );
    assert.match(calls[1].payload.text, /^🚫 Blocked: (1 min|\d+ s)$/);
    assert.equal(calls[1].payload.show_alert, true);
  });

  test('commands are never limited', async () => {
    const { bot, calls, handled } = testBot();
    const userId = uniqueTelegramId();
    for (let i = 0; i < 30; i++) await bot.handleUpdate(command(userId, '/start'));
    assert.equal(handled.length, 30);
    assert.deepEqual(calls, []);
    assert.equal(handled.at(-1).limit, undefined);
    // Nor do they use up the texts' room.
    await bot.handleUpdate(text(userId, 'hello'));
    assert.equal(handled.length, 31);
    assert.equal(handled.at(-1).used, 1);
  });

  test('each update is judged as its kind, with its fingerprint', async () => {
    const forwardOrigin = { type: 'user', sender_user: user(7), date: 1700000000 };
    const photo = (id) => [{ ...file(id), width: 9, height: 9 }];
    // [update, the kind and the content fingerprinted (null: none), and the
    // kind's limit in a fresh user's AdmitResponse, which tells which kind
    // authgate counted: text 8, forward 20, callback and media 10, command
    // none].
    const cases = [
      [(id) => text(id, 'plain'), 'text', 'plain', 8],
      [
        (id) => message(id, { text: 'a reply', reply_to_message: text(id, 'x').message }),
        'text',
        'a reply',
        8,
      ],
      [(id) => message(id, { location: { latitude: 0, longitude: 0 } }), 'text', null, 8],
      [
        (id) => message(id, { text: 'passed on', forward_origin: forwardOrigin }),
        'forward',
        'passed on',
        20,
      ],
      [
        (id) => message(id, { text: 'passed on', forward_date: 1700000000 }),
        'forward',
        'passed on',
        20,
      ],
      // A forwarded "/start" is not the user's command to this bot.
      [
        (id) => message(id, { text: '/start', forward_origin: forwardOrigin }),
        'forward',
        '/start',
        20,
      ],
      [
        (id) => message(id, { photo: photo('f'), forward_origin: forwardOrigin }),
        'forward',
        null,
        20,
      ],
      [(id) => command(id, '/help'), 'command', '/help', undefined],
      // Only the text makes a command: "/start" without a command entity too.
      [(id) => text(id, '/start'), 'command', '/start', undefined],
      [(id) => message(id, { photo: photo('p') }), 'media', null, 10],
      [(id) => message(id, { photo: photo('c'), caption: 'see' }), 'media', 'see', 10],
      // Captions are never commands.
      [(id) => message(id, { photo: photo('x'), caption: '/x' }), 'media', '/x', 10],
      [
        (id) => message(id, { video: { ...file('v'), width: 9, height: 9, duration: 1 } }),
        'media',
        null,
        10,
      ],
      [(id) => message(id, { document: file('d') }), 'media', null, 10],
      [(id) => message(id, { audio: { ...file('a'), duration: 1 } }), 'media', null, 10],
      [(id) => message(id, { voice: { ...file('o'), duration: 1 } }), 'media', null, 10],
      [
        (id) =>
          message(id, {
            sticker: {
              ...file('s'),
              type: 'regular',
              width: 9,
              height: 9,
              is_animated: false,
              is_video: false,
            },
          }),
        'media',
        null,
        10,
      ],
      // A GIF, as Telegram sends it: an animation (with a document too).
      [
        (id) =>
          message(id, {
            animation: { ...file('g'), width: 9, height: 9, duration: 1 },
            document: file('g'),
            caption: 'lol',
          }),
        'media',
        'lol',
        10,
      ],
      [
        (id) => message(id, { animation: { ...file('n'), width: 9, height: 9, duration: 1 } }),
        'media',
        null,
        10,
      ],
      [
        (id) => message(id, { video_note: { ...file('r'), length: 9, duration: 1 } }),
        'media',
        null,
        10,
      ],
      [(id) => callback(id, 'yes'), 'callback', 'yes', 10],
    ];
    const { recording, requests } = recordingClient();
    const { bot, handled } = testBot({ client: recording });
    for (const [update] of cases) await bot.handleUpdate(update(uniqueTelegramId()));
    assert.deepEqual(
      requests.map(({ kind, fingerprint }) => [kind, fingerprint]),
      cases.map(([, kind, content]) => [kind, content === null ? undefined : sha256(content)]),
    );
    assert.deepEqual(
      handled.map((admission) => admission.limit),
      cases.map(([, , , limit]) => limit),
    );
  });

  test('updates other than messages and button presses are not judged', async () => {
    const { recording, requests } = recordingClient();
    const { bot, calls, handled } = testBot({ client: recording });
    const edited = text(uniqueTelegramId(), 'edited');
    await bot.handleUpdate({
      update_id: edited.update_id,
      edited_message: { ...edited.message, edit_date: edited.message.date },
    });
    assert.deepEqual(handled, [null]);
    assert.deepEqual(requests, []);
    assert.deepEqual(calls, []);
  });

  test('admins skip authgate', async () => {
    // A client that would fail closed on every call: anything admitted was
    // not asked about.
    const down = createClient({ address: await unreachableAddress(), apiKey: KEY });
    try {
      const admin = uniqueTelegramId();
      const { bot, calls, handled } = testBot({ client: down, adminIds: [String(admin)] });
      for (let i = 0; i < 20; i++) await bot.handleUpdate(text(admin, 'same again'));
      await bot.handleUpdate(callback(admin, 'same'));
      assert.equal(handled.length, 21);
      assert.ok(handled.every((admission) => admission === null));
      assert.deepEqual(calls, []);

      await bot.handleUpdate(text(uniqueTelegramId(), 'not an admin'));
      assert.equal(handled.length, 21);
    } finally {
      down.close();
    }
  });

  test('an Admit error that is not an outage is thrown', async () => {
    // An unknown kind, and a context without admission rules: both are
    // INVALID_ARGUMENT, which must not pass as an outage.
    const unknownKind = {
      ...client,
      admit: (request) => client.admit({ ...request, kind: 'gif' }),
    };
    for (const options of [{ client: unknownKind }, { context: 'login' }]) {
      const { bot, calls, handled } = testBot(options);
      await assert.rejects(bot.handleUpdate(text(uniqueTelegramId(), 'hi')), (error) => {
        assert.ok(error instanceof BotError);
        assert.equal(error.error.code, grpc.status.INVALID_ARGUMENT);
        return true;
      });
      assert.deepEqual(handled, []);
      assert.deepEqual(calls, []);
    }
  });

  describe('with authgate unreachable', () => {
    let down;
    before(async () => {
      down = createClient({ address: await unreachableAddress(), apiKey: KEY, timeoutMs: 2000 });
    });
    after(() => down.close());

    test('fails closed and tells the user', async () => {
      const { bot, calls, handled } = testBot({ client: down });
      const userId = uniqueTelegramId();
      const hello = text(userId, 'hi');
      const press = callback(userId, 'yes');
      await bot.handleUpdate(hello);
      await bot.handleUpdate(press);
      assert.deepEqual(handled, []);
      assert.deepEqual(calls.map((c) => c.method), ['sendMessage', 'answerCallbackQuery']);
      const [told, alert] = calls.map((c) => c.payload);
      assert.equal(told.chat_id, userId);
      assert.equal(told.text, UNAVAILABLE);
      assert.equal(told.reply_parameters.message_id, hello.message.message_id);
      assert.equal(alert.callback_query_id, press.callback_query.id);
      assert.equal(alert.text, UNAVAILABLE);
      assert.equal(alert.show_alert, true);
    });

    test('the outage texts can be silenced', async () => {
      const { bot, calls, handled } = testBot({
        client: down,
        texts: { unavailable: () => null, unavailableAlert: () => undefined },
      });
      await bot.handleUpdate(text(uniqueTelegramId(), 'hi'));
      await bot.handleUpdate(callback(uniqueTelegramId(), 'yes'));
      assert.deepEqual(handled, []);
      assert.deepEqual(calls, []);
    });

    test('failOpen lets updates through', async () => {
      const { bot, calls, handled } = testBot({ client: down, failOpen: true });
      await bot.handleUpdate(text(uniqueTelegramId(), 'hi'));
      await bot.handleUpdate(callback(uniqueTelegramId(), 'yes'));
      assert.deepEqual(handled, [null, null]);
      assert.deepEqual(calls, []);
    });
  });
});

// A real grpc-js server, standing in for authgate, sees who called.
describe('user agent', () => {
  test('calls name the client and its version', async () => {
    const protoLoader = require('@grpc/proto-loader');
    const definition = protoLoader.loadSync('authgate/v1/access.proto', {
      includeDirs: [DEFAULT_PROTO_DIR],
    });
    const { AccessService } = grpc.loadPackageDefinition(definition).authgate.v1;
    const seen = [];
    const server = new grpc.Server();
    server.addService(AccessService.service, {
      CheckAccess: (call, callback) => {
        seen.push(call.metadata.get('user-agent')[0]);
        callback(null, {});
      },
    });
    const port = await new Promise((resolve, reject) =>
      server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (error, bound) =>
        error ? reject(error) : resolve(bound),
      ),
    );
    const standIn = createClient({ address: `127.0.0.1:${port}` });
    try {
      await standIn.checkAccess({ context: 'login', userId: 'u' });
    } finally {
      standIn.close();
      server.forceShutdown();
    }
    assert.equal(VERSION, require('../package.json').version);
    assert.match(seen[0], new RegExp(`^authgate-client-node/${VERSION.replaceAll('.', '\\.')} `));
  });
});
