// Prisma 7 reads the connection URL from this file, not from schema.prisma. Only the CLI reads
// it; `prisma generate` and `prisma validate` need no database. A TypeScript app that copies
// this folder would normally write `import { defineConfig, env } from "prisma/config"` and
// `url: env("DATABASE_URL")` (docs/typescript.md); plain values keep this file free of imports
// so it loads from this folder, where no node_modules is installed.
export default {
  schema: "schema.prisma",
  datasource: { url: process.env.DATABASE_URL ?? "" },
};
