'use strict';

const crypto = require('node:crypto');
const { isOutage } = require('./outage');

// The message fields that make an update of the "media" kind. Animations and
// video notes are media to a user as much as videos are, so a flood of them
// counts against the media limit rather than the text one.
const MEDIA_FIELDS = [
  'photo',
  'video',
  'document',
  'audio',
  'voice',
  'sticker',
  'animation',
  'video_note',
];

// A hash, never the content: authgate only compares fingerprints. Absent
// (or empty) content has none.
const fingerprint = (content) =>
  content ? crypto.createHash('sha256').update(content).digest() : undefined;

// What authgate is told about an update: its kind, one of the shipped bot
// context's, and its fingerprint; the first rule that matches gives the
// kind, as in the aiogram middleware (clients/python).
function classify(ctx) {
  const query = ctx.callbackQuery;
  if (query) return { kind: 'callback', fingerprint: fingerprint(query.data) };
  const message = ctx.message;
  const content = message.text || message.caption;
  let kind;
  // Servers older than Bot API 7.0 set only forward_date.
  if (message.forward_origin != null || message.forward_date != null) kind = 'forward';
  // Only a message's own text is a command: a "/" caption on a photo or a
  // forwarded "/start" would otherwise escape every limit.
  else if (message.text?.startsWith('/')) kind = 'command';
  else if (MEDIA_FIELDS.some((field) => message[field] != null)) kind = 'media';
  else kind = 'text';
  return { kind, fingerprint: fingerprint(content) };
}

// Rounded up: "1 min" while 119 s remain would send the user back into a
// block that has not ended.
function duration(seconds) {
  if (seconds < 60) return `${seconds} s`;
  if (seconds < 3600) return `${Math.ceil(seconds / 60)} min`;
  return `${Math.ceil(seconds / 3600)} h`;
}

const CAUSES = {
  SPAM_CAUSE_RATE_LIMIT: 'too many requests',
  SPAM_CAUSE_IDENTICAL_MESSAGES: 'the same message again and again',
  SPAM_CAUSE_CALLBACK_SPAM: 'the same button again and again',
  SPAM_CAUSE_MEDIA_FLOOD: 'too many media files',
};

function timeLeft(verdict) {
  return verdict.permanent ? 'until an admin lifts the block' : duration(verdict.retryAfterSeconds);
}

// What the user is told, each a function of the AdmitResponse (unavailable
// and unavailableAlert take nothing: authgate did not answer) returning the
// text, or null to say nothing. The *Alert ones answer a button press with
// a pop-up, which Telegram cuts at 200 characters.
const DEFAULT_TEXTS = {
  warning: (r) =>
    `⚠️ Warning #${r.warnings}\n\n` +
    'You are sending requests too often!\n' +
    `Limit: ${r.limit} requests per ${duration(r.windowSeconds)}\n\n` +
    `At ${r.warningLimit} warnings you will be blocked.`,
  warningAlert: (r) => `⚠️ Warning ${r.warnings}/${r.warningLimit}`,
  blocked: (r) => {
    const lines = ['🚫 You are blocked for spam.', '', `⏳ Time left: ${timeLeft(r.verdict)}`];
    // No block number: the lock comes from the context's failure rules (the
    // bot's own recordFailure calls), not from admission.
    if (r.blockNumber) {
      lines.push(`⚠️ Cause: ${CAUSES[r.blockCause] ?? 'spam'}`);
      lines.push(`📊 Block #${r.blockNumber}`);
    }
    return lines.join('\n');
  },
  blockedAlert: (r) => `🚫 Blocked: ${timeLeft(r.verdict)}`,
  // A user the bot's allow list does not name: answering each of their
  // updates would only give a stranger a way to make the bot talk.
  denied: () => null,
  deniedAlert: () => null,
  unavailable: () => '⏳ The bot cannot take requests right now. Try again in a minute.',
  unavailableAlert: () => '⏳ The bot cannot take requests right now. Try again in a minute.',
};

// Defaults overridden one by one; a misspelt name would otherwise be
// ignored without a word.
function mergeTexts(texts) {
  for (const [name, text] of Object.entries(texts)) {
    if (!(name in DEFAULT_TEXTS)) {
      const names = Object.keys(DEFAULT_TEXTS).join(', ');
      throw new TypeError(`admissionMiddleware: unknown text "${name}" (one of ${names})`);
    }
    if (typeof text !== 'function') {
      throw new TypeError(`admissionMiddleware: texts.${name} must be a function`);
    }
  }
  return { ...DEFAULT_TEXTS, ...texts };
}

// The verdict is the most severe of admission's and the context's other
// rules, so it (not `warning`) says what stopped the update: "rate_limited"
// is one update too many, which warns; any other block is a block, even one
// this update's warning started; anything else (not on the allow list) is a
// denial.
function refusal(response) {
  const verdict = response.verdict ?? {};
  if (verdict.decision !== 'DECISION_BLOCKED') return 'denied';
  if (verdict.reason === 'rate_limited') return 'warning';
  return 'blocked';
}

// A reply to a message, an alert to a button press; nothing for null.
async function tell(ctx, text) {
  if (text == null) return;
  if (ctx.callbackQuery) {
    await ctx.answerCallbackQuery({ text, show_alert: true });
    return;
  }
  await ctx.reply(text, {
    reply_parameters: { message_id: ctx.message.message_id, allow_sending_without_reply: true },
  });
}

/**
 * A grammY middleware that asks authgate's Admit about every message and
 * callback query before the rest of the chain runs, and runs it only when
 * the update is admitted (ctx.admission is then the AdmitResponse, whose
 * `warning` a handler can still look at). A refused update is never
 * handled; the user is told why with a reply to the message, or an alert
 * (answerCallbackQuery with show_alert) to a button press, in the words of
 * `texts` (see DEFAULT_TEXTS: each replaces its default, and a function
 * returning null or undefined says nothing).
 *
 * Users in adminIds are let through without asking authgate, as are
 * updates without a user and updates other than messages and callback
 * queries (edits, channel posts, inline queries); ctx.admission is null
 * for them. When authgate cannot answer (down, overloaded, too slow) the
 * middleware fails closed, telling the user `texts.unavailable`, or lets
 * the update through with ctx.admission null when failOpen; other errors
 * reject, so a wrong API key or context cannot pass as an outage.
 */
function admissionMiddleware(
  client,
  { context = 'bot', adminIds = [], failOpen = false, texts = {} } = {},
) {
  // Telegram ids arrive as numbers; config often holds them as strings.
  const admins = new Set(Array.from(adminIds, String));
  const say = mergeTexts(texts);
  return async (ctx, next) => {
    const judged = (ctx.message || ctx.callbackQuery) && ctx.from != null;
    if (!judged || admins.has(String(ctx.from.id))) {
      ctx.admission = null;
      return next();
    }
    const alert = ctx.callbackQuery ? 'Alert' : '';
    const { kind, fingerprint: print } = classify(ctx);
    let response;
    try {
      response = await client.admit({ context, userId: ctx.from.id, kind, fingerprint: print });
    } catch (error) {
      if (!isOutage(error)) throw error;
      if (failOpen) {
        ctx.admission = null;
        return next();
      }
      return tell(ctx, say[`unavailable${alert}`]());
    }
    ctx.admission = response;
    if (response.admitted) return next();
    return tell(ctx, say[`${refusal(response)}${alert}`](response));
  };
}

module.exports = { admissionMiddleware };
