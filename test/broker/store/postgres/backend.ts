/**
 * Imported first by every file here: the contract test file imported next
 * registers its tests on PostgreSQL (ES modules evaluate in import order).
 */
import { useBackend } from '../fixtures.js';

useBackend('postgres');
