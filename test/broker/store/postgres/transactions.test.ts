/** The store contract of ../transactions.test.ts, again on a real PostgreSQL (a throwaway cluster for this file). */
import './backend.js';
import '../transactions.test.js';
