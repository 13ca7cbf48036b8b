/**
 * The caps file: parse and validate the admin's JSON or YAML file of GPU power caps.
 *
 * Format (YAML shown; the same structure as JSON):
 * ```yaml
 * version: 1                 # required; the only supported version
 * default: {watts: 300}      # optional: cap for every GPU no rule matches
 * budget: {watts: 4000}      # optional: node power budget over every GPU (see policy/budget.ts)
 * gpus:                      # optional; later rules win over earlier ones
 *   - index: 0               # selector: exactly one of index | uuid | name (glob: * and ?)
 *     watts: 250             # value: exactly one of watts | percent
 *   - name: "NVIDIA H100*"
 *     percent: 80            # percent of the GPU's default limit
 * ```
 *
 * Decisions:
 * - JSON or YAML is chosen by content: first non-space character `{` means JSON, else YAML.
 * - `parseCapsFile` is async: the `yaml` package is imported lazily, and only for YAML content,
 *   to keep the resident memory of JSON users (and of the agent before it sees YAML) low.
 * - Unknown keys anywhere are errors; JSON duplicate keys are errors (as they are in YAML).
 * - `watts`: a number > 0 and ≤ 100000, decimals allowed, stored as integer milliwatts
 *   (`Math.round(watts * 1000)`). `percent`: a number > 0 and ≤ 100 (of the GPU's default
 *   limit). Values outside the GPU's min/max are accepted here and clamped by the reconciler.
 * - `budget.watts`: the same bounds as a cap's `watts`, stored as integer milliwatts; the only
 *   key of `budget`.
 * - `index`: an integer ≥ 0; `uuid`: a non-empty string matched exactly; `name`: a non-empty,
 *   case-sensitive glob over the whole GPU name (`*` any run of characters, `?` one character).
 * - Every problem is reported at once, sorted by position, each with its key path and
 *   `line:column` (YAML and JSON alike).
 */
import * as z from "zod/mini";
import { loadYaml } from "./load_yaml.ts";
import { dirname, resolve } from "node:path";
import {
  BoundedReadError,
  type BoundedText,
  READ_LIMITS,
  readBoundedText,
} from "../state/bounded_read.ts";

/** Largest accepted `watts` value (a sanity bound against typos such as milliwatts). */
export const MAX_CAP_WATTS = 100_000;

/** Caps file format version this agent understands. */
export const CAPS_FILE_VERSION = 1;

/** The cap a rule or the default asks for. */
export type CapsValue =
  | { kind: "watts"; watts: number; mw: number }
  | { kind: "percent"; percent: number };

/** How a rule selects GPUs. */
export type CapsSelector =
  | { kind: "index"; index: number }
  | { kind: "uuid"; uuid: string }
  | { kind: "name"; pattern: string };

/** One `gpus[...]` entry. */
export interface CapsRule {
  /** Position in the `gpus` list (0-based), for reasons such as `gpus[2]`. */
  position: number;
  selector: CapsSelector;
  value: CapsValue;
}

/** A validated caps file. */
export interface CapsSpec {
  version: 1;
  /** Cap for GPUs no rule matches; absent: such GPUs are unmanaged. */
  default?: CapsValue;
  /** Rules in file order (later rules win). */
  rules: CapsRule[];
  /** Node power budget (`budget: {watts: N}`); absent: no budget. */
  budget?: CapsBudget;
}

/** The node power budget of a caps file. */
export interface CapsBudget {
  watts: number;
  /** `Math.round(watts * 1000)`. */
  mw: number;
}

/** One thing wrong with a caps file. */
export interface CapsFileProblem {
  /** Key path such as `gpus[1].watts`; empty for the whole file. */
  keyPath: string;
  /** 1-based line, when known. */
  line?: number;
  /** 1-based column, when known. */
  column?: number;
  /** What is wrong and what is expected. */
  reason: string;
}

/** Options of {@link parseCapsFile}. */
export interface ParseCapsFileOptions {
  /** File path, used in error messages. */
  path: string;
}

/**
 * A caps file that cannot be read or is invalid. The message names the file and lists every
 * problem, e.g. `Invalid caps file /etc/caps.yaml: gpus[1].watts at line 4:12: expected ...`.
 */
export class CapsFileError extends Error {
  /** The caps file path. */
  readonly path: string;
  /** Every problem found (at least one). */
  readonly problems: readonly CapsFileProblem[];

  constructor(path: string, problems: readonly CapsFileProblem[], options?: ErrorOptions) {
    super(formatCapsFileMessage(path, problems), options);
    this.name = "CapsFileError";
    this.path = path;
    this.problems = problems;
  }
}

/** Render one problem: `gpus[1].watts at line 4:12: expected ...`. */
export function formatCapsFileProblem(problem: CapsFileProblem): string {
  const where = problem.line === undefined
    ? ""
    : `line ${problem.line}${problem.column === undefined ? "" : `:${problem.column}`}`;
  if (problem.keyPath && where) return `${problem.keyPath} at ${where}: ${problem.reason}`;
  if (problem.keyPath) return `${problem.keyPath}: ${problem.reason}`;
  if (where) return `${where}: ${problem.reason}`;
  return problem.reason;
}

function formatCapsFileMessage(path: string, problems: readonly CapsFileProblem[]): string {
  if (problems.length === 1) {
    return `Invalid caps file ${path}: ${formatCapsFileProblem(problems[0])}`;
  }
  return `Invalid caps file ${path}: ${problems.length} problems:\n` +
    problems.map((p) => `  ${formatCapsFileProblem(p)}`).join("\n");
}

/**
 * Parse and validate caps file text. JSON when the first non-space character is `{`, else YAML
 * (the `yaml` package is imported only then). Throws {@link CapsFileError} listing every problem.
 */
export async function parseCapsFile(
  text: string,
  options: ParseCapsFileOptions,
): Promise<CapsSpec> {
  const path = options.path;
  const body = text.startsWith("\uFEFF") ? text.slice(1) : text;
  if (body.trim() === "") {
    throw new CapsFileError(path, [{
      keyPath: "",
      reason: "the file is empty; it must contain at least `version: 1`",
    }]);
  }
  try {
    const parsed = body.trimStart().startsWith("{")
      ? parseJson(body, path)
      : await parseYaml(body, path);
    return validate(parsed, body, path);
  } catch (error) {
    if (!(error instanceof RangeError)) throw error;
    // Nesting deep enough to exhaust the stack is never a caps file.
    throw new CapsFileError(path, [{
      keyPath: "",
      reason: "the file is nested too deeply to be a caps file",
    }], { cause: error });
  }
}

/**
 * Read and parse a caps file. Throws {@link CapsFileError} when it is missing, unreadable or
 * invalid (the CLI maps that to exit code 2).
 */
export async function readCapsFile(path: string): Promise<CapsSpec> {
  return await parseCapsFile(await readCapsFileText(path), { path });
}

/** Read a caps file's text; a missing or unreadable file throws {@link CapsFileError}. */
export async function readCapsFileText(path: string): Promise<string> {
  return (await readCapsFileSnapshot(path)).text;
}

/**
 * Read a caps file through the bounded reader (regular file, at most
 * {@linkcode READ_LIMITS.capsFile} bytes) after checking that its real path stays inside its
 * directory (see {@linkcode capsFileRealPath}). Returns the text and the opened file's `fstat`.
 * Every problem is a {@link CapsFileError} naming the file; contents are never echoed.
 */
export async function readCapsFileSnapshot(path: string): Promise<BoundedText> {
  try {
    for (let attempt = 0;; attempt++) {
      const real = await capsFileRealPath(path);
      const read = await readBoundedText(path, { limit: READ_LIMITS.capsFile, what: "caps file" });
      // A symlink swapped between the check and the read: check (and read) again.
      if (real === await capsFileRealPath(path) || attempt >= 2) return read;
    }
  } catch (error) {
    if (error instanceof CapsFileError) throw error;
    throw new CapsFileError(path, [{ keyPath: "", reason: describeReadError(error) }], {
      cause: error,
    });
  }
}

/**
 * The caps file's real path, which must lie inside the real path of the caps file's directory:
 * the agent may read only that directory, and a symlink out of it (to `/etc/passwd`, a secret)
 * would escape that sandbox. Symlinks inside the directory (a ConfigMap volume's `..data`) are
 * fine. Throws {@link CapsFileError} for a target outside; file-system errors pass through.
 */
export async function capsFileRealPath(path: string): Promise<string> {
  const absolute = resolve(path);
  const dir = dirname(absolute);
  const [real, realDir] = await Promise.all([Deno.realPath(absolute), Deno.realPath(dir)]);
  const inside = realDir === "/" ? real.startsWith("/") : real.startsWith(`${realDir}/`);
  if (!inside) {
    throw new CapsFileError(path, [{
      keyPath: "",
      reason: `it resolves (through a symlink) to ${real}, outside the caps file's directory ` +
        `${dir}: refusing to read it. The agent reads only that directory; put the file there ` +
        `(symlinks within the directory, such as a ConfigMap's ..data, are fine)`,
    }]);
  }
  return real;
}

/** Why a caps file could not be read, for humans. */
export function describeReadError(error: unknown): string {
  if (error instanceof Deno.errors.NotFound) {
    return "file not found: create it or point --caps-file at an existing file";
  }
  if (error instanceof Deno.errors.IsADirectory) return "this is a directory, not a caps file";
  if (error instanceof BoundedReadError) {
    return error.problem === "not-regular" && error.message.includes("a directory")
      ? "this is a directory, not a caps file"
      : error.message.replace(`caps file ${error.path} `, "");
  }
  return `cannot read the file: ${(error as Error).message}`;
}

// ---------------------------------------------------------------------------------------------
// Syntax

type PathSegment = string | number;

/** Source offsets of keys and values by key path, computed only when a problem needs them. */
type Locator = (path: readonly PathSegment[], target: "key" | "value") => number | undefined;

interface Parsed {
  data: unknown;
  locate: Locator;
  /** Problems found while parsing that do not stop validation (JSON duplicate keys). */
  problems: RawProblem[];
}

interface RawProblem {
  path: PathSegment[];
  target: "key" | "value";
  reason: string;
  /** Offset when already known. */
  offset?: number;
}

function parseJson(text: string, path: string): Parsed {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (error) {
    // Our scanner knows where; V8's message knows what. Prefer the scanner's position.
    let offset: number | undefined;
    // V8 quotes the text around the error (`Unexpected token 'd', "dbuser:S3"... is not valid
    // JSON`): keep only what is wrong, never the file's contents.
    let reason = (error as Error).message.replace(/\s+in JSON at position \d+.*$/s, "")
      .replace(/,\s*".*$/s, "");
    try {
      scanJson(text);
    } catch (scanError) {
      if (scanError instanceof JsonSyntaxError) {
        offset = scanError.offset;
        reason = scanError.reason;
      }
    }
    if (offset === undefined) {
      const match = /at position (\d+)/.exec((error as Error).message);
      if (match) offset = Number(match[1]);
    }
    throw new CapsFileError(path, [
      withPosition(
        { keyPath: "", reason: `invalid JSON: ${sanitizeMessage(reason)}` },
        text,
        offset,
      ),
    ]);
  }
  let scan: JsonScan | undefined;
  try {
    scan = scanJson(text);
  } catch {
    // JSON.parse accepted what the scanner did not: positions are simply unavailable.
  }
  const problems: RawProblem[] = (scan?.duplicates ?? []).map((d) => ({
    path: d.path,
    target: "key",
    reason: `duplicate key ${excerpt(String(d.path.at(-1)))}: each key may appear once`,
    offset: d.offset,
  }));
  const locate: Locator = (p, target) => {
    const id = JSON.stringify(p);
    return target === "key" ? scan?.keys.get(id) ?? scan?.values.get(id) : scan?.values.get(id);
  };
  return { data, locate, problems };
}

async function parseYaml(text: string, path: string): Promise<Parsed> {
  const yaml = await loadYaml();
  const doc = yaml.parseDocument(text, { prettyErrors: false, uniqueKeys: true });
  if (doc.errors.length > 0) {
    throw new CapsFileError(
      path,
      doc.errors.map((e) =>
        withPosition(
          { keyPath: "", reason: `invalid YAML: ${sanitizeMessage(e.message)}` },
          text,
          e.pos[0],
        )
      ),
    );
  }
  if (doc.contents === null) {
    throw new CapsFileError(path, [{
      keyPath: "",
      reason: "the file has no content (only comments); it must contain at least `version: 1`",
    }]);
  }
  let data: unknown;
  try {
    data = doc.toJS({ maxAliasCount: 100 });
  } catch (error) {
    throw new CapsFileError(path, [{
      keyPath: "",
      reason: `invalid YAML: ${sanitizeMessage((error as Error).message)}`,
    }]);
  }
  const locate: Locator = (p, target) => {
    let node: unknown = doc.contents;
    for (let i = 0; i < p.length; i++) {
      const segment = p[i];
      if (yaml.isMap(node)) {
        const pair = node.items.find((item) =>
          yaml.isScalar(item.key) ? String(item.key.value) === String(segment) : false
        );
        if (!pair) return undefined;
        const isLast = i === p.length - 1;
        if (isLast && target === "key") return (pair.key as { range?: number[] }).range?.[0];
        node = pair.value ?? pair.key;
      } else if (yaml.isSeq(node) && typeof segment === "number") {
        node = node.items[segment];
      } else {
        return undefined;
      }
    }
    return (node as { range?: number[] } | null)?.range?.[0];
  };
  return { data, locate, problems: [] };
}

// ---------------------------------------------------------------------------------------------
// Schema

const SELECTOR_KEYS = ["index", "uuid", "name"] as const;
const VALUE_KEYS = ["watts", "percent"] as const;
const RULE_KEYS = [...SELECTOR_KEYS, ...VALUE_KEYS] as const;
const TOP_KEYS = ["version", "default", "gpus", "budget"] as const;
const BUDGET_KEYS = ["watts"] as const;

/** Runs even when fields already failed, so every problem is reported in one go. */
const always = { when: () => true };

function exactlyOne(keys: readonly string[], purpose: string) {
  return z.superRefine((value: unknown, ctx) => {
    if (typeof value !== "object" || value === null || Array.isArray(value)) return;
    const found = keys.filter((k) => (value as Record<string, unknown>)[k] !== undefined);
    if (found.length === 1) return;
    const list = keys.join(", ");
    const what = found.length === 0 ? "none" : found.join(" and ");
    ctx.issues.push({
      code: "custom",
      input: value,
      message: `expected exactly one of ${list} ${purpose}, found ${what}`,
      params: { missingOneOf: found.length === 0 ? keys : undefined },
    });
  }, always);
}

const wattsSchema = z.number().check(z.positive(), z.lte(MAX_CAP_WATTS));
const percentSchema = z.number().check(z.positive(), z.lte(100));

const defaultSchema = z.strictObject({
  watts: z.optional(wattsSchema),
  percent: z.optional(percentSchema),
}).check(exactlyOne(VALUE_KEYS, "to set the cap"));

const ruleSchema = z.strictObject({
  index: z.optional(z.int().check(z.nonnegative())),
  uuid: z.optional(z.string().check(z.minLength(1))),
  name: z.optional(z.string().check(z.minLength(1))),
  watts: z.optional(wattsSchema),
  percent: z.optional(percentSchema),
}).check(
  exactlyOne(SELECTOR_KEYS, "to select GPUs"),
  exactlyOne(VALUE_KEYS, "to set the cap"),
);

/** At least 1 mW, at most a cap's largest `watts`. */
const budgetSchema = z.strictObject({
  watts: z.number().check(z.gte(0.001), z.lte(MAX_CAP_WATTS)),
});

const capsFileSchema = z.strictObject({
  version: z.literal(CAPS_FILE_VERSION),
  default: z.optional(defaultSchema),
  gpus: z.optional(z.array(ruleSchema)),
  budget: z.optional(budgetSchema),
});

type CapsFileData = z.infer<typeof capsFileSchema>;

/** What each place in the file expects, for messages. */
const EXPECTED: Record<string, string> = {
  root: "expected a mapping that starts with `version: 1`",
  version: `expected version: ${CAPS_FILE_VERSION} (the only supported version)`,
  default: "expected a mapping with one of watts or percent, e.g. {watts: 300}",
  gpus: "expected a list of rules, e.g. [{index: 0, watts: 250}] (use [] for none)",
  budget: "expected a mapping with the node's power budget, e.g. {watts: 4000}",
  "budget.watts":
    `expected the node's power budget in watts: a number >= 0.001 and <= ${MAX_CAP_WATTS}`,
  rule: "expected a rule mapping, e.g. {index: 0, watts: 250}",
  index: "expected a GPU index: a whole number >= 0",
  uuid: 'expected a non-empty GPU UUID string, e.g. "GPU-8d5b1c2e-..."',
  name: 'expected a non-empty GPU name glob string, e.g. "NVIDIA H100*"',
  watts: `expected a number of watts > 0 and <= ${MAX_CAP_WATTS}`,
  percent: "expected a percentage of the GPU's default limit > 0 and <= 100",
};

const ALLOWED_KEYS: Record<string, readonly string[]> = {
  root: TOP_KEYS,
  default: VALUE_KEYS,
  rule: RULE_KEYS,
  budget: BUDGET_KEYS,
};

/** Which kind of place a key path points at. */
function placeOf(path: readonly PathSegment[]): string {
  if (path.length === 0) return "root";
  if (path[0] === "gpus" && path.length === 2) return "rule";
  if (path[0] === "budget" && path.length === 2) return `budget.${String(path[1])}`;
  return String(path.at(-1));
}

/** Longest excerpt of a file's value or key ever shown in a message. */
export const EXCERPT_CHARS = 40;

/**
 * A short, quoted, sanitised excerpt of a value from the file: at most {@linkcode EXCERPT_CHARS}
 * characters, control characters escaped, `…` when cut. Messages never echo more of the file
 * (it may be a secret the admin pointed the agent at by mistake).
 */
export function excerpt(value: string): string {
  const chars = [...value.slice(0, EXCERPT_CHARS * 2 + 1)];
  const cut = chars.length > EXCERPT_CHARS;
  const quoted = JSON.stringify(chars.slice(0, EXCERPT_CHARS).join(""))
    .replace(CONTROL_CHARS, unicodeEscape);
  return cut ? `${quoted.slice(0, -1)}…"` : quoted;
}

/**
 * A parser's message with every long token (an alias, a tag, a scalar the library quotes) cut to
 * {@linkcode EXCERPT_CHARS} characters and control characters escaped.
 */
function sanitizeMessage(message: string): string {
  return message
    .replace(/\S{41,}/g, (token) => `${[...token].slice(0, EXCERPT_CHARS).join("")}…`)
    .replace(CONTROL_CHARS, unicodeEscape);
}

// deno-lint-ignore no-control-regex -- escaping them is the point
const CONTROL_CHARS = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u2028\u2029]/g;

function unicodeEscape(c: string): string {
  return `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`;
}

function describeInput(input: unknown): string {
  if (input === null) return "an empty value";
  if (typeof input === "string") {
    const hint = input.trim() !== "" && !Number.isNaN(Number(input)) ? " (remove the quotes)" : "";
    return `the string ${excerpt(input)}${hint}`;
  }
  if (Array.isArray(input)) return "a list";
  if (typeof input === "object") return "a mapping";
  return String(input);
}

function suggest(key: string, allowed: readonly string[]): string {
  const close = allowed.find((a) => editDistance(key.toLowerCase(), a) <= 2);
  return close ? `; did you mean "${close}"?` : "";
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      current[j] = Math.min(
        previous[j] + 1,
        current[j - 1] + 1,
        previous[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1),
      );
    }
    previous = current;
  }
  return previous[b.length];
}

function issueProblems(issue: z.core.$ZodIssue): RawProblem[] {
  const path = issue.path.filter((s): s is PathSegment => typeof s !== "symbol");
  if (issue.code === "unrecognized_keys") {
    const allowed = ALLOWED_KEYS[placeOf(path)] ?? [];
    return issue.keys.map((key) => ({
      path: [...path, key],
      target: "key",
      reason: `unknown key ${excerpt(key)} (allowed here: ${allowed.join(", ")})${
        suggest(key, allowed)
      }`,
    }));
  }
  if (issue.code === "custom") return [{ path, target: "value", reason: issue.message }];
  const place = placeOf(path);
  const input = (issue as { input?: unknown }).input;
  if (input === undefined) {
    // Only `version` and `budget.watts` are required.
    return [{
      path,
      target: "value",
      reason: place === "version"
        ? `missing required key ${place}: add \`${place}: ${CAPS_FILE_VERSION}\``
        : `missing required key ${String(path.at(-1))}: ${EXPECTED[place] ?? issue.message}`,
    }];
  }
  const expected = EXPECTED[place] ?? issue.message;
  return [{ path, target: "value", reason: `${expected}, got ${describeInput(input)}` }];
}

function validate(parsed: Parsed, text: string, filePath: string): CapsSpec {
  const result = capsFileSchema.safeParse(parsed.data, { reportInput: true });
  const issues = result.success ? [] : withoutExplainedIssues(result.error.issues);
  const raw = [...parsed.problems, ...issues.flatMap(issueProblems)];
  if (raw.length > 0 || !result.success) {
    const located = raw.map((p, order) => {
      const offset = p.offset ?? locateNearest(parsed.locate, p.path, p.target);
      const problem = withPosition(
        { keyPath: formatKeyPath(p.path), reason: p.reason },
        text,
        offset,
      );
      return { order, offset, problem };
    });
    located.sort((a, b) => (a.offset ?? Infinity) - (b.offset ?? Infinity) || a.order - b.order);
    throw new CapsFileError(filePath, located.map((l) => l.problem));
  }
  return toSpec(result.data);
}

/**
 * Drop "expected exactly one of watts, percent ..., found none" where an unknown key next to it
 * is a misspelling of one of those keys (`wats`): `unknown key "wats"; did you mean "watts"?`
 * already says it all.
 */
function withoutExplainedIssues(issues: readonly z.core.$ZodIssue[]): z.core.$ZodIssue[] {
  const unknownByPath = new Map<string, string[]>();
  for (const issue of issues) {
    if (issue.code === "unrecognized_keys") {
      unknownByPath.set(JSON.stringify(issue.path), issue.keys);
    }
  }
  return issues.filter((issue) => {
    if (issue.code !== "custom") return true;
    const group = (issue.params as { missingOneOf?: readonly string[] } | undefined)?.missingOneOf;
    const unknown = unknownByPath.get(JSON.stringify(issue.path)) ?? [];
    return !group?.some((key) => unknown.some((u) => editDistance(u.toLowerCase(), key) <= 2));
  });
}

/** Offset of the path, or of its nearest ancestor present in the file (e.g. for a missing key). */
function locateNearest(
  locate: Locator,
  path: readonly PathSegment[],
  target: "key" | "value",
): number | undefined {
  for (let n = path.length; n >= 0; n--) {
    const offset = locate(path.slice(0, n), n === path.length ? target : "value");
    if (offset !== undefined) return offset;
  }
  return undefined;
}

function toValue(data: { watts?: number; percent?: number }): CapsValue {
  if (data.watts !== undefined) {
    return { kind: "watts", watts: data.watts, mw: Math.round(data.watts * 1000) };
  }
  return { kind: "percent", percent: data.percent as number };
}

function toSpec(data: CapsFileData): CapsSpec {
  const spec: CapsSpec = {
    version: 1,
    rules: (data.gpus ?? []).map((rule, position) => ({
      position,
      selector: rule.index !== undefined
        ? { kind: "index", index: rule.index }
        : rule.uuid !== undefined
        ? { kind: "uuid", uuid: rule.uuid }
        : { kind: "name", pattern: rule.name as string },
      value: toValue(rule),
    })),
  };
  if (data.default) spec.default = toValue(data.default);
  if (data.budget) {
    spec.budget = { watts: data.budget.watts, mw: Math.round(data.budget.watts * 1000) };
  }
  return spec;
}

/** `gpus[1].watts`; unusual keys quoted: `gpus[0]["my key"]`. */
export function formatKeyPath(path: readonly PathSegment[]): string {
  let out = "";
  for (const segment of path) {
    if (typeof segment === "number") out += `[${segment}]`;
    else if (segment.length <= EXCERPT_CHARS && /^[A-Za-z_][A-Za-z0-9_-]*$/.test(segment)) {
      out += out ? `.${segment}` : segment;
    } else {
      out += `[${excerpt(segment)}]`; // a long or unusual key: a quoted excerpt
    }
  }
  return out;
}

function withPosition(
  problem: CapsFileProblem,
  text: string,
  offset: number | undefined,
): CapsFileProblem {
  if (offset === undefined || offset < 0) return problem;
  const before = text.slice(0, Math.min(offset, text.length));
  const line = before.split("\n").length;
  const column = offset - (before.lastIndexOf("\n") + 1) + 1;
  return { ...problem, line, column };
}

// ---------------------------------------------------------------------------------------------
// JSON positions: a small JSON scanner (RFC 8259 grammar) that records where each key and value
// starts. JSON.parse stays the authority on values; this only adds positions and duplicate keys.

class JsonSyntaxError extends Error {
  constructor(readonly offset: number, readonly reason: string) {
    super(reason);
  }
}

interface JsonScan {
  /** Offsets of values by `JSON.stringify(path)`. */
  values: Map<string, number>;
  /** Offsets of object keys by `JSON.stringify(path)`. */
  keys: Map<string, number>;
  duplicates: { path: PathSegment[]; offset: number }[];
}

const JSON_NUMBER = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y;
// deno-lint-ignore no-control-regex -- JSON forbids raw control characters in strings
const JSON_STRING = /"(?:[^"\\\u0000-\u001f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"/y;

function scanJson(text: string): JsonScan {
  const scan: JsonScan = { values: new Map(), keys: new Map(), duplicates: [] };
  let i = 0;
  const ws = () => {
    while (i < text.length && " \t\n\r".includes(text[i])) i++;
  };
  const fail = (reason: string): never => {
    throw new JsonSyntaxError(i, reason);
  };
  const found = () => (i >= text.length ? "the end of the file" : JSON.stringify(text[i]));
  const string = (): string => {
    JSON_STRING.lastIndex = i;
    const match = JSON_STRING.exec(text);
    if (!match) {
      const end = text.indexOf('"', i + 1);
      fail(end < 0 ? "unterminated string" : "invalid character or escape in string");
    }
    i += match![0].length;
    return JSON.parse(match![0]);
  };
  const value = (path: PathSegment[]): void => {
    ws();
    scan.values.set(JSON.stringify(path), i);
    const c = text[i];
    if (c === "{") {
      i++;
      ws();
      const seen = new Set<string>();
      if (text[i] === "}") {
        i++;
        return;
      }
      for (;;) {
        ws();
        if (text[i] !== '"') {
          fail(
            text[i] === "}"
              ? 'trailing comma before "}" is not allowed'
              : `expected a double-quoted key, found ${found()}`,
          );
        }
        const keyOffset = i;
        const key = string();
        const keyPath = [...path, key];
        if (seen.has(key)) scan.duplicates.push({ path: keyPath, offset: keyOffset });
        seen.add(key);
        scan.keys.set(JSON.stringify(keyPath), keyOffset);
        ws();
        if (text[i] !== ":") fail(`expected ":" after key "${key}", found ${found()}`);
        i++;
        value(keyPath);
        ws();
        if (text[i] === ",") {
          i++;
          continue;
        }
        if (text[i] === "}") {
          i++;
          return;
        }
        fail(`expected "," or "}" after a value, found ${found()}`);
      }
    }
    if (c === "[") {
      i++;
      ws();
      if (text[i] === "]") {
        i++;
        return;
      }
      for (let n = 0;; n++) {
        ws();
        if (text[i] === "]") fail('trailing comma before "]" is not allowed');
        value([...path, n]);
        ws();
        if (text[i] === ",") {
          i++;
          continue;
        }
        if (text[i] === "]") {
          i++;
          return;
        }
        fail(`expected "," or "]" after a list item, found ${found()}`);
      }
    }
    if (c === '"') {
      string();
      return;
    }
    for (const literal of ["true", "false", "null"]) {
      if (text.startsWith(literal, i)) {
        i += literal.length;
        return;
      }
    }
    JSON_NUMBER.lastIndex = i;
    const number = JSON_NUMBER.exec(text);
    if (number) {
      i += number[0].length;
      return;
    }
    fail(`expected a value, found ${found()}`);
  };
  value([]);
  ws();
  if (i < text.length) fail(`unexpected ${found()} after the end of the JSON document`);
  return scan;
}
