/** The store contract of ../rotations.test.ts, again on a real PostgreSQL (a throwaway cluster for this file). */
import './backend.js';
import '../rotations.test.js';
