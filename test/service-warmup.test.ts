/**
 * The vision service's warm-up image must pass the service's own limits, or the service never
 * reports SERVING: at the smallest byte limit the configuration allows (64 KiB), for model inputs up
 * to 448 pixels, and within the pixel limit. The language service's warm-up likewise stays within its
 * token limit.
 */
import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { CONFIG_OPTIONS } from '../shared/config';
import { startVisionService, warmUpImage } from '../services/vision/server';
import { startLanguageService } from '../services/language/server';
import { createLogger } from '../shared/log';
import { pairConfig } from './reliability-helpers';
import { healthStatus } from './service-helpers';

const MIN_IMAGE_BYTES = CONFIG_OPTIONS['max-image-bytes'].min;

describe('the warm-up image', () => {
  it.each([112, 224, 336, 448])('for a %i-pixel model input is larger than the input and fits the smallest byte limit', async (size) => {
    const png = await warmUpImage(size);
    expect(png.length).toBeLessThanOrEqual(MIN_IMAGE_BYTES);
    expect((await sharp(png).metadata()).width).toBe(2 * size);
  });

  it('stays within the pixel limit', async () => {
    const meta = await sharp(await warmUpImage(336, 100_000)).metadata();
    expect(meta.width! * meta.height!).toBeLessThanOrEqual(100_000);
  });

  it('lets a vision service with the smallest byte limit reach SERVING', async () => {
    const config = pairConfig({ maxImageBytes: MIN_IMAGE_BYTES });
    // Warm-up on whatever VLM_WARMUP says in the environment: the test is about it running.
    const vision = await startVisionService({ ...config, rpc: { ...config.rpc, warmup: true } }, { port: 0, log: createLogger('silent-test') });
    try {
      expect(await healthStatus(vision.address)).toBe('SERVING');
    } finally {
      await vision.stop();
    }
  });

  it('lets a language service that allows one new token (the smallest --max-new-tokens-limit) reach SERVING', async () => {
    const config = pairConfig();
    const language = await startLanguageService({ ...config, limits: { ...config.limits, maxNewTokens: 1 }, rpc: { ...config.rpc, warmup: true, visionTarget: '127.0.0.1:1' } }, { port: 0, log: createLogger('silent-test') });
    try {
      expect(await healthStatus(language.address)).toBe('SERVING');
    } finally {
      await language.stop();
    }
  });
});
