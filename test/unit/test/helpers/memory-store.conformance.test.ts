import { objectStoreConformance } from '../../../integration/object-store.conformance.js';
import { MemoryStore } from '../../../helpers/memory-store.js';

// The in-memory store keeps every object whole in memory, so the suite's memory bound does not apply;
// everything else (ETags, conditional create and replace, listing, retention, errors) does.
objectStoreConformance(
  'memory',
  async () => {
    const store = new MemoryStore();
    return { store, cleanup: () => store.close() };
  },
  { boundedMemory: false },
);
