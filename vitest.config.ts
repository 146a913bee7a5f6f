import {defineConfig} from 'vitest/config'

export default defineConfig({
  test: {
    // Integration and e2e files start real servers; on 2 cores they run one file at a time.
    fileParallelism: false,
    projects: [
      {
        test: {
          include: ['test/unit/**/*.test.ts'],
          name: 'unit',
        },
      },
      {
        test: {
          hookTimeout: 180_000,
          include: ['test/integration/**/*.integration.test.ts'],
          name: 'integration',
          testTimeout: 120_000,
        },
      },
      {
        test: {
          hookTimeout: 180_000,
          include: ['test/e2e/**/*.e2e.test.ts'],
          name: 'e2e',
          testTimeout: 120_000,
        },
      },
    ],
  },
})
