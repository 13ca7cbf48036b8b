import assert from "node:assert/strict";
import { KubeEventRecorder } from "../../src/sources/kubernetes_events.ts";
import type { KubeClient } from "../../src/sources/kubernetes_client.ts";
import type { OutcomeEvent } from "../../src/policy/shared_gpu.ts";
import { noopTelemetry } from "../../src/metrics/telemetry.ts";
import { ManualClock } from "../reconcile/fakes.ts";

const POD = { namespace: "ns", name: "p", uid: "uid-p" };

/** A recorder whose client records the messages it is asked to POST. */
function recorder() {
  const posted: string[] = [];
  const client = {
    postJson: (_path: string, body: { message: string }) => {
      posted.push(body.message);
      return Promise.resolve({});
    },
  } as unknown as KubeClient;
  const clock = new ManualClock();
  const events = new KubeEventRecorder(client, {
    nodeName: "node",
    telemetry: noopTelemetry,
    clock,
  });
  const applied = (watts: number): OutcomeEvent[] => [
    { pod: POD, reason: "CapApplied", type: "Normal", message: `${watts} W` },
  ];
  return { posted, clock, events, applied };
}

Deno.test("events: within a second of a pod's last Event the newest outcome is held and posted when the second is up", async () => {
  const { posted, clock, events, applied } = recorder();
  events.record("GPU-0", applied(300));
  await events.flush();
  assert.deepEqual(posted, ["300 W"], "the first change: at once");
  for (const watts of [310, 320, 330]) {
    clock.advance(100);
    events.record("GPU-0", applied(watts));
  }
  await Promise.resolve();
  assert.deepEqual(posted, ["300 W"], "held within the second");
  clock.advance(700); // one second after the first Event
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.deepEqual(posted, ["300 W", "330 W"], "the newest, once; not 310 or 320");
  // After a quiet second a change is posted at once.
  clock.advance(1500);
  events.record("GPU-0", applied(200));
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.deepEqual(posted, ["300 W", "330 W", "200 W"]);
  // Another GPU of the same pod has its own second.
  events.record("GPU-1", applied(200));
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.equal(posted.length, 4);
  await events.stop();
});

Deno.test("events: a held outcome equal to the last posted is not posted; flush posts what is held; stop drops it", async () => {
  const { posted, clock, events, applied } = recorder();
  events.record("GPU-0", applied(300));
  clock.advance(100);
  events.record("GPU-0", applied(350));
  clock.advance(100);
  events.record("GPU-0", applied(300)); // back to what was posted
  clock.advance(1000);
  await events.flush();
  assert.deepEqual(posted, ["300 W"], "nothing new to tell");
  clock.advance(100);
  events.record("GPU-0", applied(400));
  await events.flush();
  assert.deepEqual(posted, ["300 W", "400 W"], "flush posts the held outcome at once");
  clock.advance(100);
  events.record("GPU-0", applied(450));
  await events.stop();
  clock.advance(5000);
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.deepEqual(posted, ["300 W", "400 W"], "stopped: dropped");
  assert.equal(clock.pending, 0, "no timer left");
});
