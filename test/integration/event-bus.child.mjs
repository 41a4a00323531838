// A separate OS process that publishes to a folder event bus, for the
// multi-process tests: node event-bus.child.mjs '<json options>'.
import { register } from 'node:module';

register('./event-bus.child-hooks.mjs', import.meta.url);

const { url, topic, writer, keys, perKey, batch } = JSON.parse(process.argv[2]);
const { openEventBus } = await import('../../contract/events/open.ts');
const bus = await openEventBus(url);
// Start together with the other writers: say ready, wait for a line on stdin.
process.stdout.write('ready\n');
await new Promise((resolve) => process.stdin.once('data', resolve));
process.stdin.pause();
for (let from = 0; from < perKey; from += batch) {
  const events = [];
  for (let seq = from; seq < Math.min(perKey, from + batch); seq++) {
    for (const key of keys) events.push({ key, value: { schema: 1, writer, key, seq } });
  }
  await bus.publish(topic, events);
}
await bus.close();
