import assert from "node:assert/strict";
import { getLogger } from "@logtape/logtape";
import { configureLogging, type LoggingOptions, resetLogging } from "../../src/cli/logging.ts";

function capture(options: Omit<LoggingOptions, "sink">, fn: () => void): string[] {
  const lines: string[] = [];
  configureLogging({ ...options, sink: (line) => lines.push(line) });
  try {
    fn();
  } finally {
    resetLogging();
  }
  return lines;
}

Deno.test("configuring logs nothing (LogTape's meta message is silenced)", () => {
  const lines = capture({ level: "debug", format: "json" }, () => {});
  assert.deepEqual(lines, []);
});

Deno.test("json format: one parseable object per line with the fields", () => {
  const lines = capture({ level: "info", format: "json" }, () => {
    getLogger(["gpu-power-agent", "reconcile"]).info(
      "GPU {gpu} ({uuid}): {fromW} W → {toW} W ({reason})",
      {
        gpu: 0,
        uuid: "GPU-8d5b1c2e",
        fromW: 700,
        toW: 250,
        reason: "caps file rule gpus[0]",
        error: new Error("inner"),
        big: 5n,
      },
    );
    getLogger(["gpu-power-agent", "sources", "file"]).warning("multi\nline");
  });
  assert.equal(lines.length, 2);
  for (const line of lines) assert.ok(!line.includes("\n"), "one line per record");
  const first = JSON.parse(lines[0]);
  assert.equal(first.level, "info");
  assert.equal(first.category, "gpu-power-agent.reconcile");
  assert.equal(first.message, "GPU 0 (GPU-8d5b1c2e): 700 W → 250 W (caps file rule gpus[0])");
  assert.equal(new Date(first.timestamp).toISOString(), first.timestamp);
  assert.equal(first.properties.toW, 250);
  assert.equal(first.properties.reason, "caps file rule gpus[0]");
  assert.deepEqual(first.properties.error, { name: "Error", message: "inner" });
  assert.equal(first.properties.big, "5");
  const second = JSON.parse(lines[1]);
  assert.equal(second.level, "warning");
  assert.equal(second.category, "gpu-power-agent.sources.file");
  assert.equal(second.message, "multi\nline");
  assert.deepEqual(second.properties, {});
});

Deno.test("text format: timestamp, level, category, message, extra properties", () => {
  const lines = capture({ level: "debug", format: "text" }, () => {
    const logger = getLogger(["gpu-power-agent", "reconcile"]);
    logger.debug("pass done in {ms} ms", { ms: 3, gpus: 8 });
    logger.error("Cannot set power limit on GPU {uuid}", { uuid: "GPU-1", code: "NO_PERMISSION" });
  });
  assert.equal(lines.length, 2);
  assert.match(
    lines[0],
    /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z DEBUG gpu-power-agent\.reconcile: pass done in 3 ms gpus=8$/,
  );
  assert.match(
    lines[1],
    /Z ERROR gpu-power-agent\.reconcile: Cannot set power limit on GPU GPU-1 code=NO_PERMISSION$/,
  );
});

Deno.test("level filtering drops records below the configured level", () => {
  const lines = capture({ level: "warning", format: "json" }, () => {
    const logger = getLogger(["gpu-power-agent", "k8s"]);
    logger.debug("debug");
    logger.info("info");
    logger.warning("warning");
    logger.error("error");
  });
  assert.deepEqual(lines.map((line) => JSON.parse(line).message), ["warning", "error"]);

  const errorOnly = capture({ level: "error", format: "text" }, () => {
    getLogger(["gpu-power-agent"]).warning("hidden");
    getLogger(["gpu-power-agent"]).error("shown");
  });
  assert.equal(errorOnly.length, 1);
  assert.match(errorOnly[0], /shown$/);
});

Deno.test("other categories are not routed; reset stops output", () => {
  const lines: string[] = [];
  configureLogging({ level: "debug", format: "json", sink: (line) => lines.push(line) });
  try {
    getLogger(["some-library"]).error("not ours");
    getLogger(["gpu-power-agent", "x"]).info("ours");
    configureLogging({ level: "info", format: "text", sink: (line) => lines.push(line) });
    getLogger(["gpu-power-agent", "x"]).info("reconfigured");
  } finally {
    resetLogging();
  }
  getLogger(["gpu-power-agent", "x"]).error("after reset");
  assert.equal(lines.length, 2);
  assert.equal(JSON.parse(lines[0]).message, "ours");
  assert.match(lines[1], / INFO {2}gpu-power-agent\.x: reconfigured$/);
});
