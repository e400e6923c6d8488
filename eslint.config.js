// Flat config: typescript-eslint's recommended type-aware rules, plus the
// boundaries DESIGN.md draws between the rooms (docs/architecture.md shows
// them as a picture). Each room lists what it may not import; a file gets
// exactly one room's rule, so the rooms are declared once, below.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

const SERVER_PACKAGES = ['koa', '@koa/*', 'knex', 'sqlite3', 'pg'];
const noEnv = ['error', { object: 'process', property: 'env', message: 'configuration flows down from the entry point (STYLE: "Configuration flows down")' }];

/** Outside api/, the contract is reached through its one surface, as ca/ is. */
const API_DOOR = { regex: '^(\\.\\./)+api/(?!index\\.js$)', message: 'import the contract from api/index.ts, its one surface' };

/** `import … from` restrictions: { group: [...patterns], message } or { regex, message }; every room also keeps to api/'s one door. */
const restrict = (...patterns) => ['error', { patterns: [...patterns, API_DOOR] }];
const deny = (group, message) => ({ group, message });
const denyRegex = (regex, message) => ({ regex, message });

/** The rooms of broker/: who may use which I/O package, and nobody below the composition imports it. */
const brokerRoom = (room, { packages = [], may = [], mayFiles = [] }) => {
  const io = { koa: 'http', '@koa/*': 'http', knex: 'store', sqlite3: 'store', pg: 'store', ssh2: 'ssh' };
  const forbiddenPackages = Object.keys(io).filter((p) => !packages.includes(p));
  const rooms = ['store', 'http', 'ssh', 'openssh', 'proxy', 'telemetry', 'compose'].filter((r) => r !== room && !may.includes(r));
  const rules = [
    deny(['../../agent/*', '../../cli/*', '../../provisioning/*', '../../testkit/*', '../../test/*'], 'the broker imports only ca/, api/ and its own rooms'),
  ];
  if (forbiddenPackages.length) rules.push(deny(forbiddenPackages, `broker/${room}/ may not import this package: only http/ imports koa, only store/ imports knex and sqlite3, only ssh/ imports ssh2`));
  const except = mayFiles.map((f) => `(?!${f.replace(/[.]/g, '\\.')}$)`).join('');
  if (rooms.length) rules.push(denyRegex(`^\\.\\./${except}(${rooms.join('|')})/`, `broker/${room}/ may import only ${[...(room === 'core' ? [] : ['core']), ...may, ...mayFiles].join(', ')} (docs/architecture.md)`));
  return { files: [`broker/${room}/**/*.ts`], rules: { 'no-restricted-imports': restrict(...rules) } };
};

export default tseslint.config(
  // test/fixtures/*/agent-src: a released agent's sources, vendored as they shipped (never edited, never linted).
  { ignores: ['dist/**', 'node_modules/**', 'data/**', '.bench/**', 'eslint.config.js', 'test/fixtures/*/agent-src/**'] },
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
    // ca/ is a pure library: no servers, stores, HTTP, SSH sessions or environment.
    files: ['ca/**/*.ts'],
    rules: {
      'no-restricted-imports': restrict(deny([...SERVER_PACKAGES, 'ssh2'], 'ca/ is pure: node built-ins and sshpk only'), denyRegex('^\\.\\./', 'ca/ imports nothing of the project')),
      'no-restricted-properties': noEnv,
    },
  },
  {
    // api/ is the contract: wire types, error codes, protocol constants, the pinned client.
    files: ['api/**/*.ts'],
    rules: {
      'no-restricted-imports': restrict(
        deny([...SERVER_PACKAGES, 'ssh2', 'zod'], 'api/ is the contract: node built-ins and ca/ only'),
        denyRegex('^\\.\\./(?!ca/)', 'api/ may import only ca/'),
      ),
      'no-restricted-properties': noEnv,
    },
  },
  {
    // The device agent runs on small devices: the contract and the CA library, nothing of the broker.
    files: ['agent/**/*.ts'],
    rules: {
      'no-restricted-imports': restrict(
        deny(SERVER_PACKAGES, 'agent/ runs on devices: no server or store packages'),
        denyRegex('^\\.\\./(broker|cli|provisioning|testkit|test)/', 'agent/ reaches the broker only through api/ (and ca/)'),
      ),
    },
  },
  {
    // Factory tooling talks to the broker's HTTP API and writes the agent's files.
    files: ['provisioning/**/*.ts'],
    rules: {
      'no-restricted-imports': restrict(
        deny([...SERVER_PACKAGES, 'ssh2'], 'provisioning/ talks to the broker over HTTP'),
        denyRegex('^\\.\\./(broker|cli|testkit|test)/', 'provisioning/ reaches the broker only through api/ (and ca/)'),
      ),
    },
  },
  {
    // The CLI is a client of the API; it starts and sets up a broker only through the composition's front door.
    files: ['cli/**/*.ts'],
    rules: {
      'no-restricted-imports': restrict(
        denyRegex('^\\.\\./broker/(?!compose/index\\.js$)', 'cli/ reaches the broker through api/ (a client) or broker/compose/index.ts (to run one)'),
        denyRegex('^\\.\\./(testkit|test)/', 'cli/ is shipped: no test code'),
      ),
    },
  },
  // The rules see the store only through its contract (store/types.ts).
  brokerRoom('core', { mayFiles: ['store/types.js'] }),
  brokerRoom('store', { packages: ['knex', 'sqlite3', 'pg'] }),
  brokerRoom('http', { packages: ['koa', '@koa/*'], may: ['store', 'proxy', 'telemetry'] }),
  brokerRoom('ssh', { packages: ['ssh2'] }),
  brokerRoom('openssh', { may: ['store', 'telemetry'] }),
  brokerRoom('proxy', { may: ['store', 'telemetry'] }),
  brokerRoom('telemetry', { may: ['store'] }),
  // Console single sign-on (OpenID Connect): koa-shaped handlers without koa; pages and cookies shared with the proxy's sign-in.
  brokerRoom('oidc', { may: ['proxy', 'telemetry'] }),
  brokerRoom('compose', { may: ['store', 'http', 'ssh', 'openssh', 'proxy', 'telemetry'] }),
  {
    // The console's script runs in the browser (served by broker/http/routes-console.ts): browser globals, no imports.
    files: ['broker/http/console-assets/**/*.js'],
    languageOptions: {
      sourceType: 'module',
      globals: Object.fromEntries(
        ['window', 'document', 'location', 'navigator', 'fetch', 'EventSource', 'URL', 'URLSearchParams', 'Blob', 'Node', 'HTMLInputElement', 'HTMLTextAreaElement', 'setTimeout', 'clearTimeout', 'setInterval', 'clearInterval'].map((g) => [g, 'readonly']),
      ),
    },
  },
  {
    files: ['test/**/*.ts'],
    rules: { 'no-restricted-imports': restrict() },
  },
  {
    // What tests and benchmark scripts share lives in testkit/; nothing shipped or shared imports a test.
    files: ['testkit/**/*.ts', 'scripts/**/*.ts'],
    rules: {
      'no-restricted-imports': restrict(denyRegex('^(\\.\\./)+test/', 'share code through testkit/, not test/')),
    },
  },
);
