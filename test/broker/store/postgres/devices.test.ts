/** The store contract of ../devices.test.ts, again on a real PostgreSQL (a throwaway cluster for this file). */
import './backend.js';
import '../devices.test.js';
