// Compiled by `npm run typecheck` (tsc --noEmit): how a TypeScript caller
// uses the package, which the types must accept.
import { createClient, authgateMiddleware, passwordFingerprint, VERSION, grpc } from '../..';

async function login(): Promise<boolean> {
  const client = createClient({
    address: 'authgate:50051',
    apiKey: process.env.AUTHGATE_KEY,
    credentials: grpc.credentials.createInsecure(),
  });
  const who = { context: 'login', userId: 42, ip: '192.0.2.7' };
  const { verdict } = await client.checkAccess({
    ...who,
    passwordFingerprint: passwordFingerprint('hunter2'),
  });
  if (verdict.decision === 'DECISION_BLOCKED') return false;
  const failed = await client.recordFailure({ ...who, activity: 'password' });
  const signedIn = await client.verifyTotp({ context: 'admin', userId: 42, recoveryCode: 'x' });
  const left: number | undefined = signedIn.recoveryCodesRemaining;
  const codes: string[] = await client.regenerateRecoveryCodes({ context: 'admin', userId: 42 });
  authgateMiddleware(client, { context: 'bot', onDenied: (_ctx, v) => v?.reason });
  client.close();
  return failed.lockoutApplied && left !== undefined && codes.length > 0 && VERSION.length > 0;
}

export { login };
