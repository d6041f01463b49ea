// Drives a running Tandem router's OpenAI-compatible HTTP API with the
// official OpenAI Node SDK, unmodified (the `openai` package of
// tests/npm/package.json), and prints what it saw as one JSON object on
// stdout. It asserts nothing itself: tests/openai_sdk_test.cc does, on this
// output.
//
//   node tests/openai_sdk_check.mjs NPM_REFS_DIR BASE_URL
//     NPM_REFS_DIR  the folder scripts/npm_refs.sh installed into (holds node_modules/openai)
//     BASE_URL      http://HOST:PORT/v1
//
// The package is resolved from NPM_REFS_DIR with createRequire (ESM has no
// NODE_PATH), then imported as a module.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

const [refs, baseURL] = process.argv.slice(2);
if (!refs || !baseURL) {
  console.error('usage: node openai_sdk_check.mjs NPM_REFS_DIR BASE_URL');
  process.exit(2);
}
const require = createRequire(join(resolve(refs), 'package.json'));
const entry = require.resolve('openai');
const { default: OpenAI } = await import(pathToFileURL(entry).href);

const client = new OpenAI({ baseURL, apiKey: 'sk-tandem-test', maxRetries: 0, timeout: 120_000 });
const out = { sdk_version: JSON.parse(readFileSync(join(dirname(entry), 'package.json'), 'utf8')).version };

// The SDK's view of a failed call: its error class and fields.
async function apiError(call) {
  try {
    await call();
    return { thrown: false };
  } catch (e) {
    return {
      thrown: true,
      is_api_error: e instanceof OpenAI.APIError,
      class: e.constructor.name,
      status: e.status ?? null,
      type: e.type ?? null,
      code: e.code ?? null,
      param: e.param ?? null,
      message: e.message,
    };
  }
}

// Reads a completions or chat stream: the concatenated text, the finish
// reason, the usage chunk and the chunk shapes.
async function drain(stream, chat) {
  const r = { text: '', finish_reason: null, usage: null, chunks: 0, text_chunks: 0, objects: [], ids: [] };
  for await (const chunk of stream) {
    r.chunks += 1;
    if (!r.objects.includes(chunk.object)) r.objects.push(chunk.object);
    if (!r.ids.includes(chunk.id)) r.ids.push(chunk.id);
    if (chunk.usage) r.usage = chunk.usage;
    for (const choice of chunk.choices) {
      const piece = chat ? (choice.delta?.content ?? '') : (choice.text ?? '');
      if (piece.length > 0) r.text_chunks += 1;
      r.text += piece;
      if (choice.finish_reason) r.finish_reason = choice.finish_reason;
    }
  }
  return r;
}

const models = [];
for await (const m of client.models.list()) models.push({ id: m.id, object: m.object, owned_by: m.owned_by });
out.models = models;
const model = models.length > 0 ? models[0].id : 'unknown';

const prompt = 'Once upon a time';
const maxTokens = 12;
{
  const c = await client.completions.create({ model, prompt, max_tokens: maxTokens, temperature: 0 });
  out.completion = {
    object: c.object,
    model: c.model,
    choices: c.choices.length,
    text: c.choices[0].text,
    finish_reason: c.choices[0].finish_reason,
    usage: c.usage,
  };
}
{
  const stream = await client.completions.create({
    model, prompt, max_tokens: maxTokens, temperature: 0, stream: true,
    stream_options: { include_usage: true },
  });
  out.completion_stream = await drain(stream, false);
}
{
  // No max_tokens: OpenAI's completions default (16) applies.
  const c = await client.completions.create({ model, prompt, temperature: 0 });
  out.completion_default = { text: c.choices[0].text, finish_reason: c.choices[0].finish_reason, usage: c.usage };
}

const messages = [
  { role: 'system', content: 'You tell short stories.' },
  { role: 'user', content: 'Tell me about a cat.' },
];
{
  const c = await client.chat.completions.create({ model, messages, max_tokens: maxTokens, temperature: 0 });
  out.chat = {
    object: c.object,
    model: c.model,
    choices: c.choices.length,
    role: c.choices[0].message.role,
    text: c.choices[0].message.content,
    finish_reason: c.choices[0].finish_reason,
    usage: c.usage,
  };
}
{
  const stream = await client.chat.completions.create({
    model, messages, max_completion_tokens: maxTokens, temperature: 0, stream: true,
    stream_options: { include_usage: true },
  });
  out.chat_stream = await drain(stream, true);
}

out.error_unknown_model = await apiError(() =>
  client.completions.create({ model: 'no-such-model', prompt, max_tokens: 1 }));
out.error_n2 = await apiError(() =>
  client.chat.completions.create({ model, messages, max_tokens: 1, n: 2 }));
out.error_stream_unknown_model = await apiError(async () => {
  const s = await client.chat.completions.create({ model: 'no-such-model', messages, stream: true });
  for await (const _ of s) { /* drain */ }
});

console.log(JSON.stringify(out));
