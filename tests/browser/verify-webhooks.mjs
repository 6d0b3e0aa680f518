// An independent check of callstream's webhook signatures: the Standard Webhooks reference
// library (npm `standardwebhooks`), not the project's own code. Reads one JSON object per line
// on stdin, `{"secret": "whsec_…", "headers": {"webhook-id": …}, "body_base64": "…"}`, and
// prints one line per object: `ok`, or `refused: <the library's reason>`.
import { createInterface } from "node:readline";
import { Webhook } from "standardwebhooks";

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  const { secret, headers, body_base64 } = JSON.parse(line);
  try {
    // The library takes the secret without its `whsec_` prefix, as base64.
    new Webhook(secret.replace(/^whsec_/, "")).verify(Buffer.from(body_base64, "base64"), headers);
    console.log("ok");
  } catch (e) {
    console.log(`refused: ${e.message}`);
  }
}
