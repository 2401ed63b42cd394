/**
 * The client against answers a platform makes instead of the API (a fake `fetch`, no stack):
 * API Gateway's own JSON (`{"message": …}`), an envelope on a status the operation does not
 * document, text with a request id and Retry-After; and the URL it builds in a browser without
 * `URLSearchParams.size`. tests/devkit/test_typescript_client.py
 * compiles it with the client and runs it under Node; it exits 1 listing what failed.
 */
import { createClient, UnexpectedResponse } from "./client.js";

const failures: string[] = [];

function answering(status: number, body: string, headers: Record<string, string> = {}) {
  const fetch = (async () =>
    new Response(body, { status, headers: { "Content-Type": "application/json", ...headers } })) as typeof globalThis.fetch;
  return createClient({ baseUrl: "http://api.invalid", token: "t", fetch });
}

function envelope(statusCode: number): string {
  const timestamp = "2026-01-01T00:00:00.000Z";
  return JSON.stringify({ error: "Service Unavailable", message: "unavailable", statusCode, timestamp });
}

/** The call must throw `UnexpectedResponse` with `status`; `check` inspects it further. */
async function unexpected(
  name: string,
  call: Promise<unknown>,
  status: number,
  check: (error: UnexpectedResponse) => string | undefined = () => undefined,
): Promise<void> {
  try {
    const result = await call;
    failures.push(`${name}: resolved ${JSON.stringify(result, (key, value) => (key === "response" ? undefined : value))}`);
  } catch (error) {
    if (!(error instanceof UnexpectedResponse)) {
      failures.push(`${name}: threw ${String(error)}, not UnexpectedResponse`);
    } else if (error.status !== status) {
      failures.push(`${name}: status ${error.status}, not ${status}`);
    } else {
      const wrong = check(error);
      if (wrong) failures.push(`${name}: ${wrong}`);
    }
  }
}

// API Gateway's own answers: JSON, but not the envelope (the local stack answers the 500 too).
const gateway: Array<[number, string]> = [
  [500, '{"message":"Internal Server Error"}'],
  [503, '{"message":"Service Unavailable"}'],
  [504, '{"message": "Endpoint request timed out"}'],
  [429, '{"message":"Too Many Requests"}'],
];
for (const [status, body] of gateway) {
  await unexpected(`API Gateway ${status}`, answering(status, body).GET("/api/me"), status, (error) =>
    error.body === body ? undefined : `body ${error.body}`,
  );
}

// An envelope whose statusCode is not the answer's status is not ours either.
await unexpected("envelope of another status", answering(503, envelope(500)).GET("/api/me"), 503);
// An envelope on a status GET /api/me does not document (504): the types have no member for it.
await unexpected("undocumented status", answering(504, envelope(504)).GET("/api/me"), 504);
// Not JSON at all, on a success status.
await unexpected("HTML 200", answering(200, "<html>hi</html>").GET("/api/me"), 200);

// The headers of an unexpected answer stay readable: Retry-After and the request id.
const platform = {
  "Content-Type": "text/plain",
  "Retry-After": "5",
  "x-vercel-id": "cdg1::abc",
  "X-Request-ID": "req_0123",
};
await unexpected(
  "platform 503 headers",
  answering(503, "FUNCTION_INVOCATION_TIMEOUT\n", platform).GET("/api/me"),
  503,
  (error) =>
    error.headers.get("retry-after") !== "5"
      ? `Retry-After ${error.headers.get("retry-after")}`
      : error.requestId !== "req_0123"
        ? `requestId ${error.requestId}`
        : error.response.status !== 503
          ? "no response"
          : undefined,
);
const ids: Array<[Record<string, string>, string]> = [
  [{ "x-vercel-id": "cdg1::abc" }, "cdg1::abc"],
  [{ "apigw-requestid": "Abc=" }, "Abc="],
  [{ "x-amzn-requestid": "0f-1" }, "0f-1"],
];
for (const [headers, id] of ids) {
  await unexpected(`request id ${id}`, answering(502, "", headers).GET("/api/me"), 502, (error) =>
    error.requestId === id ? undefined : `requestId ${error.requestId}`,
  );
}

// What the API documents still resolves, typed.
const refused = await answering(503, envelope(503)).GET("/api/me");
if (refused.ok || refused.error.statusCode !== 503 || refused.response.status !== 503) {
  failures.push(`documented 503 envelope: ${JSON.stringify(refused.ok ? refused.data : refused.error)}`);
}
const report = JSON.stringify({ status: "unhealthy", timestamp: "2026-01-01T00:00:00.000Z" });
const unhealthy = await answering(503, report).GET("/api/health");
if (unhealthy.ok || unhealthy.status !== 503) failures.push("health's own 503 body did not resolve");
const me = await answering(200, '{"user":{}}').GET("/api/me");
if (!me.ok) failures.push("a documented 200 did not resolve");

// Query parameters reach the URL in browsers without `URLSearchParams.size` (Safari 16, Chrome
// 112, Firefox 111: Next.js's default targets), not only where it exists; none, no `?`.
const urls: string[] = [];
const recording = createClient({
  baseUrl: "http://api.invalid",
  fetch: (async (url: string) => {
    urls.push(url);
    return new Response(envelope(503), { status: 503, headers: { "Content-Type": "application/json" } });
  }) as typeof globalThis.fetch,
});
const size = Object.getOwnPropertyDescriptor(URLSearchParams.prototype, "size");
delete (URLSearchParams.prototype as { size?: number }).size;
try {
  await recording.GET("/api/history", { params: { query: { limit: 1, cursor: "c 1" } } });
  await recording.GET("/api/history");
} finally {
  if (size) Object.defineProperty(URLSearchParams.prototype, "size", size);
}
const wanted = ["http://api.invalid/api/history?limit=1&cursor=c+1", "http://api.invalid/api/history"];
if (JSON.stringify(urls) !== JSON.stringify(wanted)) failures.push(`without URLSearchParams.size: ${urls.join(", ")}`);

if (failures.length > 0) {
  console.error(failures.map((failure) => `client.test: ${failure}`).join("\n"));
  process.exit(1);
}
console.log("client.test: every unexpected answer threw UnexpectedResponse, with its headers");
