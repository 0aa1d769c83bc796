'use strict';

const { isOutage } = require('./outage');

/**
 * A Telegraf / grammY middleware, `(ctx, next) => ...`, that asks authgate
 * about ctx.from.id in `context` before the rest of the chain runs.
 *
 * On DECISION_ALLOW it sets ctx.authgate to the verdict and calls next().
 * Any other decision skips next() and returns onDenied(ctx, verdict), where
 * the bot answers the user (a captcha, "try again later", a TOTP prompt).
 * When authgate cannot answer (down, overloaded, too slow) it fails closed,
 * onDenied(ctx, null), unless failOpen; other errors reject, so a wrong API
 * key cannot pass as an outage. Updates without a user (channel posts) carry nothing to judge and
 * go on with ctx.authgate null.
 */
function authgateMiddleware(
  client,
  { context, failOpen = false, onDenied = () => undefined, userId = (ctx) => ctx.from?.id },
) {
  return async (ctx, next) => {
    const id = userId(ctx);
    if (id == null) {
      ctx.authgate = null;
      return next();
    }
    let verdict;
    try {
      ({ verdict } = await client.checkAccess({ context, userId: id }));
    } catch (error) {
      if (!isOutage(error)) throw error;
      if (failOpen) {
        ctx.authgate = null;
        return next();
      }
      return onDenied(ctx, null);
    }
    if (verdict.decision === 'DECISION_ALLOW') {
      ctx.authgate = verdict;
      return next();
    }
    return onDenied(ctx, verdict);
  };
}

module.exports = { authgateMiddleware };
