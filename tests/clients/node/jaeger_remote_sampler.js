// Drives the real OpenTelemetry JS SDK with @opentelemetry/sampler-jaeger-remote against
// faultline's sampling port, and reports what the SDK kept.
//
// Usage: node jaeger_remote_sampler.js ENDPOINT SERVICE SPANS OPERATION...
//
// The sampler starts as AlwaysOff and polls ENDPOINT/sampling?service=SERVICE every
// 100 ms, as an application's would. Once it has taken a policy, SPANS root spans are
// started per OPERATION (fresh random trace ids from the SDK) and the spans the SDK
// recorded are counted. One JSON line goes to stdout:
//   {"sampler": "<the SDK's description>", "kept": {"OPERATION": N, ...}}
// Then, for every line read on stdin, it waits until the SDK's sampler changes (faultline
// reloaded the policy and the SDK polled it) and measures again, printing another line.
'use strict';

const { JaegerRemoteSampler } = require('@opentelemetry/sampler-jaeger-remote');
const {
  AlwaysOffSampler,
  BasicTracerProvider,
  InMemorySpanExporter,
  SimpleSpanProcessor,
} = require('@opentelemetry/sdk-trace-base');

const [endpoint, service, spansArg, ...operations] = process.argv.slice(2);
const spans = Number(spansArg);
if (!endpoint || !service || !(spans > 0) || operations.length === 0) {
  console.error('usage: node jaeger_remote_sampler.js ENDPOINT SERVICE SPANS OPERATION...');
  process.exit(2);
}

const sampler = new JaegerRemoteSampler({
  endpoint,
  serviceName: service,
  poolingInterval: 100,
  initialSampler: new AlwaysOffSampler(),
});
const exporter = new InMemorySpanExporter();
const provider = new BasicTracerProvider({
  sampler,
  spanProcessors: [new SimpleSpanProcessor(exporter)],
});
const tracer = provider.getTracer('faultline-sampling-test');

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitForSampler(previous) {
  const deadline = Date.now() + 20000;
  while (sampler.toString() === previous) {
    if (Date.now() > deadline) {
      throw new Error(`the SDK's sampler did not change from ${previous} within 20 s`);
    }
    await sleep(20);
  }
  // One more poll interval: the description can change before every field settles.
  await sleep(250);
  return sampler.toString();
}

function measure(description) {
  const kept = {};
  for (const op of operations) {
    exporter.reset();
    for (let i = 0; i < spans; i++) {
      tracer.startSpan(op).end();
    }
    kept[op] = exporter.getFinishedSpans().length;
  }
  process.stdout.write(JSON.stringify({ sampler: description, kept }) + '\n');
}

async function main() {
  let description = await waitForSampler(sampler.toString());
  measure(description);
  const lines = require('readline').createInterface({ input: process.stdin });
  for await (const _ of lines) {
    description = await waitForSampler(description);
    measure(description);
  }
  process.exit(0);
}

main().catch((err) => {
  console.error(String(err && err.stack ? err.stack : err));
  process.exit(1);
});
