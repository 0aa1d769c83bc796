'use strict';

const grpc = require('@grpc/grpc-js');

// The codes of an authgate that cannot answer (down, overloaded, too slow),
// as opposed to one that refuses the request (a bad key, a bad argument):
// only these may fail open.
const OUTAGE = new Set([
  grpc.status.UNAVAILABLE,
  grpc.status.RESOURCE_EXHAUSTED,
  grpc.status.DEADLINE_EXCEEDED,
]);

const isOutage = (error) => OUTAGE.has(error.code);

module.exports = { isOutage };
