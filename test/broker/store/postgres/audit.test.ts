/** The store contract of ../audit.test.ts, again on a real PostgreSQL (a throwaway cluster for this file). */
import './backend.js';
import '../audit.test.js';
