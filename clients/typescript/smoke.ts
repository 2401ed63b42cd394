/**
 * Calls every route of a running local stack (`keyflash dev`) through the typed client and
 * checks each answer's status and shape: every body against the schema openapi.json documents for
 * that status (with Ajv), success bodies also by a few keys' kinds,
 * every error body against the ErrorEnvelope, and every status seen against the statuses
 * openapi.json declares for that operation. Fails when openapi.json has an operation this script does not call.
 *
 *   clients/typescript/ci.sh smoke http://127.0.0.1:3000
 *
 * ci.sh sets what it reads: KEYFLASH_URL, KEYFLASH_TOKEN (an admin's), KEYFLASH_ORG_TOKEN and
 * KEYFLASH_ORG_ID (the same user as an admin of that team), docs/typescript.md. Stripe is not configured on a local stack: its routes are checked
 * for the refusal the local stack documents (503). The Clerk webhook has the stack's own secret:
 * an unsigned delivery is refused (400). Exports go to the local stack's S3 (moto).
 * Providers are the mock provider, so keyword routes answer 200 with its data.
 */
import { readFileSync } from "node:fs";
import { Ajv2020 } from "ajv/dist/2020.js";
import { createClient, type Result } from "./client.js";

interface Document {
  paths: Record<string, Record<string, { responses: Record<string, unknown> }>>;
  components: { schemas: Record<string, object> };
}

const baseUrl = required("KEYFLASH_URL");
const token = required("KEYFLASH_TOKEN");
// The same caller with an active organization it administers (`keyflash token --org`).
const orgToken = required("KEYFLASH_ORG_TOKEN");
const orgId = required("KEYFLASH_ORG_ID");
const document = JSON.parse(
  readFileSync(new URL("../openapi.json", import.meta.url), "utf8"), // run from .build/
) as Document;
const ajv = new Ajv2020({ strict: false, validateFormats: false });
ajv.addSchema(document, "openapi.json");
const envelope = ajv.compile(document.components.schemas.ErrorEnvelope ?? {});

/** The body schema openapi.json documents for one response (`{}` where it documents none). */
function documented(path: string, method: string, status: number) {
  const pointer = ["paths", path, method, "responses", String(status), "content", "application/json"]
    .map((part) => encodeURIComponent(part.replaceAll("~", "~0").replaceAll("/", "~1")))
    .join("/");
  return ajv.compile({ $ref: `openapi.json#/${pointer}/schema` });
}
const api = createClient({ baseUrl, token });
const anonymous = createClient({ baseUrl });
const team = createClient({ baseUrl, token: orgToken });
const called = new Set<string>();
const failures: string[] = [];

function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`smoke: set ${name}`);
  return value;
}

type Shape = Record<string, "string" | "number" | "boolean" | "object" | "array">;

/** Record one call: the status must be `expected` and declared, the body of the given shape. */
function check(
  method: string,
  path: string,
  result: { ok: boolean; status: number; data?: unknown; error?: unknown },
  expected: number,
  shape: Shape = {},
): void {
  const where = `${method.toUpperCase()} ${path}`;
  called.add(where);
  const declared = document.paths[path]?.[method]?.responses ?? {};
  if (!(String(result.status) in declared)) {
    failures.push(`${where}: ${result.status} is not a status openapi.json declares`);
  }
  if (result.status !== expected) {
    const body = JSON.stringify(result.ok ? result.data : result.error);
    failures.push(`${where}: expected ${expected}, got ${result.status} ${body}`);
    return;
  }
  if (!result.ok && !envelope(result.error)) {
    failures.push(`${where}: error body is not the envelope: ${ajv.errorsText(envelope.errors)}`);
  }
  const schema = documented(path, method, result.status);
  if (!schema(result.ok ? result.data : result.error)) {
    failures.push(`${where}: body is not the documented schema: ${ajv.errorsText(schema.errors)}`);
  }
  const body = (result.ok ? result.data : result.error) as Record<string, unknown> | undefined;
  for (const [key, kind] of Object.entries(shape)) {
    const value = body?.[key];
    const actual = Array.isArray(value) ? "array" : value === null ? "null" : typeof value;
    if (actual !== kind) failures.push(`${where}: ${key} should be ${kind}, is ${actual}`);
  }
  console.log(`smoke: ${where} -> ${result.status}`);
}

/** The envelope's statusCode narrows the union: a frontend switches on it like this. */
function explain(result: Result<import("./client.js").Operation<"/api/me", "get">>): string {
  if (result.ok) return `hello ${result.data === undefined ? "?" : "user"}`;
  switch (result.error.statusCode) {
    case 401:
      return "sign in";
    case 409:
      return "email in use";
    case 400:
    case 500:
    case 503:
      return result.error.message;
  }
}

const unauthenticated = await anonymous.GET("/api/me");
check("get", "/api/me", unauthenticated, 401, { error: "string", message: "string" });
if (explain(unauthenticated) !== "sign in") failures.push("GET /api/me: 401 did not narrow");

check("get", "/api/health", await api.GET("/api/health"), 200, {
  status: "string",
  checks: "object",
});
check("get", "/api/me", await api.GET("/api/me"), 200, { id: "string", tier: "string" });
check("get", "/api/flags", await api.GET("/api/flags"), 200, { flags: "object" });

const created = await api.POST("/api/searches", {
  body: {
    name: "smoke",
    searchParams: { keywords: ["seo tools"], matchType: "exact", location: "US" },
  },
});
check("post", "/api/searches", created, 201, { search: "object" });
const searchId = String(
  ((created.ok ? created.data : {}) as { search?: { id?: string } }).search?.id ?? "missing",
);
const item = { params: { path: { search_id: searchId } } };
check("get", "/api/searches", await api.GET("/api/searches"), 200, { searches: "array" });
check("get", "/api/searches/{search_id}", await api.GET("/api/searches/{search_id}", item), 200, {
  search: "object",
});
check(
  "put",
  "/api/searches/{search_id}",
  await api.PUT("/api/searches/{search_id}", { ...item, body: { name: "smoke, renamed" } }),
  200,
  { search: "object" },
);
check(
  "delete",
  "/api/searches/{search_id}",
  await api.DELETE("/api/searches/{search_id}", item),
  200,
  { success: "boolean" },
);

check(
  "post",
  "/api/keywords",
  await api.POST("/api/keywords", { body: { keywords: ["seo tools"], matchType: "exact" } }),
  200,
  { data: "array" },
);
check(
  "post",
  "/api/keywords/related",
  await api.POST("/api/keywords/related", { body: { keyword: "seo" } }),
  200,
  { seedKeyword: "string", relatedKeywords: "array" },
);
check(
  "post",
  "/api/content-brief",
  await api.POST("/api/content-brief", { body: { keyword: "seo" } }),
  200,
  { brief: "object" },
);
check(
  "get",
  "/api/history",
  await api.GET("/api/history", { params: { query: { limit: 20 } } }),
  200,
  { history: "array" },
);
check(
  "get",
  "/api/history/stats",
  await api.GET("/api/history/stats", { params: { query: { days: 7 } } }),
  200,
  { searches: "number", providers: "object" },
);

check("get", "/api/me/export", await api.GET("/api/me/export"), 200, {
  user: "object",
  savedSearches: "array",
});
const requested = await api.POST("/api/me/export");
check("post", "/api/me/export", requested, 202, { export: "object" });
const exportId = requested.ok ? (requested.data as { export?: { id?: string } }).export?.id : undefined;
check(
  "get",
  "/api/me/export/{export_id}",
  await api.GET("/api/me/export/{export_id}", {
    params: { path: { export_id: exportId ?? "c000000000000000000000000" } },
  }),
  200,
  { export: "object" },
);

const flag = { params: { path: { key: "smoke-flag" } } };
check(
  "post",
  "/api/admin/flags",
  await api.POST("/api/admin/flags", { body: { key: "smoke-flag", enabled: true } }),
  201,
  { flag: "object" },
);
check("get", "/api/admin/flags", await api.GET("/api/admin/flags"), 200, { flags: "array" });
check("get", "/api/admin/flags/{key}", await api.GET("/api/admin/flags/{key}", flag), 200, {
  flag: "object",
});
check(
  "put",
  "/api/admin/flags/{key}",
  await api.PUT("/api/admin/flags/{key}", { ...flag, body: { enabled: false } }),
  200,
  { flag: "object" },
);
check("delete", "/api/admin/flags/{key}", await api.DELETE("/api/admin/flags/{key}", flag), 200, {
  success: "boolean",
});
check(
  "get",
  "/api/admin/metrics",
  await api.GET("/api/admin/metrics", { params: { query: { metric: "smoke.metric" } } }),
  200,
  { metric: "string", bucket: "string" },
);
check("get", "/api/admin/analytics", await api.GET("/api/admin/analytics"), 200, {
  days: "number",
});
check(
  "get",
  "/api/admin/analytics/trends",
  await api.GET("/api/admin/analytics/trends", { params: { query: { metric: "keyword-trends" } } }),
  200,
  { metric: "string", points: "array" },
);

const org = { params: { path: { org_id: orgId } } };
check("get", "/api/orgs/{org_id}/usage", await team.GET("/api/orgs/{org_id}/usage", org), 200, {
  tier: "string",
});
check(
  "get",
  "/api/orgs/{org_id}/members",
  await team.GET("/api/orgs/{org_id}/members", org),
  200,
  { members: "array" },
);
const teamCreated = await team.POST("/api/orgs/{org_id}/searches", {
  ...org,
  body: {
    name: "team smoke",
    searchParams: { keywords: ["seo tools"], matchType: "exact", location: "US" },
  },
});
check("post", "/api/orgs/{org_id}/searches", teamCreated, 201, { search: "object" });
const teamSearchId = String(
  ((teamCreated.ok ? teamCreated.data : {}) as { search?: { id?: string } }).search?.id ??
    "missing",
);
const teamItem = { params: { path: { org_id: orgId, search_id: teamSearchId } } };
check("get", "/api/orgs/{org_id}/searches", await team.GET("/api/orgs/{org_id}/searches", org), 200, {
  searches: "array",
});
check(
  "get",
  "/api/orgs/{org_id}/searches/{search_id}",
  await team.GET("/api/orgs/{org_id}/searches/{search_id}", teamItem),
  200,
  { search: "object" },
);
check(
  "put",
  "/api/orgs/{org_id}/searches/{search_id}",
  await team.PUT("/api/orgs/{org_id}/searches/{search_id}", {
    ...teamItem,
    body: { name: "team smoke, renamed" },
  }),
  200,
  { search: "object" },
);
check(
  "delete",
  "/api/orgs/{org_id}/searches/{search_id}",
  await team.DELETE("/api/orgs/{org_id}/searches/{search_id}", teamItem),
  200,
  { success: "boolean" },
);
check("post", "/api/orgs/{org_id}/checkout", await team.POST("/api/orgs/{org_id}/checkout", org), 503);
check(
  "post",
  "/api/orgs/{org_id}/billing-portal",
  await team.POST("/api/orgs/{org_id}/billing-portal", org),
  503,
);

check("post", "/api/checkout", await api.POST("/api/checkout"), 503);
check("post", "/api/billing/portal", await api.POST("/api/billing/portal"), 503);
check(
  "post",
  "/api/webhooks/stripe",
  await api.POST("/api/webhooks/stripe", {
    params: { header: { "stripe-signature": "t=0,v1=00" } },
    body: {},
  }),
  503,
);
check(
  "post",
  "/api/webhooks/clerk",
  await api.POST("/api/webhooks/clerk", {
    params: { header: { "svix-id": "msg_smoke", "svix-timestamp": "0", "svix-signature": "v1,x" } },
    body: { type: "user.updated", data: {} },
  }),
  400,
);

// Last: erasure deletes the caller (a later run provisions it again).
check("delete", "/api/me", await api.DELETE("/api/me"), 200);

for (const [path, operations] of Object.entries(document.paths)) {
  for (const method of Object.keys(operations)) {
    if (!called.has(`${method.toUpperCase()} ${path}`)) {
      failures.push(`${method.toUpperCase()} ${path}: in openapi.json but not called`);
    }
  }
}
if (failures.length > 0) {
  for (const failure of failures) console.error(`smoke: FAIL ${failure}`);
  process.exit(1);
}
console.log(`smoke: ${called.size} operations answered as documented`);
