// What a user's script does with OpenAI's Node SDK against the gateway (the README's Node
// example): start a background response as a stream, read up to sequence number K, drop the
// connection by leaving the loop, then resume with `starting_after: K` and read to the end.
// Prints one JSON object on stdout for tests/openai_api/test_node_sdk.py to check.
//
//   node resume.mjs BASE_URL [MODEL] [K]
//
// BASE_URL is the SDK's baseURL (the gateway's URL ending in /v1; default $OPENAI_BASE_URL);
// without MODEL the first served model is used; K defaults to 8.
import OpenAI from "openai";

const [baseURL = process.env.OPENAI_BASE_URL, modelArg, kArg = "8"] = process.argv.slice(2);
const k = Number.parseInt(kArg, 10);
const client = new OpenAI({
  baseURL,
  apiKey: process.env.OPENAI_API_KEY ?? "unused",
  maxRetries: 0, // a retry would hide the very failure the test looks for
  timeout: 10_000,
});
const model = modelArg ?? (await client.models.list()).data[0].id;

function summary(events) {
  return {
    numbers: events.map((event) => event.sequence_number),
    types: events.map((event) => event.type),
    text: events
      .filter((event) => event.type === "response.output_text.delta")
      .map((event) => event.delta)
      .join(""),
  };
}

// The SDK fills `output_text` in only on a retrieved response object, not inside events.
function outputText(response) {
  return response.output
    .filter((item) => item.type === "message")
    .flatMap((item) => item.content)
    .filter((part) => part.type === "output_text")
    .map((part) => part.text)
    .join("");
}

const before = [];
let id;
const stream = await client.responses.create({ model, input: "Tell me a story", background: true, stream: true });
for await (const event of stream) {
  before.push(event);
  if (event.type === "response.created") id = event.response.id;
  if (event.sequence_number === k) break; // the SDK aborts the request; the run goes on
}

const after = [];
const rest = await client.responses.retrieve(id, { stream: true, starting_after: k });
for await (const event of rest) after.push(event);

const last = after.at(-1);
console.log(
  JSON.stringify({
    id,
    before: summary(before),
    after: summary(after),
    terminal: {
      type: last?.type,
      id: last?.response?.id,
      status: last?.response?.status,
      output_text: last?.response ? outputText(last.response) : null,
    },
  }),
);
