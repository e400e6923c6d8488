/** What every phase of ssh-bench measures with. */
import type { World } from '../../../testkit/conformance/world.js';
import type { Services } from './services.js';
import type { Sizes } from './settings.js';

export interface Rig {
  /** The CAs and the pool both targets trust (the conformance suite's world). */
  readonly world: World;
  /** Where device keys and certificates are written for `ssh`. */
  readonly dir: string;
  readonly services: Services;
  readonly sizes: Sizes;
}
