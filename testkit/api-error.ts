/**
 * The stable error code a typed API call ends with: the code of its
 * ApiError, or 'NONE' when it succeeds. Anything that is not an ApiError
 * (a bug in the test, a network failure) is rethrown.
 */
import { ApiError } from '../api/index.js';

export async function apiErrorCode(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
    return 'NONE';
  } catch (err) {
    if (err instanceof ApiError) return err.code;
    throw err;
  }
}
