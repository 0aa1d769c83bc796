'use strict';

const crypto = require('node:crypto');

/**
 * The 32-byte SHA-256 of `password` (UTF-8) as a Buffer, for the
 * passwordFingerprint option of checkAccess and recordFailure.
 *
 * Never send the raw password: send this. authgate re-keys it with
 * HMAC-SHA256 under a server-side secret and keeps only that HMAC, so it can
 * count one password tried against many accounts (password spraying)
 * without holding anything a leak could turn back into the password.
 */
function passwordFingerprint(password) {
  return crypto.createHash('sha256').update(password, 'utf8').digest();
}

module.exports = { passwordFingerprint };
