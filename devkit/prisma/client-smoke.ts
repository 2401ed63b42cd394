// What a TypeScript app does with prisma/schema.prisma, against a database `alembic upgrade head`
// built: the client generated from the schema, over @prisma/adapter-pg. Every model is read (so
// every column the client selects exists with a type it can decode), the original app's writes
// get the defaults they expect, and the database's own rules (cascades, the case-insensitive
// email) hold. `python -m devkit.prisma_schema` copies this file next to the generated client and
// runs it with tsx after `tsc --strict`; it exits non-zero on the first broken expectation.
//
// usage: tsx client-smoke.ts POSTGRES_URL
import { PrismaPg } from "@prisma/adapter-pg";
import { Prisma, PrismaClient } from "./generated/client.ts";

const databaseUrl = process.argv[2];
if (!databaseUrl) {
  console.error("usage: tsx client-smoke.ts POSTGRES_URL");
  process.exit(2);
}

function check(condition: boolean, what: string): void {
  if (!condition) throw new Error(`client smoke: ${what}`);
  console.log(`ok  ${what}`);
}

const prisma = new PrismaClient({ adapter: new PrismaPg({ connectionString: databaseUrl }) });
try {
  const reads: Record<string, () => Promise<unknown[]>> = {
    User: () => prisma.user.findMany({ take: 1 }),
    SavedSearch: () => prisma.savedSearch.findMany({ take: 1 }),
    SearchHistory: () => prisma.searchHistory.findMany({ take: 1 }),
    APIUsage: () => prisma.aPIUsage.findMany({ take: 1 }),
    WebhookEvent: () => prisma.webhookEvent.findMany({ take: 1 }),
    FeatureFlag: () => prisma.featureFlag.findMany({ take: 1 }),
    SystemMetric: () => prisma.systemMetric.findMany({ take: 1 }),
    LegacyRepair: () => prisma.legacyRepair.findMany({ take: 1 }),
    CronLease: () => prisma.cronLease.findMany({ take: 1 }),
    SearchDailyRollup: () => prisma.searchDailyRollup.findMany({ take: 1 }),
    AccountTombstone: () => prisma.accountTombstone.findMany({ take: 1 }),
    KeywordReservation: () => prisma.keywordReservation.findMany({ take: 1 }),
    LegacyCounterDelta: () => prisma.legacyCounterDelta.findMany({ take: 1 }),
    ErasedBillingCustomer: () => prisma.erasedBillingCustomer.findMany({ take: 1 }),
    DataExport: () => prisma.dataExport.findMany({ take: 1 }),
    Organization: () => prisma.organization.findMany({ take: 1 }),
    OrganizationMember: () => prisma.organizationMember.findMany({ take: 1 }),
  };
  for (const [model, read] of Object.entries(reads)) {
    check(Array.isArray(await read()), `read ${model}`);
  }

  const user = await prisma.user.create({
    data: { id: "user_smoke", email: "smoke@example.com" },
  });
  check(user.tier === "FREE" && user.keywordSearchesThisMonth === 0, "user gets the defaults");
  check(user.trialStartedAt === null && user.subscriptionEventAt === null, "added columns NULL");

  const search = await prisma.savedSearch.create({
    data: { userId: user.id, name: "Smoke", keywords: ["seo tools"] },
  });
  const uuidV4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
  check(uuidV4.test(search.id), "a saved search's id is a UUID v4, as our API writes");
  check(search.location === "US" && search.matchType === "broad", "saved search defaults");

  await prisma.searchHistory.create({
    data: {
      userId: user.id,
      keywords: ["seo tools"],
      location: "US",
      language: "en",
      matchType: "broad",
      provider: "mock",
      responseTime: 12,
    },
  });
  await prisma.keywordReservation.create({
    data: { userId: user.id, keywords: 1, reservedAt: new Date(), expiresAt: new Date() },
  });
  await prisma.searchDailyRollup.create({
    data: {
      day: new Date("2026-12-01T00:00:00Z"),
      provider: "mock",
      searches: 1,
      keywords: 9007199254740993n,
      cacheHits: 0,
      responseTimeTotal: 12n,
      avgResponseTime: 12.0,
    },
  });
  const rollup = await prisma.searchDailyRollup.findFirstOrThrow();
  check(rollup.keywords === 9007199254740993n, "BIGINT columns round-trip as bigint");

  const loaded = await prisma.user.findUniqueOrThrow({
    where: { id: user.id },
    include: { savedSearches: true, searchHistory: true, keywordReservations: true },
  });
  check(
    loaded.savedSearches.length === 1 &&
      loaded.searchHistory.length === 1 &&
      loaded.keywordReservations.length === 1,
    "relations load",
  );

  let refusal = "none";
  try {
    await prisma.user.create({ data: { id: "user_shouty", email: "SMOKE@Example.com" } });
  } catch (error) {
    refusal = error instanceof Prisma.PrismaClientKnownRequestError ? error.code : String(error);
  }
  check(refusal === "P2002", `an email differing only in case is refused: ${refusal} (P2002)`);

  // The partitioned logs: the primary key is (id, time) in the database, `id` in the schema
  // (as in the original app's). Create, findUnique, update, delete by id and findMany work
  // (plain WHERE "id" = $1); Prisma's database upsert (create's id = where's, a non-empty update)
  // does not: it sends INSERT … ON CONFLICT ("id"), and no unique index is on id alone (SQLSTATE
  // 42P10, P2039). Any other form Prisma runs as a read, then a create or an update, which works
  // (docs/typescript.md). The original app never upserts them.
  const logs = [
    {
      name: "SearchHistory",
      create: (id: string) =>
        prisma.searchHistory.create({
          data: {
            id,
            keywords: ["partitioned"],
            location: "US",
            language: "en",
            matchType: "exact",
            provider: "mock",
            responseTime: 5,
            searchedAt: new Date("2001-02-03T04:05:06.789Z"),
          },
        }),
      find: (id: string) => prisma.searchHistory.findUnique({ where: { id } }),
      update: (id: string) =>
        prisma.searchHistory.update({ where: { id }, data: { responseTime: 6 } }),
      remove: (id: string) => prisma.searchHistory.delete({ where: { id } }),
      many: () => prisma.searchHistory.findMany({ where: { provider: "mock" } }),
      upsert: (id: string, change: boolean) =>
        prisma.searchHistory.upsert({
          where: { id },
          create: {
            id,
            keywords: [],
            location: "US",
            language: "en",
            matchType: "exact",
            provider: "mock",
            responseTime: 1,
          },
          update: change ? { responseTime: 7 } : {},
        }),
    },
    {
      name: "APIUsage",
      create: (id: string) =>
        prisma.aPIUsage.create({
          data: { id, endpoint: "/api/x", method: "GET", statusCode: 200, duration: 3 },
        }),
      find: (id: string) => prisma.aPIUsage.findUnique({ where: { id } }),
      update: (id: string) => prisma.aPIUsage.update({ where: { id }, data: { duration: 4 } }),
      remove: (id: string) => prisma.aPIUsage.delete({ where: { id } }),
      many: () => prisma.aPIUsage.findMany({ where: { endpoint: "/api/x" } }),
      upsert: (id: string, change: boolean) =>
        prisma.aPIUsage.upsert({
          where: { id },
          create: { id, endpoint: "/api/x", method: "GET", statusCode: 200, duration: 3 },
          update: change ? { duration: 7 } : {},
        }),
    },
    {
      name: "SystemMetric",
      create: (id: string) =>
        prisma.systemMetric.create({
          data: { id, metric: "smoke", value: 1.5, timestamp: new Date("2100-01-01T00:00:00Z") },
        }),
      find: (id: string) => prisma.systemMetric.findUnique({ where: { id } }),
      update: (id: string) => prisma.systemMetric.update({ where: { id }, data: { value: 2.5 } }),
      remove: (id: string) => prisma.systemMetric.delete({ where: { id } }),
      many: () => prisma.systemMetric.findMany({ where: { metric: "smoke" } }),
      upsert: (id: string, change: boolean) =>
        prisma.systemMetric.upsert({
          where: { id },
          create: { id, metric: "smoke", value: 1 },
          update: change ? { value: 7 } : {},
        }),
    },
  ];
  for (const log of logs) {
    const id = `smoke-${log.name}`;
    const created = await log.create(id);
    check(created.id === id, `${log.name}: create (a partition takes it, whatever its time)`);
    check((await log.find(id))?.id === id, `${log.name}: findUnique by id`);
    check((await log.update(id)).id === id, `${log.name}: update by id`);
    check((await log.many()).length >= 1, `${log.name}: findMany`);
    let upsert = "accepted";
    try {
      await log.upsert(id, true);
    } catch (error) {
      upsert =
        error instanceof Prisma.PrismaClientKnownRequestError
          ? `${error.code} ${error.message}`
          : String(error);
    }
    check(
      upsert.startsWith("P2039") && upsert.includes("42P10"),
      `${log.name}: the database upsert by id is refused (P2039, 42P10, as expected)`,
    );
    const readFirst = await log.upsert(`${id}-read-first`, false); // update: {}
    check(readFirst.id === `${id}-read-first`, `${log.name}: another upsert form creates the row`);
    await log.remove(readFirst.id);
    check((await log.remove(id)).id === id, `${log.name}: delete by id`);
    check((await log.find(id)) === null, `${log.name}: gone`);
  }

  const team = await prisma.organization.create({
    data: {
      id: "org_smoke",
      name: "Smoke team",
      members: { create: [{ userId: user.id, role: "org:admin" }] },
    },
    include: { members: true },
  });
  check(team.tier === "FREE" && team.keywordSearchesThisMonth === 0, "an organization's defaults");
  check(team.members[0]?.permissions?.length === 0, "a membership's permissions default to []");
  const shared = await prisma.savedSearch.create({
    data: { userId: user.id, organizationId: team.id, name: "Team", keywords: ["seo"] },
  });
  let ownerless = "accepted";
  try {
    await prisma.savedSearch.create({ data: { name: "Nobody's", keywords: [] } });
  } catch (error) {
    ownerless = error instanceof Error ? error.message : String(error);
  }
  check(ownerless.includes("saved_searches_owner_check"), "a search without owner is refused");

  await prisma.savedSearch.update({ where: { id: shared.id }, data: { userId: null } });
  await prisma.user.delete({ where: { id: user.id } });
  const kept = await prisma.savedSearch.findMany({ where: { organizationId: team.id } });
  check(kept.length === 1 && kept[0]?.userId === null, "a team's search outlives its creator");
  await prisma.organization.delete({ where: { id: team.id } });
  check((await prisma.organizationMember.count()) === 0, "deleting an organization cascades");
  check((await prisma.savedSearch.count()) === 0, "deleting a user cascades to saved searches");
  check((await prisma.keywordReservation.count()) === 0, "and to keyword reservations");
  const history = await prisma.searchHistory.findFirstOrThrow();
  check(history.userId === null, "search history is kept with userId NULL");
} finally {
  await prisma.$disconnect();
}
