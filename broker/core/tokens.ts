/**
 * Enrollment tokens: minted singly or in batches by admin or provisioner
 * keys, shown once, stored only as hashes, listed without secrets, revoked
 * one by one or by batch.
 */
import type { ListTokensRequest, ListTokensResponse, MintedTokenView, MintTokensRequest, MintTokensResponse, RevokeTokensRequest, RevokeTokensResponse, TokenStatus, TokenView } from '../../api/index.js';
import { BrokerError } from './errors.js';
import type { TokenRecord } from '../store/types.js';
import type { Actor, CoreDeps } from './deps.js';
import { hashSecret, newId, newTokenSecret } from './secrets.js';

/** The status of T at NOW, by the precedence api/operator.ts gives TokenStatus. */
export function tokenStatus(t: TokenRecord, now: Date): TokenStatus {
  if (t.usedAt) return 'used';
  if (t.revokedAt) return 'revoked';
  if (t.expiresAt <= now) return 'expired';
  return 'active';
}

function viewToken(t: TokenRecord, now: Date): TokenView {
  return {
    id: t.id, batch: t.batch, bindName: t.bindName, bindSerial: t.bindSerial, status: tokenStatus(t, now),
    createdAt: t.createdAt.toISOString(), createdBy: t.createdBy, expiresAt: t.expiresAt.toISOString(),
    usedAt: t.usedAt?.toISOString() ?? null, usedByDevice: t.usedByDevice, revokedAt: t.revokedAt?.toISOString() ?? null,
  };
}

/** REQ as the route's schema parsed it: count has its default. */
export async function mintTokens(deps: CoreDeps, req: MintTokensRequest & { count: number }, actor: Actor): Promise<MintTokensResponse> {
  const now = deps.clock();
  if (req.count < 1 || req.count > deps.config.tokens.maxBatch) {
    throw new BrokerError('BAD_REQUEST', `count must be between 1 and ${deps.config.tokens.maxBatch}`);
  }
  for (const [field, list] of [['bindNames', req.bindNames], ['bindSerials', req.bindSerials]] as const) {
    if (list && list.length !== req.count) throw new BrokerError('BAD_REQUEST', `${field} must have one entry per token (${req.count})`);
  }
  const expiresAt = new Date(now.getTime() + (req.ttlSeconds ?? deps.config.tokens.defaultTtlSeconds) * 1000);
  const batch = req.batch ?? null;
  const minted: MintedTokenView[] = [];
  const rows = Array.from({ length: req.count }, (_, i) => {
    const secret = newTokenSecret();
    const row = {
      id: newId('tok'), tokenHash: hashSecret(secret), batch, bindName: req.bindNames?.[i] ?? null, bindSerial: req.bindSerials?.[i] ?? null,
      createdAt: now, createdBy: actor.id, expiresAt,
    };
    minted.push({ id: row.id, token: secret, batch, bindName: row.bindName, bindSerial: row.bindSerial, expiresAt: expiresAt.toISOString() });
    return row;
  });
  await deps.store.transaction(async (tx) => {
    await tx.insertTokens(rows);
    await tx.appendAudit({
      at: now, actor: actor.id, action: 'token.mint', target: batch, remoteAddr: actor.remoteAddr, outcome: 'ok',
      details: { count: req.count, batch, expiresAt: expiresAt.toISOString(), ids: req.count <= 20 ? rows.map((r) => r.id) : undefined },
    });
  });
  return { batch, tokens: minted };
}

export async function listTokens(deps: CoreDeps, filter: ListTokensRequest): Promise<ListTokensResponse> {
  const now = deps.clock();
  const page = await deps.store.listTokens({ ...filter, now });
  return { items: page.items.map((t) => viewToken(t, now)), nextCursor: page.nextCursor };
}

export async function revokeTokens(deps: CoreDeps, which: RevokeTokensRequest, actor: Actor): Promise<RevokeTokensResponse> {
  const now = deps.clock();
  return deps.store.transaction(async (tx) => {
    const revoked = await tx.revokeTokens(which, actor.id, now);
    await tx.appendAudit({
      at: now, actor: actor.id, action: 'token.revoke', target: 'id' in which ? which.id : `batch:${which.batch}`,
      remoteAddr: actor.remoteAddr, outcome: 'ok', details: { revoked },
    });
    return { revoked };
  });
}
