import assert from "node:assert/strict";
import {
  decodeCString,
  decodePciInfo,
  decodeProcessInfos,
  encodeCString,
  PCI_INFO,
  PROCESS_INFO_V1,
  PROCESS_INFO_V2,
  processInfoSize,
} from "../../src/nvml/layouts.ts";

Deno.test("struct sizes and offsets match nvml.h on x86-64", () => {
  assert.deepEqual(PROCESS_INFO_V1, { size: 16, pid: 0, usedGpuMemory: 8 });
  assert.deepEqual(PROCESS_INFO_V2, {
    size: 24,
    pid: 0,
    usedGpuMemory: 8,
    gpuInstanceId: 16,
    computeInstanceId: 20,
  });
  assert.equal(PCI_INFO.size, 68);
  assert.equal(PCI_INFO.busId, 36);
  assert.equal(PCI_INFO.busIdLength, 32);
  assert.equal(processInfoSize(1), 16);
  assert.equal(processInfoSize(2), 24);
});

Deno.test("decodeProcessInfos reads v1 entries at a 16-byte stride", () => {
  const buffer = new Uint8Array(16 * 3);
  const view = new DataView(buffer.buffer);
  view.setUint32(0, 4242, true);
  view.setUint32(4, 0xdeadbeef, true); // padding must be ignored
  view.setBigUint64(8, 1024n, true);
  view.setUint32(16, 77, true);
  view.setBigUint64(24, 0xffff_ffff_ffff_ffffn, true);
  view.setUint32(32, 99, true); // third entry, not filled per count
  assert.deepEqual(decodeProcessInfos(buffer, { layout: 1, count: 2 }), [
    { pid: 4242, usedGpuMemory: 1024n, gpuInstanceId: null, computeInstanceId: null },
    { pid: 77, usedGpuMemory: null, gpuInstanceId: null, computeInstanceId: null },
  ]);
});

Deno.test("decodeProcessInfos reads v2 entries with MIG instance ids", () => {
  const buffer = new Uint8Array(24 * 2);
  const view = new DataView(buffer.buffer);
  view.setUint32(0, 1, true);
  view.setBigUint64(8, 5n, true);
  view.setUint32(16, 0xffff_ffff, true);
  view.setUint32(20, 0xffff_ffff, true);
  view.setUint32(24, 2, true);
  view.setBigUint64(32, 6n, true);
  view.setUint32(40, 3, true);
  view.setUint32(44, 0, true);
  assert.deepEqual(decodeProcessInfos(buffer, { layout: 2, count: 2 }), [
    { pid: 1, usedGpuMemory: 5n, gpuInstanceId: null, computeInstanceId: null },
    { pid: 2, usedGpuMemory: 6n, gpuInstanceId: 3, computeInstanceId: 0 },
  ]);
});

Deno.test("decodeProcessInfos honours subarray offsets and rejects short buffers", () => {
  const backing = new Uint8Array(8 + 16);
  new DataView(backing.buffer).setUint32(8, 31337, true);
  const slice = backing.subarray(8);
  assert.equal(decodeProcessInfos(slice, { layout: 1, count: 1 })[0].pid, 31337);
  assert.throws(() => decodeProcessInfos(slice, { layout: 2, count: 1 }), RangeError);
  assert.throws(() => decodeProcessInfos(slice, { layout: 1, count: -1 }), RangeError);
  assert.deepEqual(decodeProcessInfos(new Uint8Array(0), { layout: 2, count: 0 }), []);
});

Deno.test("decodePciInfo reads the bus id at offset 36", () => {
  const buffer = new Uint8Array(68);
  const view = new DataView(buffer.buffer);
  buffer.set(new TextEncoder().encode("0000:18:00.0"), 0);
  view.setUint32(16, 0, true);
  view.setUint32(20, 0x18, true);
  view.setUint32(24, 0, true);
  view.setUint32(28, 0x233010de, true);
  view.setUint32(32, 0x16c110de, true);
  buffer.set(new TextEncoder().encode("00000000:18:00.0"), 36);
  assert.deepEqual(decodePciInfo(buffer), {
    busIdLegacy: "0000:18:00.0",
    domain: 0,
    bus: 0x18,
    device: 0,
    pciDeviceId: 0x233010de,
    pciSubSystemId: 0x16c110de,
    busId: "00000000:18:00.0",
  });
  assert.throws(() => decodePciInfo(new Uint8Array(67)), RangeError);
});

Deno.test("decodeCString stops at NUL, bounds the slice, and round-trips encodeCString", () => {
  const encoded = encodeCString("GPU-é");
  assert.equal(encoded.at(-1), 0);
  assert.equal(decodeCString(encoded), "GPU-é");
  const buffer = new Uint8Array([65, 66, 67, 68]);
  assert.equal(decodeCString(buffer), "ABCD");
  assert.equal(decodeCString(buffer, 1, 2), "BC");
  assert.equal(decodeCString(new Uint8Array([0, 65])), "");
});
