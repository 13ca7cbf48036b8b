/**
 * Turn a validated caps file into desired caps for the GPUs present.
 */
import { getLogger } from "@logtape/logtape";
import type { CapsRule, CapsSelector, CapsSpec, CapsValue } from "../sources/caps_file.ts";
import type { DesiredCaps, GpuView } from "../sources/cap_source.ts";

/**
 * Desired caps for `gpus`: per GPU the last matching rule wins, else `default`, else the GPU is
 * absent from the map (unmanaged). Percent values are `Math.round(defaultMw * percent / 100)`.
 * Rules that match no GPU are fine (logged at debug level).
 */
export function resolveFileCaps(spec: CapsSpec, gpus: readonly GpuView[]): DesiredCaps {
  const log = getLogger(["gpu-power-agent", "file"]);
  const matchers = spec.rules.map((rule) => ({ rule, matches: compileSelector(rule.selector) }));
  const used = new Set<CapsRule>();
  const desired: DesiredCaps = new Map();
  for (const gpu of gpus) {
    let chosen: CapsRule | undefined;
    for (const { rule, matches } of matchers) {
      if (matches(gpu)) {
        chosen = rule;
        used.add(rule);
      }
    }
    const value = chosen?.value ?? spec.default;
    if (value === undefined) continue;
    desired.set(gpu.uuid, {
      mw: capsValueToMw(value, gpu.defaultMw),
      reason: chosen ? `caps file rule ${describeCapsRule(chosen)}` : "caps file default",
      kind: "file",
    });
  }
  for (const { rule } of matchers) {
    if (!used.has(rule)) {
      log.debug("Caps file rule {rule} matches no GPU on this host", {
        rule: describeCapsRule(rule),
      });
    }
  }
  return desired;
}

/** Milliwatts a value asks for on a GPU whose default limit is `defaultMw`. */
export function capsValueToMw(value: CapsValue, defaultMw: number): number {
  return value.kind === "watts" ? value.mw : Math.round(defaultMw * value.percent / 100);
}

/** `gpus[2] (name "NVIDIA H100*")`, `gpus[0] (index 0)`, `gpus[1] (uuid "GPU-…")`. */
export function describeCapsRule(rule: CapsRule): string {
  const s = rule.selector;
  const selector = s.kind === "index"
    ? `index ${s.index}`
    : s.kind === "uuid"
    ? `uuid ${JSON.stringify(s.uuid)}`
    : `name ${JSON.stringify(s.pattern)}`;
  return `gpus[${rule.position}] (${selector})`;
}

/** `250 W` or `80% of default`. */
export function describeCapsValue(value: CapsValue): string {
  return value.kind === "watts" ? `${value.watts} W` : `${value.percent}% of default`;
}

/**
 * Anchored regular expression for a GPU name glob: `*` any run of characters, `?` one, every
 * other character literal; case-sensitive.
 */
export function globToRegExp(pattern: string): RegExp {
  let source = "";
  for (const char of pattern) {
    if (char === "*") source += "[^]*";
    else if (char === "?") source += "[^]";
    else source += char.replace(/[\\^$.|+()[\]{}*?/]/g, "\\$&");
  }
  return new RegExp(`^${source}$`, "u");
}

function compileSelector(selector: CapsSelector): (gpu: GpuView) => boolean {
  switch (selector.kind) {
    case "index":
      return (gpu) => gpu.index === selector.index;
    case "uuid":
      return (gpu) => gpu.uuid === selector.uuid;
    case "name": {
      const re = globToRegExp(selector.pattern);
      return (gpu) => re.test(gpu.name);
    }
  }
}
