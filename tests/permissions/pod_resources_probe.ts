/**
 * Lists the kubelet's pod resources on the socket `Deno.args[0]` and prints one JSON line:
 * `{"pods": N}` or `{"error": "<message>"}`. Run under a permission set by
 * pod_resources_socket_test.ts.
 *
 * @module
 */
import { createPodResourcesClient } from "../../src/sources/pod_resources.ts";

try {
  const pods = await createPodResourcesClient({ socketPath: Deno.args[0] }).list();
  console.log(JSON.stringify({ pods: pods.length }));
} catch (error) {
  console.log(JSON.stringify({ error: (error as Error).message }));
}
