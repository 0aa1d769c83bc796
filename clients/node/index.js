'use strict';

const grpc = require('@grpc/grpc-js');
const { createClient, DEFAULT_PROTO_DIR, VERSION } = require('./lib/client');
const { authgateMiddleware } = require('./lib/middleware');
const { admissionMiddleware } = require('./lib/admission');
const { passwordFingerprint } = require('./lib/password');

// grpc is re-exported so callers build credentials (and compare status
// codes) with the same grpc-js instance the client uses.
module.exports = {
  createClient,
  authgateMiddleware,
  admissionMiddleware,
  passwordFingerprint,
  grpc,
  DEFAULT_PROTO_DIR,
  VERSION,
};
