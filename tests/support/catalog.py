"""Read a database's public-schema catalog into a plain, comparable structure.

Compatibility with the Prisma-generated schema is a property of what PostgreSQL stores, not of
what our models or migrations claim, so the tests compare catalogs. Types, defaults and
definitions are rendered by the server itself (`format_type`, `pg_get_expr`,
`pg_get_constraintdef`, `pg_get_indexdef`), so two databases on the same server compare by plain
string equality. `alembic_version` is Alembic's bookkeeping, not schema, and is left out.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg

EXCLUDED_TABLES = frozenset({"alembic_version"})

# Definitions qualify names with the schema only sometimes (indexes always name `public.table`);
# strip it so snapshots do not depend on search_path or server version.
_SCHEMA_PREFIX = re.compile(r'(?<![\w"$])(?:public|"public")\.')

_RELKIND = {"r": "table", "p": "partitioned table"}
_OTHER_RELKIND = {
    "S": "sequence",
    "v": "view",
    "m": "materialized view",
    "f": "foreign table",
    "c": "composite type",
}
_FK_ACTION = {
    "a": "NO ACTION",
    "r": "RESTRICT",
    "c": "CASCADE",
    "n": "SET NULL",
    "d": "SET DEFAULT",
}
_FK_MATCH = {"f": "FULL", "p": "PARTIAL", "s": "SIMPLE"}
_CONTYPE = {"p": "PRIMARY KEY", "u": "UNIQUE", "c": "CHECK", "f": "FOREIGN KEY", "x": "EXCLUDE"}

Snapshot = dict[str, dict[str, Any]]


# An index on a partitioned table prints `ON ONLY table`; the table's kind already says that it
# is partitioned, so the index compares by what it indexes.
_ON_ONLY = re.compile(r" ON ONLY ")


def _normalise(sql: str | None) -> str | None:
    return None if sql is None else _ON_ONLY.sub(" ON ", _SCHEMA_PREFIX.sub("", sql))


def _pkey(table: str, column: str) -> dict[str, dict[str, Any]]:
    return {
        f"table {table}": {"kind": "partitioned table"},
        f"constraint {table}_pkey": {
            "columns": ["id", column],
            "definition": f'PRIMARY KEY (id, "{column}")',
        },
        f"index {table}_pkey": {
            "definition": f"CREATE UNIQUE INDEX {table}_pkey ON {table} "
            f'USING btree (id, "{column}")'
        },
    }


# The logs partitioned by time (migration 0010, `shared.repositories.partitions`): what differs
# from a plain table with `id` as its key, field by field. Their partitions live in the schema
# `partitions`, outside what a snapshot reads.
PARTITIONED_LOGS: dict[str, dict[str, Any]] = {
    **_pkey("api_usage", "timestamp"),
    **_pkey("search_history", "searchedAt"),
    **_pkey("system_metrics", "timestamp"),
}


_TABLES = """
SELECT c.relname, c.relkind, c.relpersistence, c.relrowsecurity
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
"""

_COLUMNS = """
SELECT c.relname,
       a.attname,
       row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum) AS position,
       format_type(a.atttypid, a.atttypmod),
       a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid),
       a.attidentity,
       a.attgenerated,
       CASE WHEN a.attcollation <> t.typcollation THEN co.collname END
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
LEFT JOIN pg_collation co ON co.oid = a.attcollation
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
"""

# NOT NULL constraints (contype 'n', PostgreSQL 18+) are covered by column nullability.
_CONSTRAINTS = """
SELECT cl.relname,
       con.conname,
       con.contype,
       pg_get_constraintdef(con.oid),
       ARRAY(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY k(num, ord)
             JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.num
             ORDER BY k.ord)::text[],
       ref.relname,
       ARRAY(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY k(num, ord)
             JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.num
             ORDER BY k.ord)::text[],
       con.confdeltype,
       con.confupdtype,
       con.confmatchtype,
       con.condeferrable,
       con.condeferred,
       con.convalidated
FROM pg_constraint con
JOIN pg_class cl ON cl.oid = con.conrelid
JOIN pg_namespace n ON n.oid = cl.relnamespace
LEFT JOIN pg_class ref ON ref.oid = con.confrelid
WHERE n.nspname = 'public' AND con.contype IN ('p', 'u', 'c', 'f', 'x')
"""

_INDEXES = """
SELECT t.relname, i.relname, pg_get_indexdef(i.oid), x.indisvalid
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE n.nspname = 'public'
"""

_ENUMS = """
SELECT t.typname, array_agg(e.enumlabel ORDER BY e.enumsortorder)::text[]
FROM pg_type t
JOIN pg_namespace n ON n.oid = t.typnamespace
JOIN pg_enum e ON e.enumtypid = t.oid
WHERE n.nspname = 'public'
GROUP BY t.typname
"""

# Domains, ranges and multiranges; enums are listed with their labels above, composite types
# with the other relations below, and array/row types are implied by what they belong to.
_OTHER_TYPES = """
SELECT t.typname, t.typtype
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE n.nspname = 'public' AND t.typtype IN ('d', 'r', 'm')
"""

_OTHER_RELATIONS = """
SELECT c.relname, c.relkind
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('S', 'v', 'm', 'f', 'c')
"""

_TRIGGERS = """
SELECT c.relname, tg.tgname, pg_get_triggerdef(tg.oid)
FROM pg_trigger tg
JOIN pg_class c ON c.oid = tg.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND NOT tg.tgisinternal
"""

_FUNCTIONS = """
SELECT p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
       p.prokind,
       pg_get_function_result(p.oid)
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'public'
"""


def snapshot(url: str) -> Snapshot:
    """The public schema of the database at `url`, as sorted plain dicts.

    Keys: `tables` (kind, persistence, row security, and `columns` by name with position, type,
    nullability, default, identity, generated, collation), `constraints` (PK, UNIQUE, CHECK, FK,
    EXCLUDE by name: table, type, definition; FKs also columns, referenced table/columns, ON
    DELETE/ON UPDATE, match, deferrability), `indexes` (by name: table, definition, validity),
    `enums` (labels in order), `other_types`, `other_relations`, `triggers`, `functions`.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        rows = {
            name: conn.execute(query).fetchall()
            for name, query in {
                "tables": _TABLES,
                "columns": _COLUMNS,
                "constraints": _CONSTRAINTS,
                "indexes": _INDEXES,
                "enums": _ENUMS,
                "other_types": _OTHER_TYPES,
                "other_relations": _OTHER_RELATIONS,
                "triggers": _TRIGGERS,
                "functions": _FUNCTIONS,
            }.items()
        }

    tables: dict[str, Any] = {}
    for name, relkind, persistence, row_security in rows["tables"]:
        if name in EXCLUDED_TABLES:
            continue
        tables[name] = {
            "kind": _RELKIND[relkind],
            "persistence": {"p": "permanent", "u": "unlogged", "t": "temporary"}[persistence],
            "row_security": row_security,
            "columns": {},
        }
    for table, column, position, type_, notnull, default, identity, generated, collation in rows[
        "columns"
    ]:
        if table in EXCLUDED_TABLES:
            continue
        tables[table]["columns"][column] = {
            "position": position,
            "type": _normalise(type_),
            "nullable": not notnull,
            "default": _normalise(default),
            "identity": identity or None,
            "generated": generated or None,
            "collation": collation,
        }

    constraints: dict[str, Any] = {}
    for (
        table,
        name,
        contype,
        definition,
        columns,
        ref_table,
        ref_columns,
        on_delete,
        on_update,
        match,
        deferrable,
        deferred,
        validated,
    ) in rows["constraints"]:
        if table in EXCLUDED_TABLES:
            continue
        entry: dict[str, Any] = {
            "table": table,
            "type": _CONTYPE[contype],
            "definition": _normalise(definition),
            "columns": list(columns),
            "deferrable": deferrable,
            "initially_deferred": deferred,
            "validated": validated,
        }
        if contype == "f":
            entry |= {
                "references": ref_table,
                "referenced_columns": list(ref_columns),
                "on_delete": _FK_ACTION[on_delete],
                "on_update": _FK_ACTION[on_update],
                "match": _FK_MATCH[match],
            }
        constraints[name] = entry

    indexes = {
        name: {"table": table, "definition": _normalise(definition), "valid": valid}
        for table, name, definition, valid in rows["indexes"]
        if table not in EXCLUDED_TABLES
    }

    result: Snapshot = _sorted(
        {
            "tables": tables,
            "constraints": constraints,
            "indexes": indexes,
            "enums": {name: list(labels) for name, labels in rows["enums"]},
            "other_types": dict(rows["other_types"]),
            "other_relations": {
                name: _OTHER_RELKIND[kind] for name, kind in rows["other_relations"]
            },
            "triggers": {
                f"{table}.{name}": _normalise(definition)
                for table, name, definition in rows["triggers"]
            },
            "functions": {
                signature: {"kind": kind, "returns": _normalise(result)}
                for signature, kind, result in rows["functions"]
            },
        }
    )
    return result


def _sorted(value: Any) -> Any:
    """Dicts with sorted keys all the way down, so reprs and diffs are deterministic."""
    if isinstance(value, dict):
        return {key: _sorted(value[key]) for key in sorted(value)}
    return value


def flatten(snap: Snapshot) -> dict[str, Any]:
    """One entry per schema object (`column users.email`, `index users_email_key`, …).

    Flat keys turn "what differs" into set arithmetic and give readable failure messages.
    """
    flat: dict[str, Any] = {}
    for table, info in snap["tables"].items():
        flat[f"table {table}"] = {key: value for key, value in info.items() if key != "columns"}
        for column, column_info in info["columns"].items():
            flat[f"column {table}.{column}"] = column_info
    for section, label in (
        ("constraints", "constraint"),
        ("indexes", "index"),
        ("enums", "enum"),
        ("other_types", "type"),
        ("other_relations", "relation"),
        ("triggers", "trigger"),
        ("functions", "function"),
    ):
        for name, value in snap[section].items():
            flat[f"{label} {name}"] = value
    return dict(sorted(flat.items()))


@dataclass(frozen=True)
class SchemaDiff:
    """What a candidate schema has beyond, lacks from, or changes in a reference schema."""

    only_in_reference: dict[str, Any] = field(default_factory=dict)
    only_in_candidate: dict[str, Any] = field(default_factory=dict)
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def describe(self, reference: str = "reference", candidate: str = "candidate") -> str:
        """Readable, one object per line; changed dicts show only the fields that differ."""
        lines: list[str] = []
        for key, value in self.only_in_reference.items():
            lines.append(f"  only in {reference}: {key} = {value!r}")
        for key, value in self.only_in_candidate.items():
            lines.append(f"  only in {candidate}: {key} = {value!r}")
        for key, (old, new) in self.changed.items():
            lines.append(f"  changed {key}:")
            if isinstance(old, dict) and isinstance(new, dict):
                for name in sorted(old.keys() | new.keys()):
                    if old.get(name) != new.get(name):
                        lines.append(
                            f"      {name}: {reference}={old.get(name)!r} "
                            f"{candidate}={new.get(name)!r}"
                        )
            else:
                lines.append(f"      {reference}={old!r}")
                lines.append(f"      {candidate}={new!r}")
        return "\n".join(lines) if lines else "  (no differences)"


def diff(reference: Snapshot, candidate: Snapshot) -> SchemaDiff:
    """Compare two snapshots object by object."""
    ref, cand = flatten(reference), flatten(candidate)
    return SchemaDiff(
        only_in_reference={key: ref[key] for key in sorted(ref.keys() - cand.keys())},
        only_in_candidate={key: cand[key] for key in sorted(cand.keys() - ref.keys())},
        changed={
            key: (ref[key], cand[key])
            for key in sorted(ref.keys() & cand.keys())
            if ref[key] != cand[key]
        },
    )


def differences_beyond(
    found: SchemaDiff,
    allowed: Mapping[str, Mapping[str, Any]],
    *,
    reference: str,
    candidate: str,
    item: str,
    missing: str,
    removed: Collection[str] = (),
    changes: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """`found` less the `allowed` extras and the allowed `changes` of the candidate and the
    `removed` entries of the reference, described with the schemas' labels, plus every allowed
    extra that is not (only) in the candidate or differs in a field it names ("  {item}
    {missing}: key", "  {item} key: field is …, expected …"); likewise every allowed change that
    is not there or differs in a field it does not name or names with another value ("  allowed
    change …"), and every removal the candidate still has. Empty if none."""
    changes = changes or {}
    unexpected = SchemaDiff(
        only_in_reference={
            key: value for key, value in found.only_in_reference.items() if key not in removed
        },
        only_in_candidate={
            key: value for key, value in found.only_in_candidate.items() if key not in allowed
        },
        changed={key: pair for key, pair in found.changed.items() if key not in changes},
    )
    problems: list[str] = []
    if unexpected.only_in_reference or unexpected.only_in_candidate or unexpected.changed:
        problems.append(unexpected.describe(reference, candidate))
    for key, expected in allowed.items():
        actual = found.only_in_candidate.get(key)
        if actual is None:
            problems.append(f"  {item} {missing}: {key}")
            continue
        if isinstance(actual, str):  # a relation: its kind is its whole description
            actual = {"kind": actual}
        for name, want in expected.items():
            if actual.get(name) != want:
                problems.append(
                    f"  {item} {key}: {name} is {actual.get(name)!r}, expected {want!r}"
                )
    for key in removed:
        if key not in found.only_in_reference:
            problems.append(f"  documented removal still in {candidate}: {key}")
    for key, expected in changes.items():
        if key not in found.changed:
            problems.append(f"  allowed change not in the {candidate}: {key}")
            continue
        old, new = found.changed[key]
        for name in sorted(old.keys() | new.keys()):
            if name in expected and new.get(name) != expected[name]:
                problems.append(
                    f"  allowed change {key}: {name} is {new.get(name)!r}, "
                    f"expected {expected[name]!r}"
                )
            elif name not in expected and old.get(name) != new.get(name):
                problems.append(
                    f"  changed {key}: {name}: {reference}={old.get(name)!r} "
                    f"{candidate}={new.get(name)!r}"
                )
    return "\n".join(problems)
