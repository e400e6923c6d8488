/** The store contract of ../tokens.test.ts, again on a real PostgreSQL (a throwaway cluster for this file). */
import './backend.js';
import '../tokens.test.js';
