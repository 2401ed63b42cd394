// Prints the DDL that Prisma's schema engine generates for a schema, from an empty database:
// what `prisma migrate diff --from-empty --to-schema <file> --script` prints, without the CLI,
// which would download a native engine binary. The WebAssembly engine needs a driver adapter and
// opens one connection through it, so a reachable PostgreSQL URL is the second argument; nothing
// is written to that database.
//
// usage: node generate-ddl.mjs SCHEMA.prisma POSTGRES_URL > out.sql
import { readFileSync } from "node:fs";
import { PrismaPg } from "@prisma/adapter-pg";
import { bindMigrationAwareSqlAdapterFactory } from "@prisma/driver-adapter-utils";

const [schemaPath, databaseUrl] = process.argv.slice(2);
if (!schemaPath || !databaseUrl) {
  console.error("usage: node generate-ddl.mjs SCHEMA.prisma POSTGRES_URL");
  process.exit(2);
}

// The package's entry imports the .wasm file as an ES module, which Node cannot do: load the
// bindings module and instantiate the WebAssembly ourselves.
const engineDir = new URL("./node_modules/@prisma/schema-engine-wasm/", import.meta.url);
const bindings = await import(new URL("schema_engine_bg.js", engineDir).href);
const wasmBytes = readFileSync(new URL("schema_engine_bg.wasm", engineDir));
const { instance } = await WebAssembly.instantiate(wasmBytes, { "./schema_engine_bg.js": bindings });
bindings.__wbg_set_wasm(instance.exports);
instance.exports.__wbindgen_start();

const content = readFileSync(schemaPath, "utf8");
const schema = { path: schemaPath, content };
const adapter = bindMigrationAwareSqlAdapterFactory(new PrismaPg({ connectionString: databaseUrl }));
const engine = await bindings.SchemaEngine.new({ datamodels: [[schemaPath, content]] }, () => {}, adapter);
const result = await engine.diff({
  from: { tag: "empty" },
  to: { tag: "schemaDatamodel", files: [schema] },
  script: true,
  exitCode: null,
  filters: { externalTables: [], externalEnums: [] },
});
process.stdout.write(result.stdout);
