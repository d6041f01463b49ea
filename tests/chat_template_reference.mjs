// Renders chat templates with @huggingface/jinja, the reference that
// tests/chat_template_reference_test.cc compares tandem's renderer against.
//
//   node tests/chat_template_reference.mjs NPM_REFS_DIR IN.json OUT.json
//
// IN.json:  {"templates": {NAME: SOURCE, ...},
//            "cases": [{"template": NAME, "messages": [{"role", "content"}...],
//                       "add_generation_prompt": bool, "bos_token": str, "eos_token": str}, ...]}
// OUT.json: [{"ok": true, "text": STR} | {"ok": false, "error": STR}, ...], one per case.
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [refsDir, inPath, outPath] = process.argv.slice(2);
const { Template } = await import(
  pathToFileURL(join(refsDir, "node_modules/@huggingface/jinja/dist/index.js")).href
);
const input = JSON.parse(readFileSync(inPath, "utf8"));
const templates = {};
for (const [name, source] of Object.entries(input.templates)) templates[name] = new Template(source);
const out = input.cases.map((c) => {
  try {
    const text = templates[c.template].render({
      messages: c.messages,
      add_generation_prompt: c.add_generation_prompt,
      bos_token: c.bos_token,
      eos_token: c.eos_token,
    });
    return { ok: true, text };
  } catch (e) {
    return { ok: false, error: String(e && e.message ? e.message : e) };
  }
});
writeFileSync(outPath, JSON.stringify(out));
