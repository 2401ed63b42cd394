// Prisma 7 reads the connection URL from this file, not from schema.prisma. Only the CLI reads
// it; `prisma generate` and `prisma validate` need no database. A TypeScript app writes its own
// at its root, as docs/typescript.md shows (`defineConfig`, and `process.env.DATABASE_URL`
// rather than `env("DATABASE_URL")`, which throws when the variable is unset); this one has no
// imports so it loads from this folder, where no node_modules is installed.
export default {
  schema: "schema.prisma",
  datasource: { url: process.env.DATABASE_URL ?? "" },
};
