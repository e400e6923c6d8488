// Flat config: typescript-eslint's recommended type-aware rules, plus the
// boundaries DESIGN.md draws between components.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'data/**', '.bench/**', 'eslint.config.js'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      'no-constant-condition': ['error', { checkLoops: false }],
      eqeqeq: ['error', 'always'],
    },
  },
  {
    // ca/ is a pure library: no servers, stores, HTTP or environment.
    files: ['ca/**/*.ts'],
    rules: {
      'no-restricted-imports': ['error', { patterns: ['koa', '@koa/*', 'knex', 'sqlite3', 'ssh2', '../broker/*', '../agent/*'] }],
      'no-restricted-properties': ['error', { object: 'process', property: 'env' }],
    },
  },
  {
    // agent/ may use ca/ and the broker's wire types only.
    files: ['agent/**/*.ts'],
    rules: {
      'no-restricted-imports': ['error', { patterns: [
        { group: ['../broker/*', '!../broker/wire-types.js'], message: 'agent/ may import only the broker wire types' },
        { group: ['koa', '@koa/*', 'knex', 'sqlite3'], message: 'agent/ runs on devices: no server or store packages' },
      ] }],
    },
  },
);
