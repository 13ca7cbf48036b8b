/**
 * Log configuration for the CLI: `--log-level` and `--log-format text|json` on top of
 * `@logtape/logtape`. Only the `gpu-power-agent` category tree is routed; LogTape's own meta
 * logger is kept to warnings and above so configuring logs nothing.
 */

import { configureSync, type LogLevel, type LogRecord, resetSync } from "@logtape/logtape";

/** Levels accepted by `--log-level`. */
export type LogLevelName = "debug" | "info" | "warning" | "error";

/** Formats accepted by `--log-format`. */
export type LogFormat = "text" | "json";

/** Options of {@link configureLogging}. */
export interface LoggingOptions {
  /** Lowest level written. */
  level: LogLevelName;
  /** `text`: one human line per record (journald); `json`: one JSON object per line. */
  format: LogFormat;
  /** Receives each formatted line without its newline; default: written to stderr. */
  sink?: (line: string) => void;
}

/** Root category of every agent logger. */
export const LOG_CATEGORY = "gpu-power-agent";

/**
 * Configure logging for the process (replaces any earlier configuration). Logs nothing itself.
 */
export function configureLogging(options: LoggingOptions): void {
  const write = options.sink ?? writeStderr;
  const format = options.format === "json" ? formatJsonLine : formatTextLine;
  configureSync({
    reset: true,
    sinks: {
      main: (record: LogRecord) => write(format(record)),
    },
    loggers: [
      { category: [LOG_CATEGORY], sinks: ["main"], lowestLevel: options.level },
      { category: ["logtape", "meta"], sinks: ["main"], lowestLevel: "warning" },
    ],
  });
}

/** Drop the logging configuration (tests). */
export function resetLogging(): void {
  resetSync();
}

const encoder = new TextEncoder();

function writeStderr(line: string): void {
  const bytes = encoder.encode(line + "\n");
  let written = 0;
  try {
    while (written < bytes.length) written += Deno.stderr.writeSync(bytes.subarray(written));
  } catch {
    // stderr gone (closed pipe): nothing sensible left to do with a log line.
  }
}

const TEXT_LEVELS: Record<LogLevel, string> = {
  trace: "TRACE",
  debug: "DEBUG",
  info: "INFO",
  warning: "WARN",
  error: "ERROR",
  fatal: "FATAL",
};

/** Render the message template with its values (strings verbatim, others as JSON). */
function renderMessage(record: LogRecord): string {
  let out = "";
  for (let i = 0; i < record.message.length; i++) {
    const part = record.message[i];
    out += i % 2 === 0 ? String(part) : renderValue(part);
  }
  return out;
}

function renderValue(value: unknown): string {
  if (typeof value === "string") return value;
  if (value instanceof Error) return value.message;
  if (value === undefined) return "undefined";
  try {
    return JSON.stringify(value, jsonReplacer) ?? String(value);
  } catch {
    return String(value);
  }
}

function jsonReplacer(_key: string, value: unknown): unknown {
  if (typeof value === "bigint") return value.toString();
  if (value instanceof Error) {
    return {
      name: value.name,
      message: value.message,
      ...(value.cause ? { cause: value.cause } : {}),
    };
  }
  if (value instanceof Map) return Object.fromEntries(value);
  if (value instanceof Set) return [...value];
  return value;
}

/** Properties not already shown through a `{name}` placeholder of the template. */
function extraProperties(record: LogRecord): [string, unknown][] {
  const template = typeof record.rawMessage === "string" ? record.rawMessage : "";
  return Object.entries(record.properties).filter(([key]) => !template.includes(`{${key}}`));
}

/** `2026-05-01T12:00:00.000Z INFO  gpu-power-agent.reconcile: message key=value`. */
export function formatTextLine(record: LogRecord): string {
  let line = `${new Date(record.timestamp).toISOString()} ${TEXT_LEVELS[record.level].padEnd(5)} ${
    record.category.join(".")
  }: ${renderMessage(record)}`;
  for (const [key, value] of extraProperties(record)) line += ` ${key}=${renderValue(value)}`;
  return line.replaceAll("\n", "\\n");
}

/** `{"timestamp":…,"level":"info","category":"gpu-power-agent.reconcile","message":…,"properties":{…}}`. */
export function formatJsonLine(record: LogRecord): string {
  const entry = {
    timestamp: new Date(record.timestamp).toISOString(),
    level: record.level,
    category: record.category.join("."),
    message: renderMessage(record),
    properties: record.properties,
  };
  try {
    return JSON.stringify(entry, jsonReplacer);
  } catch {
    return JSON.stringify({ ...entry, properties: { unserializable: String(record.properties) } });
  }
}
