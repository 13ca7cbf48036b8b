import * as z from "zod/mini";
const R = z.strictObject({ index: z.optional(z.int().check(z.nonnegative())), watts: z.optional(z.number().check(z.positive())), percent: z.optional(z.number()) }).check(
  z.superRefine((v, ctx) => { if ((v.watts === undefined) === (v.percent === undefined)) ctx.issues.push({code: "custom", message: "exactly one", input: v}); }, { when: () => true } as any),
);
const S = z.strictObject({ version: z.literal(1), gpus: z.optional(z.array(R)) });
for (const d of [{ version: 2, foo: 1, gpus: [{ index: -1, wats: 3 }, {index: 1.5, watts: NaN}, {index: 0, watts: "5"}] }]) {
  const r = S.safeParse(d);
  console.log(JSON.stringify(r.success ? r.data : r.error.issues, null, 1));
}
