import assert from "node:assert/strict";

const ROOT = new URL("../../", import.meta.url);

Deno.test("LICENSE is the Apache-2.0 text with the project's copyright", async () => {
  const text = await Deno.readTextFile(new URL("LICENSE", ROOT));
  assert.match(text, /^\s*Apache License\s+Version 2\.0, January 2004/);
  assert.match(text, /TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION/);
  assert.match(text, /END OF TERMS AND CONDITIONS/);
  assert.match(text, /Copyright \d{4} The gpu-power-agent authors/);
});

Deno.test("the container image carries the LICENSE", async () => {
  const dockerfile = await Deno.readTextFile(new URL("deploy/Dockerfile", ROOT));
  const copies = dockerfile.split("\n")
    .map((line) => /^COPY\s+(?:--\S+\s+)*(\S+)\s+(\S+)\s*$/.exec(line.trim()))
    .filter((m): m is RegExpExecArray => m !== null);
  const license = copies.find(([, source]) => source === "LICENSE");
  assert.ok(license, "a COPY LICENSE instruction");
  assert.match(license[2], /^\/usr\/share\/licenses\/gpu-power-agent\/LICENSE$/);
  assert.match(dockerfile, /org\.opencontainers\.image\.licenses="Apache-2\.0"/);
  // The build context must not leave it out.
  const ignore = await Deno.readTextFile(new URL(".dockerignore", ROOT)).catch(() => "");
  assert.ok(!ignore.split("\n").some((l) => l.trim() === "LICENSE" || l.trim() === "*"), ignore);
});
