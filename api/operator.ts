/**
 * Wire types of the routes for API-key holders: tokens (admin,
 * provisioner), devices and audit (admin, operator), API keys (admin).
 */

/** The roles an API key can carry. */
export const API_KEY_ROLES = ['admin', 'operator', 'provisioner'] as const;
export type ApiKeyRole = (typeof API_KEY_ROLES)[number];
