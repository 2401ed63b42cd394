"""The cold-start floor of a database function: the hello world plus the libraries the bundle is
built on (SQLAlchemy with its ORM, the psycopg dialect) and one query through a plain engine.

No KeyFlash code: what is left between a function and this app is the bundle's own cost.
"""

import os

import sqlalchemy.orm  # noqa: F401  (the bundle's tables are ORM classes)
from fastapi import FastAPI
from mangum import Mangum
from sqlalchemy import Engine, create_engine, make_url, text

app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
_engine: Engine | None = None


@app.get("/hello")
def hello() -> dict[str, str]:
    global _engine
    if _engine is None:
        url = make_url(os.environ["DATABASE_URL"]).set(drivername="postgresql+psycopg")
        _engine = create_engine(url, isolation_level="AUTOCOMMIT", pool_size=1, max_overflow=0)
    with _engine.connect() as conn:
        conn.execute(text("SELECT 1")).scalar_one()
    return {"hello": "world"}


handler = Mangum(app, lifespan="off")
