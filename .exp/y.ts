import { LineCounter, parseDocument, isMap, isSeq, isScalar, isPair } from "yaml";
for (const t of ["version: 1\ngpus:\n  - index: 0\n    watts: 5\n  - name: x\n    watts: -1\n", "a: [1\nb: 2\n", "a: 1\na: 2\n", "a: 1\n---\nb: 2\n", "# c\n", "a:\n  b: : c\n", "watts: .nan\nx:\n", "\tversion: 1\n"]) {
  const lc = new LineCounter();
  const doc = parseDocument(t, { lineCounter: lc, prettyErrors: false });
  console.log(JSON.stringify(t), doc.errors.map((e) => [e.code, e.message, e.linePos, e.pos]), JSON.stringify(doc.toJS()), doc.contents?.range);
  if (isMap(doc.contents)) for (const p of doc.contents.items) console.log(" pair", (p.key as any)?.range, (p.value as any)?.range, p.value === null);
}
