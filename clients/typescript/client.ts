/**
 * The typed client for KeyFlash's HTTP API: a thin wrapper over `fetch`, typed by `schema.d.ts`
 * (openapi-typescript's output for `openapi.json`). Written by `keyflash openapi --typescript`
 * from devkit/typescript/client.ts; do not edit the copy in clients/typescript/.
 *
 * Every call resolves to a union discriminated by `ok`, then by `status`: the documented success
 * bodies, or the documented error bodies, the error envelope typed per status, so
 * `switch (result.error.statusCode)` narrows too. A body that is not JSON throws
 * `UnexpectedResponse` (a proxy's HTML 502, say). Only the documented statuses are in the types:
 * the smoke test (clients/typescript/smoke.ts) holds the API to its document.
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

export class UnexpectedResponse extends Error {
  constructor(
    readonly status: number,
    readonly body: string,
  ) {
    super(`unexpected ${status} response: ${body.slice(0, 200)}`);
    this.name = "UnexpectedResponse";
  }
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
    if (query.size > 0) url += `?${query}`;
    const headers: Record<string, string> = { Accept: "application/json" };
    for (const [name, value] of Object.entries(init.params?.header ?? {})) {
      if (value !== undefined && value !== null) headers[name] = String(value);
    }
    Object.assign(headers, init.headers);
    const token = typeof options.token === "function" ? await options.token() : options.token;
    if (token) headers.Authorization = `Bearer ${token}`;
    if (init.body !== undefined) headers["Content-Type"] = "application/json";
    const response = await (options.fetch ?? fetch)(url, {
      method,
      headers,
      body: init.body === undefined ? undefined : JSON.stringify(init.body),
      credentials: options.credentials,
      signal: init.signal,
    });
    const text = await response.text();
    let payload: unknown = undefined;
    if (text !== "") {
      try {
        payload = JSON.parse(text);
      } catch {
        throw new UnexpectedResponse(response.status, text);
      }
    }
    if (!response.ok && payload === undefined) {
      throw new UnexpectedResponse(response.status, text);
    }
    return response.ok
      ? { ok: true, status: response.status, data: payload, response }
      : { ok: false, status: response.status, error: payload, response };
  };
  const method = (name: string) => (path: string, init?: Untyped) => send(name, path, init);
  return {
    GET: method("GET"),
    POST: method("POST"),
    PUT: method("PUT"),
    DELETE: method("DELETE"),
  } as Client;
}
