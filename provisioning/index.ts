/** Factory provisioning: token batches and device bundles, flashing an image root, verifying it. */
export { runBatch, type BatchReport } from './batch.js';
export { readSerialsFile, type BatchDeps, type BatchOptions, type BrokerCall } from './batch-plan.js';
export {
  BUNDLE_FORMAT, DEFAULT_STATE_DIR, buildAgentConfig, parseBundle, parseServiceFlags, readBundle,
  type BrokerCaResponse, type DeviceBundle,
} from './bundle.js';
export { ProvisionError, type ProvisionErrorCode } from './errors.js';
export { flashImage, imageLayout, PROVISIONING_FORMAT, type FlashOptions, type FlashReport, type ProvisioningRecord } from './flash.js';
export { resolveInRoot } from './image-root.js';
export { CSV_COLUMNS, MANIFEST_FORMAT, manifestPaths, readManifest, type Manifest, type ManifestDevice } from './manifest.js';
export { checkEnabled, enableUnit, findImageUnit, findRepoUnit, parseAgentUnit, UNIT_NAME, wantsLink } from './systemd-unit.js';
export { verifyImage, type VerifyCheck, type VerifyReport } from './verify.js';
