/** The store contract of ../certs.test.ts, again on a real PostgreSQL (a throwaway cluster for this file). */
import './backend.js';
import '../certs.test.js';
