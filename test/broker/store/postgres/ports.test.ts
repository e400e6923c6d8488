/** The store contract of ../ports.test.ts, again on a real PostgreSQL (a throwaway cluster for this file). */
import './backend.js';
import '../ports.test.js';
