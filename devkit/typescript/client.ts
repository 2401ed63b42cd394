/**
 * The typed client for KeyFlash's HTTP API: a thin wrapper over `fetch`, typed by `schema.d.ts`
 * (openapi-typescript's output for `openapi.json`). Written by `keyflash openapi --typescript`
 * from devkit/typescript/client.ts, with each operation's documented statuses (`DOCUMENTED`)
 * filled in from openapi.json; do not edit the copy in clients/typescript/.
 *
 * Every call resolves to a union discriminated by `ok`, then by `status`: the documented success
 * bodies, or the documented error bodies, the error envelope typed per status, so
 * `switch (result.error.statusCode)` narrows too. Anything else throws `UnexpectedResponse`,
 * which keeps the response and its headers: a body that is not JSON (a proxy's HTML 502), a
 * status the operation does not document, or an error body that is not the envelope (API
 * Gateway's own `{"message": …}` on a 429, 500, 503 or 504). So the types hold at run time.
 */
import type { components, paths } from "./schema.js";

export type ErrorEnvelope = components["schemas"]["ErrorEnvelope"];
export type Method = "get" | "put" | "post" | "delete";

/** The paths that have an operation for `M`, e.g. `PathsWith<"post">`. */
export type PathsWith<M extends Method> = {
  [P in keyof paths]-?: [NonNullable<paths[P][M]>] extends [never] ? never : P;
}[keyof paths];
export type Operation<P extends keyof paths, M extends Method> = NonNullable<paths[P][M]>;

type Responses<O> = O extends { responses: infer R } ? R : never;
type Json<R> = R extends { content: { "application/json": infer B } } ? B : undefined;
type ErrorCode<K> = K extends number ? (`${K}` extends `4${string}` | `5${string}` ? K : never) : never;
type SuccessCode<K> = K extends number ? (`${K}` extends `2${string}` ? K : never) : never;

/**
 * The body of one documented error status. The envelope gets `statusCode` as that status,
 * literally; a route that documents a body of its own for an error status (health's 503 is its
 * report) gets that body.
 */
type ErrorBody<B, K> = B extends ErrorEnvelope ? Omit<B, "statusCode"> & { statusCode: K } : B;
export type ApiError<O> = {
  [K in ErrorCode<keyof Responses<O>>]: ErrorBody<Json<Responses<O>[K]>, K>;
}[ErrorCode<keyof Responses<O>>];

export type Result<O> =
  | {
      [K in SuccessCode<keyof Responses<O>>]: {
        ok: true;
        status: K;
        data: Json<Responses<O>[K]>;
        response: Response;
      };
    }[SuccessCode<keyof Responses<O>>]
  | {
      [K in ErrorCode<keyof Responses<O>>]: {
        ok: false;
        status: K;
        error: ErrorBody<Json<Responses<O>[K]>, K>;
        response: Response;
      };
    }[ErrorCode<keyof Responses<O>>];

type Parameters_<O> = O extends { parameters: infer P } ? P : never;
type Body<O> = O extends { requestBody: { content: { "application/json": infer B } } }
  ? { body: B }
  : O extends { requestBody?: { content: { "application/json": infer B } } }
    ? { body?: B }
    : { body?: never };
export type Options<O> = ({} extends Parameters_<O>
  ? { params?: Parameters_<O> }
  : { params: Parameters_<O> }) &
  Body<O> & { headers?: Record<string, string>; signal?: AbortSignal };
type Args<O> = {} extends Options<O> ? [options?: Options<O>] : [options: Options<O>];

/**
 * An answer the API does not document: a platform's or a proxy's own (a 502 page, API Gateway's
 * `{"message": "Endpoint request timed out"}`), or a status the operation does not declare.
 * `headers` keep `Retry-After` and the request id to quote (`requestId`).
 */
export class UnexpectedResponse extends Error {
  // Declared fields, not parameter properties: those are not erasable syntax (`erasableSyntaxOnly`).
  readonly response: Response;
  readonly body: string;
  readonly status: number;
  readonly headers: Headers;

  constructor(response: Response, body: string) {
    super(`unexpected ${response.status} response: ${body.slice(0, 200)}`);
    this.name = "UnexpectedResponse";
    this.response = response;
    this.body = body;
    this.status = response.status;
    this.headers = response.headers;
  }

  /** Ours (`X-Request-ID`), else the platform's: Vercel's or API Gateway's. */
  get requestId(): string | null {
    for (const name of REQUEST_IDS) {
      const value = this.headers.get(name);
      if (value) return value;
    }
    return null;
  }
}

const REQUEST_IDS = ["x-request-id", "x-vercel-id", "apigw-requestid", "x-amzn-requestid"];

/** Each operation's documented statuses; `own`: error statuses documented with a body of their
 * own instead of the envelope (health's 503 report). Filled in from openapi.json. */
const DOCUMENTED: Readonly<Record<string, { statuses: number[]; own?: number[] }>> = {};

/** The error envelope for `status`, as the API writes it (a platform's JSON is not). */
function isEnvelope(body: unknown, status: number): boolean {
  if (typeof body !== "object" || body === null) return false;
  const { error, message, statusCode, timestamp } = body as Record<string, unknown>;
  return (
    typeof error === "string" &&
    typeof message === "string" &&
    statusCode === status &&
    typeof timestamp === "string"
  );
}

export interface ClientOptions {
  /** Where the API is, e.g. `http://localhost:3000` (no trailing slash). */
  baseUrl: string;
  /** The Clerk session token, or a function giving a fresh one (`() => getToken()`). */
  token?: string | (() => string | null | Promise<string | null>);
  /**
   * `include` sends Clerk's `__session` cookie instead; each write must then send the
   * `csrf-token` cookie's value as `X-CSRF-Token` (`headers`): docs/http-contract.md#cors-and-csrf.
   */
  credentials?: RequestCredentials;
  fetch?: typeof fetch;
}

type Call<M extends Method> = <P extends PathsWith<M>>(
  path: P,
  ...args: Args<Operation<P, M>>
) => Promise<Result<Operation<P, M>>>;

export interface Client {
  GET: Call<"get">;
  POST: Call<"post">;
  PUT: Call<"put">;
  DELETE: Call<"delete">;
}

interface Untyped {
  params?: {
    path?: Record<string, unknown>;
    query?: Record<string, unknown> | null;
    header?: Record<string, unknown>;
  };
  body?: unknown;
  headers?: Record<string, string>;
  signal?: AbortSignal;
}

export function createClient(options: ClientOptions): Client {
  const send = async (method: string, path: string, init: Untyped = {}): Promise<unknown> => {
    const pathParams = init.params?.path ?? {};
    let url = options.baseUrl + path.replace(/\{(\w+)\}/g, (_, name: string) =>
      encodeURIComponent(String(pathParams[name])),
    );
    const query = new URLSearchParams();
    for (const [name, value] of Object.entries(init.params?.query ?? {})) {
      if (value !== undefined && value !== null) query.append(name, String(value));
    }
    const search = query.toString(); // not `query.size`: Safari 16, Chrome 112 lack it
    if (search) url += `?${search}`;
    const headers: Record<string, string> = { Accept: "application/json" };
    for (const [name, value] of Object.entries(init.params?.header ?? {})) {
      if (value !== undefined && value !== null) headers[name] = String(value);
    }
    Object.assign(headers, init.headers);
    const token = typeof options.token === "function" ? await options.token() : options.token;
    if (token) headers.Authorization = `Bearer ${token}`;
    // Absent keys left out, not set to undefined (`exactOptionalPropertyTypes` refuses that).
    const request: RequestInit = { method, headers };
    if (init.body !== undefined) {
      headers["Content-Type"] = "application/json";
      request.body = JSON.stringify(init.body);
    }
    if (options.credentials !== undefined) request.credentials = options.credentials;
    if (init.signal !== undefined) request.signal = init.signal;
    const response = await (options.fetch ?? fetch)(url, request);
    const text = await response.text();
    const documented = DOCUMENTED[`${method} ${path}`];
    if (!documented?.statuses.includes(response.status)) {
      throw new UnexpectedResponse(response, text);
    }
    let payload: unknown = undefined;
    if (text !== "") {
      try {
        payload = JSON.parse(text);
      } catch {
        throw new UnexpectedResponse(response, text);
      }
    }
    if (response.ok) return { ok: true, status: response.status, data: payload, response };
    if (!documented.own?.includes(response.status) && !isEnvelope(payload, response.status)) {
      throw new UnexpectedResponse(response, text);
    }
    return { ok: false, status: response.status, error: payload, response };
  };
  const method = (name: string) => (path: string, init?: Untyped) => send(name, path, init);
  return {
    GET: method("GET"),
    POST: method("POST"),
    PUT: method("PUT"),
    DELETE: method("DELETE"),
  } as Client;
}
