/** The store contract of ../nodes.test.ts, again on a real PostgreSQL (a throwaway cluster for this file). */
import './backend.js';
import '../nodes.test.js';
