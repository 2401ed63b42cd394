"""All SQL lives here: one module per table, functions that take a `Conn` as first argument.

Callers choose the transaction shape through `shared.db.run` / `shared.db.transaction`.
"""
